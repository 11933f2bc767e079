"""docker-compose.yml and Dockerfile, checked without a Docker engine: they parse, reference only
what exists, and every service command is a valid convscope command line."""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest
import yaml

from precompute.cli import build_parser
from precompute.settings import Settings

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


def _image_services(compose):
    return {name: svc for name, svc in compose["services"].items()
            if str(svc.get("image", "")).startswith("convscope:")}


def test_every_service_of_the_convscope_image_builds_it_locally(compose):
    services = _image_services(compose)
    assert {"web", "worker", "precompute", "worker-gpu"} <= set(services)
    targets = set(re.findall(r"^FROM .* AS (\w+)", (ROOT / "Dockerfile").read_text(), flags=re.M))
    by_image: dict[str, set] = {}
    for name, svc in services.items():
        build = svc.get("build")
        assert build or svc.get("pull_policy") in ("never", "build"), \
            f"{name} uses {svc['image']} but cannot build it: compose would try to pull it from a registry"
        if build:
            assert svc.get("pull_policy") in (None, "never", "build", "missing"), name
            assert (ROOT / build["context"] / build.get("dockerfile", "Dockerfile")).is_file(), name
            assert build["target"] in targets, f"{name} builds target {build['target']!r}, not in the Dockerfile"
            # one tag, one target: two services never build different things under the same name
            by_image.setdefault(svc["image"], set()).add((build["context"], build["target"]))
    assert all(len(v) == 1 for v in by_image.values()), by_image
    assert services["web"]["build"]["target"] == "cpu" and services["worker-gpu"]["build"]["target"] == "cuda"


def test_one_shot_precompute_is_not_started_by_compose_up(compose):
    pc = compose["services"]["precompute"]
    assert pc.get("profiles") == ["tools"]
    assert pc.get("restart") == "no"
    # the services `docker compose up` starts: those without a profile
    default = {n for n, s in compose["services"].items() if not s.get("profiles")}
    assert default == {"redis", "web", "worker"}
    # the README's commands match the profiles
    readme = (ROOT / "README.md").read_text()
    assert "docker compose run --rm precompute" in readme and "docker compose --profile gpu up" in readme


def test_every_convscope_service_runs_a_real_subcommand(compose):
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, svc in _image_services(compose).items():
        cmd = svc.get("command")
        assert isinstance(cmd, list) and cmd[0] == "convscope", f"{name}: command {cmd!r}"
        assert cmd[1] in sub.choices, f"{name}: `convscope {cmd[1]}` is not a convscope subcommand"
        ns = parser.parse_args(cmd[1:])
        assert ns.command == cmd[1]
    assert compose["services"]["worker"]["command"][1] == "worker"
    assert compose["services"]["web"]["command"][1] == "serve"
    assert "--no-worker" in compose["services"]["web"]["command"]  # the worker service runs the jobs


ENV_NOT_SETTINGS = {"CONVSCOPE_WORKER_ALIVE_FILE"}  # read by precompute.jobs, not a Settings field


def _setting_names() -> set[str]:
    return {f"CONVSCOPE_{f.upper()}" for f in Settings.model_fields}


def test_compose_environment_names_real_settings(compose):
    names = _setting_names() | ENV_NOT_SETTINGS
    for name, svc in _image_services(compose).items():
        env = svc.get("environment") or {}
        assert isinstance(env, dict), name
        for key, value in env.items():
            assert key in names, f"{name} sets {key}, which is no convscope setting"
            if key not in ENV_NOT_SETTINGS and "${" not in str(value):
                Settings(**{key.removeprefix("CONVSCOPE_").lower(): value})  # a valid value, too
    # ${CONVSCOPE_...} substitutions (from the shell or .env) are settings too
    text = (ROOT / "docker-compose.yml").read_text()
    for var in re.findall(r"\$\{(CONVSCOPE_\w+)", text):
        assert var in names, f"docker-compose.yml substitutes {var}, which is no convscope setting"


def test_readme_configuration_table_lists_every_setting():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`(CONVSCOPE_\w+)`", section))
    assert documented <= _setting_names() | ENV_NOT_SETTINGS, documented - _setting_names()
    assert _setting_names() <= documented, f"missing from README Configuration: {_setting_names() - documented}"
    # the defaults the table gives for the values the code spells out
    defaults = Settings.model_fields
    assert f"`{defaults['max_upload_bytes'].default}`" in section
    assert f"`{defaults['device'].default}`" in section
