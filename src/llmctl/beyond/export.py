"""`llmctl export kubernetes|compose`: the same instances.yaml on an engine a team already runs.

Each instance becomes a Deployment + Service (Kubernetes) or a service (compose) with what the config
says: the server's arguments, its port, readiness/liveness probes from `health`, the restart policy,
memory requests from the estimate and limits from `max_memory`, the model mounted read-only. What
the config cannot say (the image of a `command` server, where a cluster keeps its models) is left
as a visible REPLACE-ME with a comment, never invented. MLX runs on Apple Silicon only: it has no
container, and is exported as such a placeholder too.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from llmctl.backends import backend_for, safe_estimate
from llmctl.spec import Config, InstanceSpec

MODELS_MOUNT = "/models"
MODELS_CLAIM = "llmctl-models"  # the PersistentVolumeClaim the cluster must provide, holding the models
# Published images of the servers themselves (their projects' own): used unless --image says otherwise.
KNOWN_IMAGES = {"llama.cpp": "ghcr.io/ggml-org/llama.cpp:server", "ollama": "docker.io/ollama/ollama:latest"}
PLACEHOLDER = "REPLACE-ME"
COMPOSE_RESTART = {"no": "no", "on-failure": "on-failure", "always": "always"}


@dataclass(frozen=True)
class Container:
    """What runs an instance in a container: image, arguments, environment, the model to mount."""

    image: str
    args: list[str]
    env: dict[str, str]
    entrypoint: list[str] | None  # None: the image's own (llama-server, ollama); else the command's program
    model_file: Path | None  # a local model file or folder the container needs at MODELS_MOUNT
    notes: list[str]


def dns_name(name: str) -> str:
    """An instance name as a Kubernetes object name (RFC 1123: lowercase, digits, '-')."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return (cleaned or "instance")[:63].rstrip("-")


def container_for(spec: InstanceSpec, images: dict[str, str]) -> Container:
    image = images.get(spec.name) or images.get(spec.backend) or KNOWN_IMAGES.get(spec.backend)
    notes: list[str] = []
    port = str(spec.port)
    if spec.backend == "llama.cpp":
        model = Path(spec.model or "")
        model = model if model.is_absolute() else Path(spec.workdir) / model
        args = ["-m", f"{MODELS_MOUNT}/{model.name}", "--host", "0.0.0.0", "--port", port, *spec.args]
        return Container(image or PLACEHOLDER, args, dict(spec.env), None, model, notes)
    if spec.backend == "ollama":
        env = {**spec.env, "OLLAMA_HOST": f"0.0.0.0:{port}"}
        notes.append(f"pull the model once inside it: ollama pull {spec.model}")
        return Container(image or PLACEHOLDER, ["serve"], env, None, None, notes)
    if spec.backend == "mlx":
        notes.append(
            "MLX runs on Apple Silicon only: there is no container for it; serve the model with another backend"
        )
        return Container(image or PLACEHOLDER, [], dict(spec.env), None, None, notes)
    if spec.backend == "external":
        notes.append("an external server (a desktop app's) is not llmctl's to deploy")
        return Container(image or PLACEHOLDER, [], {}, None, None, notes)
    if not image:
        notes.append(f"supply an image that has `{spec.command[0] if spec.command else 'the server'}`")
    command = [*(spec.command or []), *spec.args]
    return Container(image or PLACEHOLDER, command[1:], dict(spec.env), command[:1], None, notes)


def _probe_path(spec: InstanceSpec) -> str:
    from urllib.parse import urlsplit

    url = backend_for(spec.backend).liveness_url(spec)
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


def _mebibytes(value: int) -> str:
    return f"{max(1, -(-value // (1 << 20)))}Mi"


# -- Kubernetes ----------------------------------------------------------------------------


def object_names(config: Config) -> dict[str, str]:
    """Instance name -> a DNS name unique in the export (`a-` and `a` would both be `a`)."""
    names: dict[str, str] = {}
    for spec in config.instances:
        base = name = dns_name(spec.name)
        counter = 2
        while name in names.values():
            name = f"{base[:60]}-{counter}"
            counter += 1
        names[spec.name] = name
    return names


def kubernetes(config: Config, images: dict[str, str] | None = None) -> list[dict[str, Any]]:
    """A Deployment and a Service per instance (external ones are left out: not ours to deploy)."""
    documents: list[dict[str, Any]] = []
    names = object_names(config)
    for spec in config.instances:
        if spec.external:
            continue
        documents += _kubernetes_instance(spec, names[spec.name], container_for(spec, images or {}))
    return documents


def _kubernetes_instance(spec: InstanceSpec, name: str, box: Container) -> list[dict[str, Any]]:
    labels = {"app.kubernetes.io/name": name, "app.kubernetes.io/managed-by": "llmctl"}
    health = spec.health
    probe = {"httpGet": {"path": _probe_path(spec), "port": spec.port}, "timeoutSeconds": max(1, round(health.timeout))}
    period = max(1, round(health.interval))
    container: dict[str, Any] = {
        "name": name,
        "image": box.image,
        "ports": [{"name": "http", "containerPort": spec.port}],
        # A start may take start_timeout without progress; Kubernetes counts probes, so allow that many.
        "startupProbe": {**probe, "periodSeconds": period,
                         "failureThreshold": max(1, round((health.start_deadline or health.start_timeout) / period))},
        "readinessProbe": {**probe, "periodSeconds": period, "failureThreshold": 1},
        "livenessProbe": {**probe, "periodSeconds": period, "failureThreshold": health.failure_threshold},
    }  # fmt: skip
    if box.entrypoint:
        container["command"] = box.entrypoint
    if box.args:
        container["args"] = box.args
    if box.env:
        container["env"] = [{"name": key, "value": value} for key, value in sorted(box.env.items())]
    resources = _resources(spec)
    if resources:
        container["resources"] = resources
    pod: dict[str, Any] = {"containers": [container], "terminationGracePeriodSeconds": max(1, round(spec.stop_timeout))}
    if box.model_file is not None:
        container["volumeMounts"] = [{"name": "models", "mountPath": MODELS_MOUNT, "readOnly": True}]
        pod["volumes"] = [{"name": "models", "persistentVolumeClaim": {"claimName": MODELS_CLAIM, "readOnly": True}}]
    annotations = {"llmctl.dev/instance": spec.name}
    if box.notes:
        annotations["llmctl.dev/notes"] = "; ".join(box.notes)
    if box.model_file is not None:
        annotations["llmctl.dev/model"] = f"{box.model_file.name} must be in the PVC {MODELS_CLAIM} (REPLACE-ME)"
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": labels, "annotations": annotations},
        "spec": {
            "replicas": 1,
            # One server holds one model in memory: never two at once during an update.
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "selector": {"app.kubernetes.io/name": name},
            "ports": [{"name": "http", "port": spec.port, "targetPort": "http"}],
        },
    }
    return [deployment, service]


