"""The Kubernetes manifests of ``docker/k8s``: valid, and consistent with the service they run.

Every manifest, and every variant as kustomize renders it (the base, the ``gpu`` and ``enrol``
overlays), is validated against the Kubernetes JSON schemas that the ``kubernetes-validate``
wheel bundles (nothing is downloaded), in strict mode: an unknown or misspelt field is an
error, not silently dropped as the API server would. The other tests tie the manifests to the
code: the probes are routes of the app, the env names are settings, the port is the one the
settings make the server listen on, the shutdown budget covers the drain, the Secret has the
keys that are read from it, and the images' user and command are the Dockerfiles'.

The overlays are rendered here by :func:`render`, a small kustomize for the subset the
files use (resources, JSON 6902 patches); ``test_render_equals_kubectl_kustomize`` compares it
with the real one where ``kubectl`` is installed.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from kubernetes_validate.utils import resources_from_file

from service.__main__ import build_parser
from service.app import create_app
from service.lifecycle import PROBE_PATHS
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "docker" / "k8s"

# The oldest Kubernetes the manifests are meant for, and the newest that the pinned
# kubernetes-validate (1.37.0) ships schemas of.
KUBERNETES_VERSIONS = ("1.30.0", "1.37.0")

# Variant name -> (kustomization directory, Dockerfile of its image).
VARIANTS = {
    "cpu": (K8S, ROOT / "docker" / "Dockerfile.cpu"),
    "gpu": (K8S / "gpu", ROOT / "docker" / "Dockerfile.gpu"),
    "enrol": (K8S / "enrol", ROOT / "docker" / "Dockerfile.cpu"),
}
# Manifests applied by hand, listed in no kustomization.
SECRET_EXAMPLE = K8S / "secret.example.yaml"
STORE_LOADER = K8S / "store-loader.yaml"

ENV_PREFIX = Settings.model_config["env_prefix"]

Doc = dict[str, Any]


# ----------------------------------------------------------------------------- reading


def load(path: Path) -> list[Any]:
    """The YAML documents of ``path``, read as kubernetes-validate's own command reads them."""
    return list(resources_from_file(str(path)))


def _kustomization(directory: Path) -> Doc:
    (spec,) = load(directory / "kustomization.yaml")
    unknown = set(spec) - {"apiVersion", "kind", "resources", "patches"}
    if unknown:
        raise ValueError(f"{directory}: kustomization fields render() does not know: {unknown}")
    return spec


def render(directory: Path) -> list[Doc]:
    """The resources that ``kubectl kustomize directory`` builds, for the subset of kustomize
    used here: ``resources`` (files, or directories with their own kustomization) and
    ``patches`` of JSON 6902 operations aimed by kind and name."""
    spec = _kustomization(directory)
    docs: list[Doc] = []
    for entry in spec.get("resources", []):
        path = directory / entry
        docs += render(path) if path.is_dir() else load(path)
    for patch in spec.get("patches", []):
        target = patch["target"]
        if set(target) != {"kind", "name"} or set(patch) != {"path", "target"}:
            raise ValueError(f"{directory}: render() aims patches by kind and name only: {patch}")
        hits = [
            i
            for i, d in enumerate(docs)
            if (d["kind"], name(d)) == (target["kind"], target["name"])
        ]
        if len(hits) != 1:
            raise ValueError(f"{directory}: patch target {target} matches {len(hits)} resources")
        (ops,) = load(directory / patch["path"])
        docs[hits[0]] = json_patch(docs[hits[0]], ops)
    return docs


def json_patch(doc: Doc, ops: list[Doc]) -> Doc:
    """``doc`` with the RFC 6902 operations ``add``, ``replace`` and ``remove`` applied.

    Raises:
        ValueError: An operation's location is missing (for ``add``: its parent), or the
            operation is another.
    """
    doc = copy.deepcopy(doc)
    for op in ops:
        kind = op["op"]
        if kind not in ("add", "replace", "remove"):
            raise ValueError(f"json patch: unsupported op {kind!r}")
        *parents, last = [
            p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]
        ]
        try:
            node: Any = doc
            for part in parents:
                node = node[int(part) if isinstance(node, list) else part]
            index: Any = last
            if isinstance(node, list):
                index = len(node) if last == "-" else int(last)
                if not 0 <= index < len(node) + (kind == "add"):
                    raise IndexError(last)
            elif kind != "add" and last not in node:
                raise KeyError(last)
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise ValueError(f"json patch {kind} {op['path']}: no such location ({err})") from None
        if kind == "remove":
            del node[index]
        elif kind == "replace" or not isinstance(node, list):
            node[index] = op["value"]
        else:
            node.insert(index, op["value"])
    return doc


