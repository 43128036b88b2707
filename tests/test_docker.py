"""The CPU image and the compose deployment, built and run for real on a Docker engine.

Opt-in, since building takes minutes: `RENERSANS_DOCKER_TESTS=1 pytest tests/test_docker.py`. Without that
variable, or where no Docker engine answers, every test here is skipped and says why. The image is built
through `docker compose build` (so with the compose file's build settings), and the tests run it as the
deployment would: as its own non-root user, on a read-only root filesystem, stopped with SIGTERM. They
need no registry where the base image is already there (`../shared/tools/docker-here.sh` makes one), and
answers reach them through published ports on a network of their own, which also works where the engine
has no default bridge. tests/test_deployment.py checks the same files without an engine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from bench.server import free_port

ROOT = Path(__file__).resolve().parents[1]
IMAGE = "renersans:cpu"  # what `docker compose --profile cpu build` tags
NETWORK = "renersans-docker-tests"
PROJECT = "renersans-docker-tests"  # a compose project of its own: a deployment on this host is left alone
BUILD_TIMEOUT_S = 1800
READY_TIMEOUT_S = 240
# One paragraph of a regional programme; the SIGTERM test sends many of them, to be in flight for seconds.
SAMPLE = (
    "Правительство Новосибирской области утвердило государственную программу развития малого и среднего "
    "предпринимательства на 2019–2024 годы. Объём финансирования программы составит 2,5 млрд рублей, из "
    "них 1,2 млрд рублей — средства областного бюджета. Основная цель — увеличение числа субъектов малого "
    "бизнеса и рост занятости населения."
)


def why_skipped() -> str | None:
    if os.environ.get("RENERSANS_DOCKER_TESTS") != "1":
        return "opt-in: RENERSANS_DOCKER_TESTS=1 builds and runs the images (minutes; needs a Docker engine)"
    if shutil.which("docker") is None:
        return "RENERSANS_DOCKER_TESTS=1, but there is no docker CLI on PATH"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        return "RENERSANS_DOCKER_TESTS=1, but the Docker engine does not answer (docker info timed out)"
    if info.returncode != 0:
        return f"RENERSANS_DOCKER_TESTS=1, but no Docker engine answers: {info.stderr.strip()[:300]}"
    compose = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
    if compose.returncode != 0:
        return "RENERSANS_DOCKER_TESTS=1, but the docker compose plugin (v2) is missing"
    return None


SKIPPED = why_skipped()
pytestmark = pytest.mark.skipif(SKIPPED is not None, reason=SKIPPED or "")


def docker(*args: str, timeout: float = 120, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    run = subprocess.run(
        ["docker", *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check:
        assert run.returncode == 0, f"docker {' '.join(args)}:\n{run.stdout[-3000:]}{run.stderr[-3000:]}"
    return run


def compose(*args: str, timeout: float = 120, check: bool = True, **env: str) -> subprocess.CompletedProcess:
    # The project's defaults, not the developer's: no RENERSANS_* or COMPOSE_* from this shell.
    clean = {k: "" for k in os.environ if k.startswith(("RENERSANS_", "COMPOSE_"))}
    return docker(
        "compose", "-p", PROJECT, "--profile", "cpu", *args, timeout=timeout, check=check, **{**clean, **env}
    )


def wait_ready(url: str, name: str, timeout: float = READY_TIMEOUT_S) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = httpx.get(f"{url}/ready", timeout=5)
            if r.status_code == 200:
                return r
        except httpx.TransportError:
            pass
        state = docker("inspect", "--format", "{{.State.Status}}", name, check=False).stdout.strip()
        if state not in ("created", "running") or time.monotonic() > deadline:
            logs = docker("logs", "--tail", "40", name, check=False)
            pytest.fail(f"{name} is not ready ({state}) after {timeout}s:\n{logs.stdout}{logs.stderr}")
        time.sleep(1)


def health(name: str) -> str:
    return docker("inspect", "--format", "{{.State.Health.Status}}", name).stdout.strip()


@pytest.fixture(scope="module")
def image() -> str:
    """The CPU image, built as `docker compose --profile cpu build` builds it (the engine caches layers)."""
    started = time.monotonic()
    compose("build", "cpu", timeout=BUILD_TIMEOUT_S)
    print(f"built {IMAGE} in {time.monotonic() - started:.0f} s")
    return IMAGE


@pytest.fixture(scope="module")
def network(image: str) -> Iterator[str]:
    if docker("network", "inspect", NETWORK, check=False).returncode != 0:
        docker("network", "create", NETWORK)
    yield NETWORK
    docker("network", "rm", NETWORK, check=False)


@dataclass
class Container:
    name: str
    url: str


@pytest.fixture(scope="module")
def start(network: str) -> Iterator[Any]:
    """Start the image as `docker run` would on a hardened host: read-only root, /tmp in memory (uploads
    over 1 MB spool there), no extra privileges; the port published on loopback alone."""
    names: list[str] = []

    def run(*extra: str) -> Container:
        name = f"renersans-test-{os.getpid()}-{len(names)}"
        port = free_port()
        names.append(name)
        docker(
            "run",
            "--detach",
            "--name",
            name,
            "--network",
            network,
            "--publish",
            f"127.0.0.1:{port}:8000",
            "--read-only",
            "--tmpfs",
            "/tmp",
            "--security-opt",
            "no-new-privileges",
            *extra,
            IMAGE,
        )
        return Container(name, f"http://127.0.0.1:{port}")

    yield run
    for name in names:
        docker("rm", "--force", name, check=False)


@pytest.fixture(scope="module")
def served(start: Any) -> Container:
    container = start()
    wait_ready(container.url, container.name)
    return container


def test_runs_as_non_root_on_a_read_only_root(served: Container) -> None:
    uid = docker("exec", served.name, "id", "-u").stdout.strip()
    assert uid.isdigit() and int(uid) != 0, f"the service runs as uid {uid}"
    assert (
        docker("inspect", "--format", "{{.HostConfig.ReadonlyRootfs}}", served.name).stdout.strip() == "true"
    )
    for path in ("/probe", "/app/models/default/probe", "/var/cache/renersans/probe"):
        write = docker("exec", served.name, "sh", "-c", f": > {path}", check=False)
        assert write.returncode != 0, f"{path} is writable in the container"
        assert "Read-only file system" in write.stderr, write.stderr
    # The CPU's int8 was derived at build time: nothing had to be written at start.
    assert docker("exec", served.name, "sh", "-c", "ls /var/cache/renersans").stdout.count(".onnx") >= 2


def test_ready_and_extract_answer_as_the_local_pipeline_does(served: Container) -> None:
    from app.service import Extractor
    from app.settings import Settings

    ready = httpx.get(f"{served.url}/ready", timeout=10).json()
    assert ready["ready"] is True, ready
    r = httpx.post(f"{served.url}/extract", json={"text": SAMPLE, "relations": True}, timeout=120)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["model"]["providers"] == {"ner": "CPUExecutionProvider", "re": "CPUExecutionProvider"}
    local = Extractor(Settings(_env_file=None, bundle=ROOT / "models" / "default", device="cpu"))
    assert answer["model"]["variants"] == local.info()["variants"] == {"ner": "int8", "re": "int8"}
    document = local.extract(SAMPLE, relations=True).document
    expected_entities = [
        {"id": e.id, "type": e.type, "start": e.start, "end": e.end, "text": e.text, "score": e.score}
        for e in document.entities
    ]
    expected_relations = [
        {"id": r.id, "type": r.type, "arg1": r.arg1, "arg2": r.arg2, "score": r.score}
        for r in document.relations
    ]
    assert expected_entities, "the default model found no entity in the sample"
    versions = docker(
        "exec", served.name, "python", "-c", "import onnxruntime; print(onnxruntime.__version__)"
    ).stdout.strip()
    import onnxruntime

    why = f"(ONNX Runtime {versions} in the image, {onnxruntime.__version__} here)"
    assert answer["entities"] == expected_entities, why
    assert answer["relations"] == expected_relations, why


def test_health_status_turns_healthy(served: Container) -> None:
    # The image's HEALTHCHECK: its first probe comes one interval (15 s) after the start.
    deadline = time.monotonic() + 120
    while (status := health(served.name)) != "healthy":
        assert status == "starting" and time.monotonic() < deadline, f"health is {status!r}"
        time.sleep(2)


def in_flight(url: str) -> float:
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    match = re.search(r"^renersans_in_flight (\S+)$", metrics, re.M)
    assert match, "no renersans_in_flight in /metrics"
    return float(match.group(1))


def test_sigterm_drains_the_request_in_flight(start: Any) -> None:
    container = start()
    wait_ready(container.url, container.name)
    text = "\n".join([SAMPLE] * 40)  # several seconds of work on a CPU
    answers: list[httpx.Response | BaseException] = []
    finished: list[float] = []

    def send() -> None:
        try:
            answers.append(httpx.post(f"{container.url}/extract", json={"text": text}, timeout=180))
        except BaseException as exc:
            answers.append(exc)
        finished.append(time.monotonic())

    sender = threading.Thread(target=send)
    sender.start()
    deadline = time.monotonic() + 30
    while in_flight(container.url) < 1:
        assert sender.is_alive() and time.monotonic() < deadline, "the request never was in flight"
        time.sleep(0.05)
    signalled = time.monotonic()
    docker("stop", "--time", "40", container.name, timeout=60)  # SIGTERM, then up to 40 s
    sender.join(timeout=60)
    (answer,) = answers
    assert isinstance(answer, httpx.Response), f"the request in flight was cut off: {answer!r}"
    assert answer.status_code == 200, answer.text[:500]
    assert len(answer.json()["entities"]) >= 40
    assert finished[0] > signalled, "the request had finished before the signal: make it longer"
    state = json.loads(docker("inspect", "--format", "{{json .State}}", container.name).stdout)
    assert state["Status"] == "exited" and state["ExitCode"] == 0, state


def test_compose_cpu_profile_comes_up_healthy_and_goes_down(image: str) -> None:
    port = free_port()
    try:
        compose(
            "up",
            "--detach",
            "--wait",
            "--wait-timeout",
            str(READY_TIMEOUT_S),
            timeout=READY_TIMEOUT_S + 60,
            RENERSANS_HTTP_PORT=str(port),
        )
        (name,) = compose("ps", "--quiet").stdout.split()
        assert health(name) == "healthy"
        url = f"http://127.0.0.1:{port}"
        version = httpx.get(f"{url}/version", timeout=10).json()
        assert version["model"]["providers"] == {"ner": "CPUExecutionProvider", "re": "CPUExecutionProvider"}
        r = httpx.post(f"{url}/extract", json={"text": SAMPLE}, timeout=120)
        assert r.status_code == 200 and r.json()["entities"], r.text[:500]
        # The defaults fit any host: no CPU limit (a limit above the host's cores is refused), and
        # ONNX Runtime's threads left to the core count.
        host_config = json.loads(docker("inspect", "--format", "{{json .HostConfig}}", name).stdout)
        assert host_config["NanoCpus"] == 0 and host_config["Init"] is True
    finally:
        down = compose("down", "--remove-orphans", "--timeout", "45", timeout=120, check=False)
    assert down.returncode == 0, down.stderr
    assert compose("ps", "--all", "--quiet").stdout.strip() == ""