def _resources(spec: InstanceSpec) -> dict[str, Any]:
    estimate = safe_estimate(spec)
    resources: dict[str, Any] = {}
    if estimate:
        resources["requests"] = {"memory": _mebibytes(estimate)}
    if spec.max_memory:
        resources["limits"] = {"memory": _mebibytes(spec.max_memory)}
    return resources


# -- compose -------------------------------------------------------------------------------


def compose(config: Config, images: dict[str, str] | None = None) -> dict[str, Any]:
    services: dict[str, Any] = {}
    names = object_names(config)
    for spec in config.instances:
        if spec.external:
            continue
        services[names[spec.name]] = _compose_service(spec, container_for(spec, images or {}))
    return {"name": "llmctl", "services": services}


def _compose_service(spec: InstanceSpec, box: Container) -> dict[str, Any]:
    health = spec.health
    probe_url = f"http://127.0.0.1:{spec.port}{_probe_path(spec)}"
    service: dict[str, Any] = {
        "image": box.image,
        "restart": COMPOSE_RESTART[spec.restart.policy],
        "ports": [f"127.0.0.1:{spec.port}:{spec.port}"],  # loopback, as llmctl binds by default
        "healthcheck": {
            # curl is in the llama.cpp and Ollama images; a custom image needs it too (or change the test).
            "test": ["CMD", "curl", "-fsS", probe_url],
            "interval": f"{health.interval:g}s",
            "timeout": f"{health.timeout:g}s",
            "retries": health.failure_threshold,
            "start_period": f"{(health.start_deadline or health.start_timeout):g}s",
        },
        "stop_grace_period": f"{spec.stop_timeout:g}s",
        "labels": {"dev.llmctl.instance": spec.name},
    }  # fmt: skip
    if box.notes:
        service["labels"]["dev.llmctl.notes"] = "; ".join(box.notes)
    if box.entrypoint:
        service["entrypoint"] = box.entrypoint
    if box.args:
        service["command"] = box.args
    if box.env:
        service["environment"] = dict(sorted(box.env.items()))
    if box.model_file is not None:
        service["volumes"] = [f"{box.model_file.parent}:{MODELS_MOUNT}:ro"]
    estimate = safe_estimate(spec)
    if estimate or spec.max_memory:
        memory: dict[str, Any] = {}
        if spec.max_memory:
            memory["limits"] = {"memory": f"{spec.max_memory}b"}
        if estimate:
            memory["reservations"] = {"memory": f"{estimate}b"}
        service["deploy"] = {"resources": memory}
    return service


class _PlainDumper(yaml.SafeDumper):
    """No anchors and aliases (&id001): a manifest a person reads and edits spells everything out."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


# -- writing -------------------------------------------------------------------------------


def left_out(config: Config) -> list[str]:
    """What of `config` the exports do not carry, one sentence each: the gateway, start on demand and
    its ttl (a Deployment or a compose service always runs), memory budgets, external servers. The
    CLI says these on stderr and each exported file repeats them as comments, so nothing is dropped
    silently."""
    notes = []
    if config.gateway is not None:
        notes.append(
            f"the gateway (port {config.gateway.port}) is not exported: clients reach each instance's own service"
        )
    for spec in config.instances:
        if spec.external:
            notes.append(f"{spec.name}: an external server, not llmctl's to run: not exported")
        elif spec.on_demand:
            ttl = f", ttl {spec.ttl:g}s" if spec.ttl else ""
            notes.append(f"{spec.name}: on_demand{ttl} is not exported: the exported server runs all the time")
    if config.memory_budget is not None or config.gpu_memory_budget is not None:
        notes.append("memory_budget / gpu_memory_budget are not exported (per-instance limits are)")
    return notes


def render(kind: str, config: Config, images: dict[str, str] | None = None) -> dict[str, str]:
    """{file name: text} for the export `kind`; what the export leaves out (`left_out`) is listed in
    the header's comments."""
    header = (
        f"# Exported by `llmctl export {kind}` from {config.path}.\n"
        "# REPLACE-ME marks what the config cannot say (an image, where the models are): supply it.\n"
    )
    header += "".join(f"# Left out: {note}.\n" for note in left_out(config))
    if kind == "kubernetes":
        documents = kubernetes(config, images)
        return {"llmctl.k8s.yaml": header + yaml.dump_all(documents, Dumper=_PlainDumper, sort_keys=False)}
    if kind == "compose":
        return {"compose.yaml": header + yaml.dump(compose(config, images), Dumper=_PlainDumper, sort_keys=False)}
    raise ValueError(f"unknown export {kind!r} (known: kubernetes, compose)")
