"""The `sdq` command line against the real stack."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def sdq(*args: str, server: str, timeout: float = 300, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sdq.cli", "--server", server, *args], capture_output=True,
                          text=True, timeout=timeout, input=stdin, cwd=ROOT, env=os.environ.copy())


def test_submit_wait_out_writes_pngs_and_gallery(stack, tmp_path):
    out = sdq("submit", "examples/prompts.txt", "--wait", "--out", str(tmp_path), "--steps", "3",
              "--width", "64", "--height", "64", "--seed", "5", server=stack.env["SDQ_SERVER"])
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip().splitlines()[0]
    job_dir = tmp_path / job_id
    prompts = [line for line in (ROOT / "examples/prompts.txt").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    pngs = sorted(job_dir.glob("*.png"))
    assert len(pngs) == len(prompts)
    assert all(Image.open(p).size == (64, 64) for p in pngs)
    page = (job_dir / "index.html").read_text()
    assert all(p.name in page for p in pngs) and prompts[0] in page
    # a second download skips complete files
    again = sdq("download", job_id, str(job_dir), server=stack.env["SDQ_SERVER"])
    assert again.returncode == 0 and "(0 downloaded)" in again.stderr


def test_status_and_json(stack):
    out = sdq("submit", "-", "--json", "--steps", "2", "--width", "64", "--height", "64",
              server=stack.env["SDQ_SERVER"], stdin="one prompt\n# comment\n\nanother\n")
    assert out.returncode == 0, out.stderr
    job = json.loads(out.stdout)
    assert job["items"] == 2
    waited = sdq("wait", job["id"], "--json", server=stack.env["SDQ_SERVER"])
    assert json.loads(waited.stdout)["state"] == "succeeded"
    status = sdq("status", job["id"], server=stack.env["SDQ_SERVER"])
    assert "succeeded" in status.stdout and "one prompt" in status.stdout


def test_bad_server_is_a_clear_error():
    out = sdq("status", "abc", server="http://127.0.0.1:9")
    assert out.returncode == 2 and "cannot reach the sdq server" in out.stderr


def test_models_lists_builtin_with_folder(models_dir):
    out = subprocess.run([sys.executable, "-m", "sdq.cli", "models", "--json"], capture_output=True, text=True,
                         timeout=60)
    rows = json.loads(out.stdout)
    tiny = next(r for r in rows if r["id"] == "builtin:tiny-sd")
    assert Path(tiny["path"]).is_relative_to(models_dir) and tiny["present"] is True
