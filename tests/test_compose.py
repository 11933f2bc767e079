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
    assert str(Settings.model_fields["worker_alive_file"].default) in worker


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


ENV_NOT_SETTINGS: set[str] = set()  # every variable is a Settings field


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


# ---- the services' commands, run directly on this machine ------------------------------------------
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import urllib.error  # noqa: E402
import urllib.request  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

from server_fixtures import free_port, redis_server, stop_processes  # noqa: E402

VENV_BIN = ROOT / ".venv" / "bin"
CONTAINER_ALIVE_FILE = str(Settings.model_fields["worker_alive_file"].default)  # CONVSCOPE_WORKER_ALIVE_FILE
CHEAP_JOB = ["convscope", "submit", "resnet20-random", "--analyses", "symmetry"]  # seeded: no download


def _interpolate(value, shell: dict) -> str:
    """compose's ${VAR:-default} / ${VAR-default} / ${VAR} substitution, from ``shell``."""
    def sub(m):
        name, op, default = m.group(1), m.group(2), m.group(3) or ""
        if op == ":-":
            return shell.get(name) or default
        if op == "-":
            return shell.get(name, default)
        return shell.get(name, "")
    return re.sub(r"\$\{(\w+)(?:(:?-)([^}]*))?\}", sub, str(value))


