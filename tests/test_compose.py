"""docker-compose.yml and Dockerfile, checked without a Docker engine: they parse, reference only
what exists, and every service command is a valid convscope command line."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml

from precompute.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_services_volumes_and_profiles(compose):
    services = compose["services"]
    assert {"web", "worker", "redis"} <= set(services)
    assert "convscope-data" in compose["volumes"]
    for name in ("web", "worker", "precompute", "worker-gpu"):
        assert "convscope-data:/data" in services[name]["volumes"], name
        assert services[name]["environment"]["CONVSCOPE_DATA_DIR"] == "/data"
        assert services[name]["environment"]["CONVSCOPE_REDIS_URL"].startswith("redis://redis:")
    for name in ("web", "worker", "redis"):
        assert "healthcheck" in services[name] and services[name]["restart"] == "unless-stopped"
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    # the worker must be scalable: no fixed container name or host port
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]


def test_every_service_command_parses(compose):
    parser = build_parser()
    for name, svc in compose["services"].items():
        cmd = svc.get("command")
        if not cmd or cmd[0] != "convscope":
            continue
        parser.parse_args(cmd[1:])  # SystemExit on an unknown command or flag


def test_dockerfile_targets_copy_what_exists_and_pin_torch():
    text = (ROOT / "Dockerfile").read_text()
    targets = re.findall(r"^FROM .* AS (\w+)", text, flags=re.M)
    assert {"cpu", "cuda"} <= set(targets)
    for src in re.findall(r"^COPY (\S+) ", text, flags=re.M):
        for part in src.split():
            assert (ROOT / part).exists(), f"Dockerfile copies {part}, which is not in the repository"
    pins = re.findall(r"torch==([\d.]+) torchvision==([\d.]+)", text)
    pyproject = (ROOT / "pyproject.toml").read_text()
    for torch_v, tv_v in pins:
        assert f'"torch=={torch_v}"' in pyproject and f'"torchvision=={tv_v}"' in pyproject
    parser = build_parser()
    for line in re.findall(r"^RUN (convscope .*)$", text, flags=re.M):
        parser.parse_args(shlex.split(line)[1:])
    for cmd in re.findall(r"^CMD (\[.*\])$", text, flags=re.M):
        args = yaml.safe_load(cmd)
        parser.parse_args(args[1:])


def test_healthchecks_point_at_real_things(compose):
    web = " ".join(compose["services"]["web"]["healthcheck"]["test"])
    assert "/healthz" in web
    worker = " ".join(compose["services"]["worker"]["healthcheck"]["test"])
    from precompute.jobs import ALIVE_FILE

    assert str(ALIVE_FILE) in worker
