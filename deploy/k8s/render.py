"""Render sdq's Kubernetes manifests from the routing code, so autoscaling watches the very Redis
lists each worker class consumes.

    python deploy/k8s/render.py            # rewrites deploy/k8s/sdq.yaml

Each worker class (`WORKER_CLASSES`) becomes a Deployment and a KEDA ScaledObject with one `redis`
trigger per list the class consumes: every queue `sdq.contract.queues_for_worker` gives it, times
kombu's priority lists (the queue name itself for priority 0, the name + ``\\x06\\x16`` + digit for
the others). The HPA that KEDA drives scales to the largest replica count any list asks for, and
from zero: a class with no worker still has its lists watched.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from sdq import contract  # noqa: E402

PRIORITY_SEP = "\x06\x16"
"""kombu's separator between a queue name and its priority digit (Redis transport)."""

PRIORITY_STEPS = range(10)
"""The priority steps sdq's Celery configuration uses (sdq.celery_app)."""

IMAGE = "ghcr.io/your-org/sdq"
"""Image repository; the tags are `producer`, `worker-cpu` and `worker-gpu` (built from deploy/)."""

WORKER_CLASSES = {
    "cpu": {"device": "cpu", "dtype": "fp32", "max_pixels": 512 * 512, "max_replicas": 20,
            "args": ["--threads", "1"], "resources": {"requests": {"cpu": "1", "memory": "3Gi"},
                                                      "limits": {"memory": "6Gi"}}},
    "gpu": {"device": "cuda", "dtype": "fp16", "max_pixels": 1024 * 1024, "max_replicas": 8,
            "args": [], "resources": {"limits": {"nvidia.com/gpu": 1}}},
}
"""Worker classes: device, dtype and pixel limit decide the queues they consume."""

MESSAGES_PER_REPLICA = 4
"""Queued task messages (chunks) per worker replica that KEDA aims for."""


def consumed_lists(cls: dict) -> list[str]:
    """Every Redis list a worker of this class reads, in the worker's own queue order."""
    device = "cpu" if cls["device"] == "cpu" else "cuda:0"
    queues = contract.queues_for_worker(device, cls["dtype"], cls["max_pixels"])
    return [q if p == 0 else f"{q}{PRIORITY_SEP}{p}" for q in queues for p in PRIORITY_STEPS]


def _env() -> list[dict]:
    return [{"name": "SDQ_MODELS_DIR", "value": "/models"}]


def producer() -> list[dict]:
    """The producer Deployment and its Service."""
    labels = {"app": "sdq-producer"}
    container = {
        "name": "producer", "image": f"{IMAGE}:producer",
        "command": ["sdq", "producer", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"],
        "envFrom": [{"secretRef": {"name": "sdq-env"}}], "ports": [{"containerPort": 8000}],
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": 8000}, "periodSeconds": 5},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": 8000}, "periodSeconds": 20},
    }
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "sdq-producer", "labels": dict(labels)},
         "spec": {"replicas": 2, "selector": {"matchLabels": dict(labels)},
                  "template": {"metadata": {"labels": dict(labels)}, "spec": {"containers": [container]}}}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "sdq-producer"},
         "spec": {"selector": dict(labels), "ports": [{"port": 8000, "targetPort": 8000}]}},
    ]


def worker(name: str, cls: dict) -> list[dict]:
    """A worker class' Deployment (starting at zero replicas) and its KEDA ScaledObject."""
    deployment = f"sdq-worker-{name}"
    labels = {"app": deployment}
    command = ["sdq", "worker", "--device", cls["device"], "--dtype", cls["dtype"],
               "--max-pixels", str(cls["max_pixels"]), *cls["args"]]
    container = {
        "name": "worker", "image": f"{IMAGE}:worker-{name}", "command": command,
        "env": _env(), "envFrom": [{"secretRef": {"name": "sdq-env"}}], "resources": cls["resources"],
        "volumeMounts": [{"name": "models", "mountPath": "/models"}],
    }
    pod = {"containers": [container], "volumes": [{"name": "models", "emptyDir": {}}],
           # SIGTERM: the worker finishes the chunk it holds before it exits.
           "terminationGracePeriodSeconds": 300}
    triggers = [{"type": "redis", "metadata": {
        "address": "redis:6379", "databaseIndex": "0", "listName": lst,
        "listLength": str(MESSAGES_PER_REPLICA), "activationListLength": "0"}} for lst in consumed_lists(cls)]
    return [
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": deployment, "labels": dict(labels)},
         "spec": {"replicas": 0, "selector": {"matchLabels": dict(labels)},
                  "template": {"metadata": {"labels": dict(labels)}, "spec": pod}}},
        {"apiVersion": "keda.sh/v1alpha1", "kind": "ScaledObject", "metadata": {"name": deployment},
         "spec": {"scaleTargetRef": {"name": deployment}, "minReplicaCount": 0,
                  "maxReplicaCount": cls["max_replicas"], "pollingInterval": 10,
                  "cooldownPeriod": 300, "triggers": triggers}},
    ]


def documents() -> list[dict]:
    """Every manifest, in apply order."""
    docs = producer()
    for name, cls in WORKER_CLASSES.items():
        docs += worker(name, cls)
    return docs


def render() -> str:
    """The manifests as one multi-document YAML file."""
    import yaml

    head = ("# Generated by deploy/k8s/render.py from sdq's routing code; do not edit by hand.\n"
            "# Needs: a Secret `sdq-env` (the SDQ_* and AWS_* variables), Redis at `redis:6379`, KEDA.\n")
    return head + yaml.safe_dump_all(documents(), sort_keys=False, width=120, explicit_start=True)


if __name__ == "__main__":
    out = Path(__file__).with_name("sdq.yaml")
    out.write_text(render(), encoding="utf-8")
    print(f"wrote {out}")