def _dockerfile_env(target: str = "cpu") -> dict:
    """The ENV of the image's stages (base and ``target``): the containers run with it, too."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    env, stage = {}, None
    for line in text.splitlines():
        m = re.match(r"^FROM \S+ AS (\w+)", line)
        if m:
            stage = m.group(1)
        elif line.startswith("ENV ") and stage in ("base", target):
            for item in shlex.split(line[4:]):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def _remap(value: str, root: Path) -> str:
    """A container path (/data, /opt/convscope/store, /tmp/...) becomes the same path under ``root``."""
    return str(root / value.lstrip("/")) if value.startswith("/") else value


def _service_env(svc: dict, root: Path, redis_url: str) -> dict:
    # this machine's environment without any CONVSCOPE_* of its own, then the image's ENV and the
    # service's environment, as compose would resolve it with CONVSCOPE_DEVICE=cpu in the shell
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONVSCOPE_")}
    for key, value in {**_dockerfile_env(svc["build"]["target"]), **svc.get("environment", {})}.items():
        env[key] = _interpolate(value, {"CONVSCOPE_DEVICE": "cpu"})
    assert env["CONVSCOPE_DEVICE"] == "cpu"
    for key in ("CONVSCOPE_DATA_DIR", "CONVSCOPE_STORE_DIR", "CONVSCOPE_CACHE_DIR", "CONVSCOPE_UPLOADS_DIR"):
        if key in env:
            env[key] = _remap(env[key], root)
    if "CONVSCOPE_REDIS_URL" in env:
        compose_url = urlsplit(env["CONVSCOPE_REDIS_URL"])
        assert compose_url.hostname == "redis", env["CONVSCOPE_REDIS_URL"]  # the compose service
        if redis_url:  # the same database on the local redis-server
            env["CONVSCOPE_REDIS_URL"] = redis_url.rsplit("/", 1)[0] + compose_url.path
        else:  # the "sqlite" run: the embedded SQLite queue in the (shared) cache
            del env["CONVSCOPE_REDIS_URL"]
    env["CONVSCOPE_WORKER_ALIVE_FILE"] = _remap(CONTAINER_ALIVE_FILE, root)
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"  # `convscope` and `python` are the venv's
    env["OMP_NUM_THREADS"] = "1"
    return env


def _healthcheck(svc: dict, replace: dict[str, str]) -> list[str]:
    test = list(svc["healthcheck"]["test"])
    assert test[0] in ("CMD", "CMD-SHELL"), test
    cmd = test[1:] if test[0] == "CMD" else ["sh", "-c", test[1]]
    for old, new in replace.items():
        assert any(old in part for part in cmd), f"healthcheck {test!r} no longer mentions {old!r}"
        cmd = [part.replace(old, new) for part in cmd]
    return cmd


def _tail(path: Path, n: int = 4000) -> str:
    return path.read_text(errors="replace")[-n:] if path.exists() else ""


def _run(cmd: list[str], env: dict, log: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    with open(log, "ab") as out:
        return subprocess.run(cmd, env=env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, timeout=timeout)


@pytest.fixture(params=["redis", "sqlite"])
def local_redis(request, tmp_path):
    """The queue the services share: "redis", a real redis-server on a free port standing in for the
    compose `redis` service (as in tests/test_jobs.py), or
    "sqlite", CONVSCOPE_REDIS_URL dropped so the embedded SQLite queue in the cache is used ('')."""
    if request.param == "sqlite":
        yield ""
        return
    with redis_server(tmp_path / "redis") as url:
        yield url


def _get(url: str, timeout: float = 10):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read()


def _jobs(env: dict) -> list[dict]:
    out = subprocess.run(["convscope", "jobs", "--json"], env=env, cwd=ROOT, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.mark.slow
def test_service_commands_run_directly_on_this_machine(compose, tmp_path, local_redis):
    """web, worker and precompute (the services of convscope's CPU image; the GPU worker needs CUDA,
    redis is not ours), each with its `command` exactly as docker-compose.yml writes it, its environment
    from the compose file (container paths remapped under tmp_path, the `redis` host to a local
    redis-server or, without one, to the embedded SQLite queue) and its own healthcheck."""
    services = compose["services"]
    root = tmp_path / "container"
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: list[subprocess.Popen] = []

    def start(name: str, cmd: list[str], env: dict) -> subprocess.Popen:
        log = open(logs / f"{name}.log", "ab")
        try:
            p = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        procs.append(p)
        return p

    try:
        # ---- web: `convscope serve --host 0.0.0.0 --port 8000 --no-worker`, on 127.0.0.1 and a free port
        # (0.0.0.0 would expose the test server on every interface; 8000 may be taken here)
        web_svc = services["web"]
        web_env = _service_env(web_svc, root, local_redis)
        cmd = list(web_svc["command"])
        assert cmd[0] == "convscope" and shutil.which("convscope", path=web_env["PATH"]), "no convscope in .venv/bin"
        port = free_port()
        for flag, value in (("--host", "127.0.0.1"), ("--port", str(port))):
            assert flag in cmd, f"web command {cmd!r} has no {flag}"
            cmd[cmd.index(flag) + 1] = value
        web = start("web", cmd, web_env)
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert web.poll() is None, f"web exited with {web.returncode}:\n{_tail(logs / 'web.log')}"
            try:
                if _get(f"{base}/healthz")[0] == 200:
                    break
            except (urllib.error.URLError, OSError):
                pass
            assert time.monotonic() < deadline, f"web never answered:\n{_tail(logs / 'web.log')}"
            time.sleep(0.5)
        health = _healthcheck(web_svc, {"127.0.0.1:8000": f"127.0.0.1:{port}"})
        r = _run(health, web_env, logs / "web-health.log", timeout=120)
        assert r.returncode == 0, f"web healthcheck {health!r} failed:\n{_tail(logs / 'web-health.log')}"
        status, _ = _get(f"{base}/api/models", timeout=60)
        assert status == 200

        # ---- worker: `convscope worker` takes a cheap job from the queue the web service shares
        worker_svc = services["worker"]
        worker_env = _service_env(worker_svc, root, local_redis)
        assert worker_env.get("CONVSCOPE_REDIS_URL") == web_env.get("CONVSCOPE_REDIS_URL")
        assert worker_env["CONVSCOPE_DATA_DIR"] == web_env["CONVSCOPE_DATA_DIR"]
        alive = Path(worker_env["CONVSCOPE_WORKER_ALIVE_FILE"])
        alive.parent.mkdir(parents=True, exist_ok=True)
        health = _healthcheck(worker_svc, {CONTAINER_ALIVE_FILE: str(alive)})
        # no worker yet, no alive file: the healthcheck must fail
        assert _run(health, worker_env, logs / "worker-health.log", timeout=120).returncode != 0
        r = _run(CHEAP_JOB, worker_env, logs / "submit.log")
        assert r.returncode == 0, _tail(logs / "submit.log")
        [cheap] = _jobs(worker_env)
        assert cheap["state"] == "queued", cheap
        worker = start("worker", list(worker_svc["command"]), worker_env)
        deadline = time.monotonic() + 600
        while True:
            assert worker.poll() is None, f"worker exited with {worker.returncode}:\n{_tail(logs / 'worker.log')}"
            job = next(j for j in _jobs(worker_env) if j["id"] == cheap["id"])
            if job["state"] in ("done", "failed") and alive.exists():
                break
            assert time.monotonic() < deadline, f"job {job}:\n{_tail(logs / 'worker.log')}"
            time.sleep(1)
        assert job["state"] == "done", f"{job}\n{_tail(logs / 'worker.log')}"
        r = _run(health, worker_env, logs / "worker-health.log", timeout=120)
        assert r.returncode == 0, f"worker healthcheck {health!r} failed:\n{_tail(logs / 'worker-health.log')}"
        # the web service sees what the worker computed
        status, body = _get(f"{base}/api/models", timeout=60)
        assert status == 200 and b'"resnet20-random"' in body, body[:500]
        worker.send_signal(signal.SIGINT)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pytest.fail(f"worker did not exit within 20 s of SIGINT:\n{_tail(logs / 'worker.log')}")

        # ---- precompute: `convscope submit --all` queues the default zoo (the worker is stopped, so
        # nothing is computed); the job that is done stays done
        pc_svc = services["precompute"]
        pc_env = _service_env(pc_svc, root, local_redis)
        r = _run(list(pc_svc["command"]), pc_env, logs / "precompute.log")
        assert r.returncode == 0, _tail(logs / "precompute.log")
        from precompute.zoo import default_specs

        expected = {s.name for s in default_specs(Settings(data_dir=Path(pc_env["CONVSCOPE_DATA_DIR"]),
                                                     store_dir=Path(pc_env["CONVSCOPE_STORE_DIR"])))}
        listed = _jobs(pc_env)
        queued = {j["args"]["model"] for j in listed if j["state"] == "queued"}
        assert expected and queued == expected, (expected ^ queued, _tail(logs / "precompute.log"))
        assert next(j for j in listed if j["id"] == cheap["id"])["state"] == "done"
        state_files = list((Path(pc_env["CONVSCOPE_DATA_DIR"]) / "cache" / "jobs").glob("*.job"))
        assert len(state_files) == len(listed)
    finally:
        stop_processes(procs)