def name(doc: Doc) -> str:
    return doc["metadata"]["name"]


def one(docs: list[Doc], kind: str) -> Doc:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


def server(docs: list[Doc]) -> Doc:
    """The service's container in the variant's Deployment."""
    (container,) = [
        c
        for c in one(docs, "Deployment")["spec"]["template"]["spec"]["containers"]
        if c["name"] == "actrec"
    ]
    return container


def pod_spec(docs: list[Doc]) -> Doc:
    return one(docs, "Deployment")["spec"]["template"]["spec"]


def containers(doc: Doc) -> list[Doc]:
    spec = doc["spec"]["template"]["spec"] if doc["kind"] == "Deployment" else doc["spec"]
    return [*spec.get("initContainers", []), *spec["containers"]]


def secret_example() -> Doc:
    (secret,) = load(SECRET_EXAMPLE)
    return secret


def env_values(container: Doc) -> dict[str, str]:
    """The container's environment with Secret references filled from the example Secret."""
    secret = secret_example()
    env: dict[str, str] = {}
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            assert ref["name"] == name(secret), var
            env[var["name"]] = secret["stringData"][ref["key"]]
    return env


def unknown_settings(env: dict[str, str]) -> list[str]:
    """The ``ACTREC_*`` names of ``env`` that are no field of :class:`Settings`."""
    return [
        k
        for k in env
        if k.startswith(ENV_PREFIX) and k[len(ENV_PREFIX) :].lower() not in Settings.model_fields
    ]


def settings_of(container: Doc, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings the container's server runs with: its environment (and nothing from this
    process's), then the command's flags, as ``python -m service`` combines them."""
    for key in list(os.environ):
        if key.startswith(ENV_PREFIX):
            monkeypatch.delenv(key)
    for key, value in env_values(container).items():
        monkeypatch.setenv(key, value)
    command = container["command"] + container.get("args", [])
    assert command[:3] == ["python", "-m", "service"], command
    flags = vars(build_parser().parse_args(command[3:]))
    return Settings(**{k: v for k, v in flags.items() if v is not None})


def dockerfile(path: Path, instruction: str) -> str:
    """The argument of the Dockerfile's one unindented ``instruction`` line."""
    (value,) = re.findall(rf"^{instruction} (.+)$", path.read_text(), flags=re.MULTILINE)
    return value


_UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


def quantity_bytes(value: str) -> int:
    """A Kubernetes byte quantity (``2Gi``, ``500M``, ``1024``) in bytes."""
    match = re.fullmatch(r"(\d+)(|k|M|G|Ki|Mi|Gi)", value)
    if match is None:
        raise ValueError(f"not a byte quantity this test reads: {value!r}")
    return int(match[1]) * _UNITS[match[2]]


def manifest_files() -> list[Path]:
    """Every YAML file under docker/k8s that is a resource (not a kustomization or a patch)."""
    patches = set()
    for kustomization in K8S.rglob("kustomization.yaml"):
        directory = kustomization.parent
        patches |= {directory / p["path"] for p in _kustomization(directory).get("patches", [])}
    return sorted(
        p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml" and p not in patches
    )


# ----------------------------------------------------------------------------- schemas


def _validate(doc: Doc, version: str, where: str) -> None:
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        at = ".".join(str(p) for p in err.path)
        pytest.fail(f"{where}: {doc['kind']}/{name(doc)} at {at or '<root>'}: {err.message}")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(K8S)))
