#!/usr/bin/env bash
# Blue-green releases for the compose deployment. Run on the deploy host, next to docker-compose.yml.
#
#   blue-green.sh deploy IMAGE   start the idle colour on IMAGE (migrations first), wait until every replica is
#                                healthy and ready, switch nginx to it, smoke-test through nginx (switch back if
#                                that fails). The old colour keeps running for an instant rollback.
#   blue-green.sh rollback       switch nginx back to the other colour (restarting it if it was retired)
#   blue-green.sh retire         stop the idle colour once the release is trusted
#   blue-green.sh status         which colour is live, and each colour's image and replicas
#
# State lives in .env beside this file (compose reads it): HELPLINE_{BLUE,GREEN}_{IMAGE,REPLICAS}. nginx's
# live.conf lives in a volume, so re-copying this directory never changes which colour serves.
# Migrations must be backward compatible (expand, then contract a release later): both colours share the database.
set -euo pipefail
cd "$(dirname "$0")"

COMPOSE=(docker compose -f docker-compose.yml)
STATE=.env
REPLICAS="${HELPLINE_REPLICAS:-2}"
HTTP_PORT="${HELPLINE_HTTP_PORT:-8080}"
HEALTH_TIMEOUT_S="${HELPLINE_HEALTH_TIMEOUT_S:-180}"

say() { printf 'blue-green: %s\n' "$*" >&2; }
die() { say "$*"; exit 1; }

other() { if [ "$1" = blue ]; then echo green; else echo blue; fi; }

live_color() {
  local line
  line="$("${COMPOSE[@]}" exec -T nginx cat /etc/nginx/upstream/live.conf | grep -E '^\s*server ' || true)"
  case "$line" in
    *green:*) echo green ;;
    *) echo blue ;;
  esac
}

set_state() {  # KEY VALUE: replace or add one line of .env
  local key=$1 value=$2
  touch "$STATE"
  grep -v "^${key}=" "$STATE" > "$STATE.tmp" || true
  printf '%s=%s\n' "$key" "$value" >> "$STATE.tmp"
  mv "$STATE.tmp" "$STATE"
}

get_state() { grep "^$1=" "$STATE" 2>/dev/null | tail -n1 | cut -d= -f2- || true; }

wait_healthy() {  # COLOR: every replica's Docker health check passes (it probes /healthz)
  local color=$1 deadline ids id status pending
  deadline=$(( $(date +%s) + HEALTH_TIMEOUT_S ))
  while :; do
    mapfile -t ids < <("${COMPOSE[@]}" ps -q "$color")
    [ "${#ids[@]}" -gt 0 ] || die "$color has no containers"
    pending=0
    for id in "${ids[@]}"; do
      status="$(docker inspect -f '{{.State.Health.Status}}' "$id")"
      [ "$status" = healthy ] || pending=$((pending + 1))
    done
    [ "$pending" -eq 0 ] && return 0
    [ "$(date +%s)" -lt "$deadline" ] || die "$color: $pending replica(s) not healthy after ${HEALTH_TIMEOUT_S}s"
    sleep 3
  done
}

check_ready() {  # COLOR: every replica answers /readyz 200 (database, cache store, providers)
  local color=$1 index count
  count="$("${COMPOSE[@]}" ps -q "$color" | wc -l)"
  for index in $(seq 1 "$count"); do
    "${COMPOSE[@]}" exec -T --index "$index" "$color" python -c \
      "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/readyz', timeout=5)" \
      || die "$color replica $index is not ready"
  done
}

switch_to() {  # COLOR: point nginx at it; reload keeps open connections (and running SSE streams) alive
  local color=$1
  "${COMPOSE[@]}" exec -T nginx sh -c \
    "cp /etc/nginx/upstream-colors/$color.conf /etc/nginx/upstream/live.conf && nginx -t -q && nginx -s reload"
  say "nginx now sends traffic to $color"
}

smoke_test() {
  local attempt
  for attempt in 1 2 3 4 5; do
    if curl -fsS -o /dev/null "http://127.0.0.1:${HTTP_PORT}/readyz"; then return 0; fi
    say "smoke test attempt $attempt failed"
    sleep 2
  done
  return 1
}

start_color() {  # COLOR: run it with its recorded image and the wanted replica count
  local color=$1 upper
  upper="$(echo "$color" | tr '[:lower:]' '[:upper:]')"
  set_state "HELPLINE_${upper}_REPLICAS" "$REPLICAS"
  "${COMPOSE[@]}" up -d --no-deps --scale "$color=$REPLICAS" "$color"
  wait_healthy "$color"
  check_ready "$color"
}

cmd_deploy() {
  local image=${1:?usage: blue-green.sh deploy IMAGE} live target upper
  live="$(live_color)"
  target="$(other "$live")"
  upper="$(echo "$target" | tr '[:lower:]' '[:upper:]')"
  say "live: $live; deploying $image to $target"
  set_state "HELPLINE_${upper}_IMAGE" "$image"
  set_state HELPLINE_IMAGE "$image"  # the image the one-shot migrate service runs
  "${COMPOSE[@]}" pull "$target" migrate
  "${COMPOSE[@]}" run --rm migrate
  start_color "$target"
  switch_to "$target"
  if ! smoke_test; then
    switch_to "$live"
    die "smoke test through nginx failed: switched back to $live"
  fi
  say "released $image on $target; $live keeps running: 'blue-green.sh rollback' switches back"
}

cmd_rollback() {
  local live target
  live="$(live_color)"
  target="$(other "$live")"
  [ -n "$(get_state "HELPLINE_$(echo "$target" | tr '[:lower:]' '[:upper:]')_IMAGE")" ] || say "warning: no image recorded for $target"
  start_color "$target"
  switch_to "$target"
  smoke_test || die "smoke test failed after rolling back to $target"
}

cmd_retire() {
  local idle upper
  idle="$(other "$(live_color)")"
  upper="$(echo "$idle" | tr '[:lower:]' '[:upper:]')"
  set_state "HELPLINE_${upper}_REPLICAS" 0
  "${COMPOSE[@]}" up -d --no-deps --scale "$idle=0" "$idle"
  say "$idle stopped (SIGTERM: in-flight requests finish first)"
}

cmd_status() {
  local color upper
  echo "live: $(live_color)"
  for color in blue green; do
    upper="$(echo "$color" | tr '[:lower:]' '[:upper:]')"
    echo "$color: image=$(get_state "HELPLINE_${upper}_IMAGE") replicas=$("${COMPOSE[@]}" ps -q "$color" | wc -l)"
  done
}

case "${1:-}" in
  deploy) shift; cmd_deploy "$@" ;;
  rollback) cmd_rollback ;;
  retire) cmd_retire ;;
  status) cmd_status ;;
  *) die "usage: blue-green.sh deploy IMAGE | rollback | retire | status" ;;
esac
