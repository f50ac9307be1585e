"""``GET /metrics``: the Prometheus text exposition (all workers merged in multi-process mode).

Unauthenticated like most exporters: in the compose deployment Prometheus scrapes the replicas on the private
network and nginx refuses /metrics from outside (deploy/nginx.conf).
"""

from __future__ import annotations

from fastapi import APIRouter, Response

from helpline.observability import metrics

router = APIRouter()


@router.get("/metrics", include_in_schema=False)
async def prometheus_metrics() -> Response:
    body, content_type = metrics.render()
    return Response(content=body, media_type=content_type)
