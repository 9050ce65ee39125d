"""The producer extra alone, in a fresh virtual environment with no torch: it installs, imports,
and enqueues a job that the real worker of the test stack then makes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import FAST, wait_job

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("setup.cfg", "pyproject.toml", "README.md", "sdq", "producer", "workers", "storage", "cli")

SCRIPT = """
import importlib.util, json, sys
missing = [m for m in ("torch", "diffusers", "transformers") if importlib.util.find_spec(m) is None]
import producer.app
app = producer.app.create_app()
c = app.test_client()
bad = c.post("/v1/jobs", json={"prompts": []})
ok = c.post("/v1/jobs", json={"prompts": ["made without torch in the producer"], "params": json.loads(sys.argv[1])})
loaded = [m for m in ("torch", "diffusers") if m in sys.modules]
print(json.dumps({"missing": missing, "bad": bad.status_code, "ok": ok.status_code, "job": ok.get_json(),
                  "loaded": loaded}))
"""


@pytest.fixture(scope="module")
def producer_venv(tmp_path_factory) -> Path:
    """`pip install '.[producer]'` (from a copy of the sources) into a new virtual environment."""
    base = tmp_path_factory.mktemp("producer-only")
    src = base / "src"
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            src.mkdir(exist_ok=True)
            shutil.copy(path, src / name)
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    out = subprocess.run([str(venv / "bin" / "pip"), "install", "--quiet", f"{src}[producer]"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return venv


def test_producer_extra_alone_installs_without_torch_and_enqueues(producer_venv, stack, client, tmp_path):
    env = {**os.environ, **stack.env}
    out = subprocess.run([str(producer_venv / "bin" / "python"), "-c", SCRIPT, json.dumps(FAST)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["missing"] == ["torch", "diffusers", "transformers"], result
    assert (result["bad"], result["ok"], result["loaded"]) == (422, 202, []), result
    doc = wait_job(client, result["job"]["id"])
    assert doc["state"] == "succeeded", doc
