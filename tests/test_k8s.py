"""The Kubernetes manifests (docker/k8s/gpu/, docker/k8s/cpu/): every resource valid against a pinned
Kubernetes version's schemas (strict: an unknown or misspelled field fails), and what they say about the
service checked against the service itself: env names against app/settings.py, ports, user, paths and the
stop sequence against the images (docker/Dockerfile.*), probe paths against the app's routes."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install -e '.[dev]'")

from app.settings import Settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "docker" / "k8s"
SETS = ("gpu", "cpu")
# The oldest Kubernetes the manifests promise to apply on (autoscaling/v2 and policy/v1 are older).
KUBERNETES_VERSION = "1.33.0"
KINDS = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"}
# The drain's delay (RENERSANS_DRAIN_DELAY_S, app/drain.py) where a manifest does not set it.
DRAIN_DELAY_S = Settings.model_fields["drain_delay_s"].default
MARGIN_S = 10


def resources(kind_set: str) -> dict[str, dict[str, Any]]:
    """The set's resources by kind (each kind once)."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted((K8S / kind_set).glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            assert doc["kind"] not in found, f"{path}: a second {doc['kind']}"
            found[doc["kind"]] = doc
    return found


def container(kind_set: str) -> dict[str, Any]:
    (main,) = resources(kind_set)["Deployment"]["spec"]["template"]["spec"]["containers"]
    return main


def env(kind_set: str) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(kind_set)["env"]}


def dockerfile(kind_set: str) -> str:
    return (ROOT / "docker" / f"Dockerfile.{kind_set}").read_text(encoding="utf-8")


def image_cmd(kind_set: str) -> list[str]:
    """The image's CMD (the Deployments override neither it nor the entrypoint)."""
    (line,) = [ln for ln in dockerfile(kind_set).splitlines() if ln.startswith("CMD ")]
    return json.loads(line.removeprefix("CMD "))


def option(cmd: list[str], name: str) -> str:
    return cmd[cmd.index(name) + 1]


@pytest.mark.parametrize("kind_set", SETS)
def test_every_manifest_is_valid_kubernetes(kind_set: str) -> None:
    found = resources(kind_set)
    assert set(found) == KINDS
    for doc in found.values():
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    # Strict really refuses what the API server would drop: a misspelled field fails.
    broken = copy.deepcopy(found["Deployment"])
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("kind_set", SETS)
def test_env_names_are_settings_and_values_parse(kind_set: str) -> None:
    fields = {f"RENERSANS_{name.upper()}": name for name in Settings.model_fields}
    values = env(kind_set)
    unknown = sorted(set(values) - set(fields))
    assert not unknown, f"not settings of app/settings.py: {unknown}"
    settings = Settings(**{fields[k]: v for k, v in values.items()})
    assert settings.device == {"gpu": "cuda", "cpu": "cpu"}[kind_set]
    assert settings.require_gpu == (kind_set == "gpu")
    # ONNX Runtime counts the node's cores, not the container's share of them.
    assert str(settings.threads) == str(container(kind_set)["resources"]["limits"]["cpu"])