def test_manifest_is_valid(path: Path, version: str) -> None:
    docs = load(path)
    assert docs, path
    for doc in docs:
        _validate(doc, version, str(path.relative_to(ROOT)))


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_rendered_variant_is_valid(variant: str, version: str) -> None:
    directory, _ = VARIANTS[variant]
    for doc in render(directory):
        _validate(doc, version, f"{variant} variant")


def test_every_file_is_checked() -> None:
    # Each YAML file is a resource (validated above), a kustomization or a patch of one; the
    # base lists every resource beside it, the hand-applied ones are listed nowhere.
    assert SECRET_EXAMPLE in manifest_files() and STORE_LOADER in manifest_files()
    base = K8S / "base"
    listed = {base / r for r in _kustomization(base)["resources"]}
    assert listed == {p for p in base.glob("*.yaml") if p.name != "kustomization.yaml"}
    everywhere = {
        directory / r
        for directory, _ in VARIANTS.values()
        for r in _kustomization(directory)["resources"]
    }
    assert SECRET_EXAMPLE not in everywhere and STORE_LOADER not in everywhere


@pytest.mark.parametrize(
    ("what", "broken"),
    [
        ("a misspelt field", lambda c: c.update(livenessprobe=c.pop("livenessProbe"))),
        ("a port as a string", lambda c: c["ports"][0].update(containerPort="8000")),
        ("an env value as a number", lambda c: c["env"][0].update(value=8000)),
        ("a container without a name", lambda c: c.pop("name")),
    ],
)
def test_validator_rejects_a_broken_deployment(what: str, broken: Any) -> None:
    deployment = copy.deepcopy(one(render(K8S), "Deployment"))
    broken(deployment["spec"]["template"]["spec"]["containers"][0])
    for version in KUBERNETES_VERSIONS:
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(deployment, version, strict=True)


def test_json_patch_refuses_a_missing_location() -> None:
    doc = {"spec": {"items": [1, 2]}}
    assert json_patch(doc, [{"op": "add", "path": "/spec/items/-", "value": 3}]) == {
        "spec": {"items": [1, 2, 3]}
    }
    assert json_patch(doc, [{"op": "add", "path": "/spec/a~1b", "value": 0}])["spec"]["a/b"] == 0
    for op in (
        {"op": "replace", "path": "/spec/nothing", "value": 0},
        {"op": "replace", "path": "/spec/items/2", "value": 0},
        {"op": "add", "path": "/missing/child", "value": 0},
        {"op": "remove", "path": "/spec/items/5"},
        {"op": "replace", "path": "/spec/items/-", "value": 0},
    ):
        with pytest.raises(ValueError, match="no such location"):
            json_patch(doc, [op])
    with pytest.raises(ValueError, match="unsupported op"):
        json_patch(doc, [{"op": "move", "from": "/spec", "path": "/moved"}])


def _by_identity(docs: list[Doc]) -> list[Doc]:
    return sorted(docs, key=lambda d: (d["kind"], name(d)))


@pytest.mark.skipif(
    shutil.which("kubectl") is None, reason="kubectl (with kustomize) not installed"
)
@pytest.mark.parametrize("variant", VARIANTS)
def test_render_equals_kubectl_kustomize(variant: str, tmp_path: Path) -> None:
    directory, _ = VARIANTS[variant]
    built = subprocess.run(
        ["kubectl", "kustomize", str(directory)], capture_output=True, text=True, timeout=120
    )
    assert built.returncode == 0, built.stderr
    out = tmp_path / "rendered.yaml"
    out.write_text(built.stdout)
    assert _by_identity(load(out)) == _by_identity(render(directory))


# ----------------------------------------------------------------------------- the service


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> FastAPI:
    return create_app(Settings(store=tmp_path_factory.mktemp("store")))


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_are_routes_of_the_app(variant: str, app: FastAPI) -> None:
    container = server(render(VARIANTS[variant][0]))
    port = {p["name"]: p["containerPort"] for p in container["ports"]}
    paths = {}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] in port, (probe, get)
        paths[probe] = get["path"]
    assert paths == {
        "startupProbe": "/healthz",
        "livenessProbe": "/healthz",
        "readinessProbe": "/readyz",
    }
    routes = app.openapi()["paths"]
    assert all("get" in routes[path] for path in paths.values())
    # Both are still answered while the server drains (and not counted as in flight).
    assert set(paths.values()) <= PROBE_PATHS
    # Before the models are loaded (no lifespan has run): alive, not ready. Liveness must not
    # restart a pod that is loading; readiness must keep traffic off it.
    client = TestClient(app)
    assert client.get(paths["livenessProbe"]).status_code == 200
    assert client.get(paths["readinessProbe"]).status_code == 503


