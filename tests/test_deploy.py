"""Deployment files: docker-compose.yml, the images, Kubernetes with KEDA, systemd units."""
from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from sdq import contract

ROOT = Path(__file__).resolve().parent.parent


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_has_the_whole_stack_on_seaweedfs():
    services = _compose()["services"]
    assert {"redis", "seaweedfs", "producer", "worker-cpu", "worker-gpu", "flower"} <= set(services)
    assert not any("minio" in name or "minio" in str(svc.get("image", "")) for name, svc in services.items())
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    s3 = services["seaweedfs"]
    tag = s3["image"].rpartition(":")[2]
    assert s3["image"].startswith("chrislusf/seaweedfs:") and tag[0].isdigit(), "pin the SeaweedFS image"
    assert s3["command"][0] == "mini" and "healthcheck" in s3
    assert services["producer"]["command"][:2] == ["sdq", "producer"]
    assert services["producer"]["build"]["dockerfile"] == "deploy/Dockerfile.producer"
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    assert "--dtype" in gpu["command"] and "fp16" in gpu["command"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    cpu = services["worker-cpu"]["command"]
    assert cpu[cpu.index("--dtype") + 1] == "fp32"
    for name in ("producer", "worker-cpu", "worker-gpu"):
        svc = services[name]
        env = svc["environment"]
        assert env["SDQ_REDIS_URL"].startswith("redis://redis") and env["SDQ_S3_ENDPOINT_URL"] == "http://seaweedfs:8333"
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        assert svc["depends_on"]["seaweedfs"]["condition"] == "service_healthy"
        assert svc["restart"] == "unless-stopped"


def test_compose_takes_secrets_from_the_env_file_only():
    text = (ROOT / "docker-compose.yml").read_text()
    example = (ROOT / ".env.example").read_text()
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert f"${{{var}:?" in text, f"{var} must come from .env, with an error when unset"
        assert f"\n{var}=" in example
    assert ".env" in (ROOT / ".gitignore").read_text().split()


def test_producer_image_carries_no_torch():
    text = (ROOT / "deploy" / "Dockerfile.producer").read_text()
    assert "pip install '.[producer]'" in text
    assert "torch==" not in text and "download.pytorch.org" not in text and "'.[producer,worker]'" not in text
    assert ".venv" in (ROOT / ".dockerignore").read_text().split()


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose not installed")
@pytest.mark.parametrize("profile", [None, "gpu"])
def test_compose_file_is_valid(profile):
    args = ["docker-compose", "--env-file", str(ROOT / ".env.example"), "-f", str(ROOT / "docker-compose.yml")]
    if profile:
        args += ["--profile", profile]
    out = subprocess.run([*args, "config", "-q"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def _render_module():
    spec = importlib.util.spec_from_file_location("k8s_render", ROOT / "deploy" / "k8s" / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_k8s_manifests_are_the_rendered_ones():
    render = _render_module()
    assert (ROOT / "deploy" / "k8s" / "sdq.yaml").read_text(encoding="utf-8") == render.render(), (
        "deploy/k8s/sdq.yaml is stale: run python deploy/k8s/render.py")


def test_keda_watches_exactly_the_lists_each_worker_class_consumes():
    docs = list(yaml.safe_load_all((ROOT / "deploy" / "k8s" / "sdq.yaml").read_text(encoding="utf-8")))
    deployments = {d["metadata"]["name"]: d for d in docs if d and d["kind"] == "Deployment"}
    scaled = [d for d in docs if d and d["kind"] == "ScaledObject"]
    assert {s["spec"]["scaleTargetRef"]["name"] for s in scaled} == {"sdq-worker-cpu", "sdq-worker-gpu"}
    for obj in scaled:
        target = deployments[obj["spec"]["scaleTargetRef"]["name"]]
        command = target["spec"]["template"]["spec"]["containers"][0]["command"]
        arg = dict(zip(command[2::2], command[3::2]))
        device = "cpu" if arg["--device"] == "cpu" else "cuda:0"
        queues = contract.queues_for_worker(device, arg["--dtype"], int(arg["--max-pixels"]))
        watched = [t["metadata"]["listName"] for t in obj["spec"]["triggers"]]
        # every watched list belongs to a queue the worker consumes ...
        assert all(name.split("\x06\x16")[0] in queues for name in watched)
        # ... and every priority list of every consumed queue is watched (kombu: name, name\x06\x16N)
        assert set(watched) == {q if p == 0 else f"{q}\x06\x16{p}" for q in queues for p in range(10)}
        assert obj["spec"]["minReplicaCount"] == 0 and target["spec"]["replicas"] == 0
    gpu = deployments["sdq-worker-gpu"]["spec"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1


def test_kombu_priority_lists_match_the_celery_config():
    from sdq.celery_app import celery_config

    options = celery_config("redis://127.0.0.1:1/0")["broker_transport_options"]
    assert list(options["priority_steps"]) == list(_render_module().PRIORITY_STEPS)
    from kombu.transport import redis as kombu_redis

    assert kombu_redis.Channel.sep == "\x06\x16"


def test_systemd_units_pass_dollars_to_the_shell():
    unit = (ROOT / "deploy" / "systemd" / "sdq-worker@.service").read_text()
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert "$$dev" in exec_start and "$dev" not in exec_start.replace("$$dev", "")
    assert "KillSignal=SIGTERM" in unit and "TimeoutStopSec=" in unit