@pytest.mark.parametrize("kind_set", SETS)
def test_image_port_user_and_paths_match_the_image(kind_set: str) -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    main = container(kind_set)
    assert main["image"] == compose["services"][kind_set]["image"]
    assert "command" not in main and "args" not in main  # the image's CMD, whose options are read below
    text = dockerfile(kind_set)
    port = int(option(image_cmd(kind_set), "--port"))
    assert f"EXPOSE {port}" in text
    assert [p["containerPort"] for p in main["ports"]] == [port]
    (service_port,) = resources(kind_set)["Service"]["spec"]["ports"]
    assert service_port["targetPort"] == main["ports"][0]["name"]

    uid, gid = re.search(r"^USER (\d+):(\d+)$", text, re.M).groups()
    pod = resources(kind_set)["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["runAsGroup"]) == (int(uid), int(gid))
    for c in [main, *pod.get("initContainers", [])]:
        assert c["securityContext"]["readOnlyRootFilesystem"] is True
        assert c["securityContext"]["allowPrivilegeEscalation"] is False

    # The bundle baked in, the cache where the image puts it, on a writable volume; /tmp writable too.
    values = env(kind_set)
    assert f"COPY models/default {values['RENERSANS_BUNDLE']}" in text
    assert f"RENERSANS_CACHE_DIR={values['RENERSANS_CACHE_DIR']}" in text
    mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for path in (values["RENERSANS_CACHE_DIR"], "/tmp"):
        assert "emptyDir" in volumes[mounts[path]["name"]] and not mounts[path].get("readOnly")
    for init in pod.get("initContainers", []):  # seeds the cache volume from the image's own cache
        assert init["image"] == main["image"]
        assert init["command"][-2].rstrip("/.") == values["RENERSANS_CACHE_DIR"]
        (seed,) = init["volumeMounts"]
        assert (
            seed["name"] == mounts[values["RENERSANS_CACHE_DIR"]]["name"]
            and init["command"][-1] == seed["mountPath"] + "/"
        )


@pytest.mark.parametrize("kind_set", SETS)
def test_probes_are_the_apps_routes(kind_set: str) -> None:
    from app.main import create_app

    routes = set(create_app(Settings()).openapi()["paths"])  # every route, the included routers' too
    main = container(kind_set)
    paths = {
        name: main[name]["httpGet"]["path"] for name in ("startupProbe", "readinessProbe", "livenessProbe")
    }
    assert paths == {"startupProbe": "/health", "readinessProbe": "/ready", "livenessProbe": "/health"}
    assert set(paths.values()) <= routes
    assert all(main[name]["httpGet"]["port"] == main["ports"][0]["name"] for name in paths)
    # The server listens only after loading and warming the models: minutes, not the liveness's seconds.
    startup = main["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


@pytest.mark.parametrize("kind_set", SETS)
def test_stop_sequence_fits_the_drain(kind_set: str) -> None:
    """The preStop hook starts the drain (/ready 503 at once, graceful shutdown DRAIN_DELAY_S later, with
    `--grace` seconds for requests in flight): the kubelet must not kill before both are over, and the
    readiness probe must see the 503 well inside the delay."""
    main = container(kind_set)
    pod = resources(kind_set)["Deployment"]["spec"]["template"]["spec"]
    assert main["lifecycle"]["preStop"]["exec"]["command"] == ["renersans", "drain"]
    grace = int(option(image_cmd(kind_set), "--grace"))
    delay = float(env(kind_set).get("RENERSANS_DRAIN_DELAY_S", DRAIN_DELAY_S))
    assert pod["terminationGracePeriodSeconds"] >= delay + grace + MARGIN_S
    ready = main["readinessProbe"]
    assert ready["periodSeconds"] * ready["failureThreshold"] < delay


@pytest.mark.parametrize("kind_set", SETS)
def test_gpu_resources_scaling_and_disruptions(kind_set: str) -> None:
    found = resources(kind_set)
    main = container(kind_set)
    requests, limits = main["resources"]["requests"], main["resources"]["limits"]
    assert {"cpu", "memory"} <= set(requests)
    assert ("nvidia.com/gpu" in limits) == (kind_set == "gpu")
    labels = found["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert found["Deployment"]["spec"]["selector"]["matchLabels"] == labels
    assert found["Service"]["spec"]["selector"] == labels
    assert found["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"] == labels
    hpa = found["HorizontalPodAutoscaler"]["spec"]
    assert hpa["scaleTargetRef"]["name"] == found["Deployment"]["metadata"]["name"]
    # One replica may be disrupted at a time, and one always remains.
    assert found["PodDisruptionBudget"]["spec"]["maxUnavailable"] == 1 and hpa["minReplicas"] >= 2
    for metric in hpa["metrics"]:
        if metric["type"] == "Pods":  # a model-slot metric must be reachable below the slots a replica has
            assert metric["pods"]["metric"]["name"] == "renersans_in_flight"
            target = float(metric["pods"]["target"]["averageValue"])
            assert target < int(env(kind_set)["RENERSANS_MAX_CONCURRENCY"])