@pytest.mark.parametrize("variant", VARIANTS)
def test_container_port_is_where_the_server_listens(
    variant: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory, image = VARIANTS[variant]
    docs = render(directory)
    container = server(docs)
    settings = settings_of(container, monkeypatch)
    (http,) = [p for p in container["ports"] if p["name"] == "http"]
    assert http["containerPort"] == settings.port == int(dockerfile(image, "EXPOSE"))
    assert settings.host == "0.0.0.0"  # reachable from the kubelet and the Service
    (port,) = one(docs, "Service")["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (80, "http")
    # The Dockerfile's CMD, stated in the manifest.
    assert container["command"] == json.loads(dockerfile(image, "CMD"))


def test_env_names_are_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    (loader,) = load(STORE_LOADER)
    everywhere = [
        c
        for d, _ in VARIANTS.values()
        for doc in render(d)
        if doc["kind"] == "Deployment"
        for c in containers(doc)
    ]
    for container in [*everywhere, *containers(loader)]:
        assert unknown_settings(env_values(container)) == [], container["name"]
    for variant in VARIANTS:
        # Their values are valid too: the settings build from them.
        settings_of(server(render(VARIANTS[variant][0])), monkeypatch)
    assert unknown_settings({"ACTREC_QUEUE_SIZE": "8", "ACTREC_QUEUE_SIZ": "8", "HOME": "/"}) == [
        "ACTREC_QUEUE_SIZ"
    ]


def test_no_service_links() -> None:
    # A Service named `actrec` would otherwise put ACTREC_PORT=tcp://<ip>:80 into the pods'
    # environment, which the settings would read as the port (and fail).
    for directory, _ in VARIANTS.values():
        assert pod_spec(render(directory))["enableServiceLinks"] is False
    (loader,) = load(STORE_LOADER)
    assert loader["spec"]["enableServiceLinks"] is False


@pytest.mark.parametrize("variant", VARIANTS)
def test_shutdown_budget(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(VARIANTS[variant][0])
    container = server(docs)
    assert "ACTREC_SHUTDOWN_GRACE_S" in env_values(container)  # stated, not the default by chance
    grace = settings_of(container, monkeypatch).shutdown_grace_s
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = float(command[1])
    assert 0 < pre_stop <= 10
    # The countdown includes preStop; the drain then takes up to `grace`, uvicorn's close a
    # few seconds more: the margin is for those.
    assert pod_spec(docs)["terminationGracePeriodSeconds"] >= pre_stop + grace + 5


def test_secret_has_the_keys_read_from_it() -> None:
    secret = secret_example()
    keys = set(secret["stringData"])
    refs: set[tuple[str, str]] = set()
    for directory, _ in VARIANTS.values():
        spec = pod_spec(render(directory))
        for container in spec["containers"]:
            for var in container.get("env", []):
                if "valueFrom" in var:
                    ref = var["valueFrom"]["secretKeyRef"]
                    refs.add((ref["name"], ref["key"]))
        for volume in spec["volumes"]:
            if "secret" in volume:
                refs |= {
                    (volume["secret"]["secretName"], i["key"]) for i in volume["secret"]["items"]
                }
    assert refs == {(name(secret), "admin-token"), (name(secret), "api-keys")}
    assert {k for _, k in refs} <= keys
    # Placeholders only: a real token is never committed.
    assert all("REPLACE-ME" in secret["stringData"][k] for k in keys)


def test_api_keys_file_comes_from_the_secret_volume(monkeypatch: pytest.MonkeyPatch) -> None:
    container = server(render(K8S))
    keys = settings_of(container, monkeypatch).api_keys
    assert keys is not None
    path = Path(keys.get_secret_value())
    volumes = {v["name"]: v for v in pod_spec(render(K8S))["volumes"]}
    (mount,) = [m for m in container["volumeMounts"] if path.parent == Path(m["mountPath"])]
    (item,) = volumes[mount["name"]]["secret"]["items"]
    # Mounted as a directory: a subPath mount would never see a rotated key.
    assert item == {"key": "api-keys", "path": path.name} and "subPath" not in mount


@pytest.mark.parametrize("variant", VARIANTS)
def test_security_context(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    directory, image = VARIANTS[variant]
    docs = render(directory)
    spec, container = pod_spec(docs), server(docs)
    uid, gid = (int(x) for x in dockerfile(image, "USER").split(":"))
    pod = spec["securityContext"]
    assert (pod["runAsNonRoot"], pod["runAsUser"], pod["runAsGroup"], pod["fsGroup"]) == (
        True,
        uid,
        gid,
        gid,
    )
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
    }
    assert spec["automountServiceAccountToken"] is False
    # With the root filesystem read-only, the uploads and $HOME's caches go to an emptyDir,
    # sized for the most uploads that can be on disk at once: those streaming in, and those
    # admitted whose job still reads them.
    settings = settings_of(container, monkeypatch)
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    tmp = volumes[mounts["/tmp"]]["emptyDir"]
    assert settings.upload_dir is not None and settings.upload_dir.is_relative_to("/tmp")
    assert Path(env_values(container)["HOME"]).is_relative_to("/tmp")
    most = (settings.max_concurrent_uploads + settings.queue_size) * settings.max_upload_bytes
    assert quantity_bytes(tmp["sizeLimit"]) >= most
    requests, limits = container["resources"]["requests"], container["resources"]["limits"]
    assert quantity_bytes(requests["ephemeral-storage"]) >= quantity_bytes(tmp["sizeLimit"])
    assert quantity_bytes(limits["memory"]) >= quantity_bytes(requests["memory"]) >= 2 * 2**30


@pytest.mark.parametrize("variant", VARIANTS)
def test_store_volume(variant: str, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(VARIANTS[variant][0])
    spec, container = pod_spec(docs), server(docs)
    settings = settings_of(container, monkeypatch)
    (mount,) = [m for m in container["volumeMounts"] if Path(m["mountPath"]) == settings.store]
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    claim = volume["persistentVolumeClaim"]
    assert claim["claimName"] == name(one(docs, "PersistentVolumeClaim"))
    deployment, hpa = one(docs, "Deployment"), one(docs, "HorizontalPodAutoscaler")
    if variant == "enrol":
        # Enrolment writes the bundle: writable, and one writer (each replica holds the
        # repository in memory), the old pod gone before the new one starts.
        assert claim["readOnly"] is False and mount["readOnly"] is False
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"] == {"type": "Recreate"}
        assert hpa["spec"]["minReplicas"] == hpa["spec"]["maxReplicas"] == 1
    else:
        assert claim["readOnly"] is True and mount["readOnly"] is True
        assert "replicas" not in deployment["spec"]  # the HPA's to set
        assert hpa["spec"]["minReplicas"] >= 1


@pytest.mark.parametrize("variant", VARIANTS)
def test_service_pdb_and_hpa_aim_at_the_pods(variant: str) -> None:
    docs = render(VARIANTS[variant][0])
    deployment = one(docs, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    assert one(docs, "Service")["spec"]["selector"] == selector
    assert one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"] == selector
    hpa = one(docs, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": name(deployment),
    }
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu" and "cpu" in server(docs)["resources"]["requests"]


def test_gpu_variant(monkeypatch: pytest.MonkeyPatch) -> None:
    docs = render(VARIANTS["gpu"][0])
    container, spec = server(docs), pod_spec(docs)
    assert container["image"] == "actrec:gpu"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert settings_of(container, monkeypatch).device == "cuda"
    assert spec["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in spec["tolerations"])
    for variant in ("cpu", "enrol"):
        cpu = server(render(VARIANTS[variant][0]))
        assert cpu["image"] == "actrec:cpu"
        assert "nvidia.com/gpu" not in cpu["resources"]["limits"]
        assert settings_of(cpu, monkeypatch).device == "auto"
