"""docker-compose.yml describes the production layout (validated with docker-compose when installed)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent


def test_compose_has_the_whole_stack():
    doc = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"redis", "minio", "producer", "worker-cpu", "worker-gpu"} <= set(services)
    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    assert services["producer"]["command"][:2] == ["sdq", "producer"]
    gpu = services["worker-gpu"]
    assert "--dtype" in gpu["command"] and "fp16" in gpu["command"]
    assert gpu["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    cpu = services["worker-cpu"]["command"]
    assert cpu[cpu.index("--dtype") + 1] == "fp32"
    for name in ("producer", "worker-cpu", "worker-gpu"):
        env = services[name]["environment"]
        assert env["SDQ_REDIS_URL"].startswith("redis://redis") and env["SDQ_S3_ENDPOINT_URL"] == "http://minio:9000"
    for dockerfile in ("deploy/Dockerfile", "deploy/Dockerfile.gpu"):
        assert (ROOT / dockerfile).exists()


@pytest.mark.skipif(not shutil.which("docker-compose"), reason="docker-compose not installed")
def test_compose_file_is_valid():
    out = subprocess.run(["docker-compose", "-f", str(ROOT / "docker-compose.yml"), "config", "-q"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
