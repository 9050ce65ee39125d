"""The `sdq` command line against the real stack."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent


def sdq(*args: str, server: str, timeout: float = 300, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", "--server", server, *args], capture_output=True,
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


@pytest.mark.unit
@pytest.mark.parametrize("args", [("status", "abc"), ("submit", "examples/prompts.txt"), ("workers",)])
def test_unreachable_server_is_a_clear_error(args):
    out = sdq(*args, server="http://127.0.0.1:9")
    assert out.returncode == 2 and "cannot reach the sdq server at http://127.0.0.1:9" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.unit
@pytest.mark.parametrize("name, data, args, words", [
    ("bad.csv", b"prompt,colour\na,red\n", (), "bad.csv:2: unknown field 'colour'"),
    ("bad.json", b'{"prompt": "a"}', (), "bad.json: a JSON prompt file must be a list"),
    ("latin1.txt", "caf\u00e9\n".encode("latin-1"), (), "latin1.txt: not UTF-8 text"),
    ("missing.txt", None, (), "missing.txt: cannot be read (No such file or directory)"),
    ("ok.txt", b"a cat\n", ("--sweep", "{steps: [2]}"), "--sweep must be a JSON object"),
    ("ok.txt", b"a cat\n", ("--init-image", "nowhere.png"), "--init-image 'nowhere.png' cannot be read"),
])
def test_bad_prompt_file_or_flag_is_a_clear_error_before_any_request(tmp_path, name, data, args, words):
    path = tmp_path / name
    if data is not None:
        path.write_bytes(data)
    out = sdq("submit", str(path), *args, server="http://127.0.0.1:9")  # nothing listens: no request is made
    assert out.returncode == 2, out.stderr
    assert out.stderr.startswith("sdq submit: ") and words in out.stderr and "Traceback" not in out.stderr


@pytest.mark.unit
def test_unreadable_image_to_inspect_is_a_clear_error(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not a png")
    out = sdq("inspect", str(tmp_path / "x.png"), server="http://127.0.0.1:9")
    assert out.returncode == 2 and "x.png: not a readable image" in out.stderr and "Traceback" not in out.stderr


def test_models_lists_builtin_with_folder(models_dir):
    out = subprocess.run([sys.executable, "-m", "cli", "models", "--json"], capture_output=True, text=True,
                         timeout=60)
    rows = json.loads(out.stdout)
    tiny = next(r for r in rows if r["id"] == "builtin:tiny-sd")
    assert Path(tiny["path"]).is_relative_to(models_dir) and tiny["present"] is True
    assert {r["id"]: r["family"] for r in rows if r["id"] in ("builtin:tiny-sdxl", "builtin:tiny-sd3")} == {
        "builtin:tiny-sdxl": "sdxl", "builtin:tiny-sd3": "sd3"}


@pytest.mark.unit
def test_worker_with_a_bad_timing_stops_at_start_naming_it():
    env = {**os.environ, "SDQ_STALL_TIMEOUT": "10s", "SDQ_REDIS_URL": "redis://127.0.0.1:9/0"}
    out = subprocess.run([sys.executable, "-m", "cli", "worker", "--device", "cpu"], capture_output=True,
                         text=True, timeout=120, cwd=ROOT, env=env)
    assert out.returncode == 2 and "sdq worker: SDQ_STALL_TIMEOUT='10s' is not a number" in out.stderr, out.stderr


def test_demo_runs_the_example_prompts_on_a_private_stack_and_stops_it(tmp_path):
    """`make demo`'s command: its own stack (Redis, S3, producer, a worker), every example prompt
    made and downloaded with a gallery, exit 0, and nothing of the stack left running."""
    prompts = [line for line in (ROOT / "examples/prompts.txt").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    out = subprocess.run([sys.executable, "-m", "cli", "demo", "--workers", "1", "--steps", "2", "--size", "64",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env=os.environ.copy())
    assert out.returncode == 0, out.stderr
    (job_dir,) = tmp_path.iterdir()
    assert len(list(job_dir.glob("*.png"))) == len(prompts) and (job_dir / "index.html").exists()
    assert f"open {job_dir / 'index.html'}" in out.stderr
    leftover = subprocess.run(["pgrep", "-f", "sdq-demo-"], capture_output=True, text=True).stdout.split()
    assert not leftover, f"processes of the demo's stack still running: {leftover}"


def test_wait_into_a_log_prints_one_plain_line_per_interval(stack):
    """Written to a pipe (a file, a CI log), `submit --wait` prints plain progress lines, at most one
    per SDQ_PROGRESS_INTERVAL, never the terminal bar's carriage-return redraws."""
    import time

    interval = 1.0
    proc = subprocess.Popen(
        [sys.executable, "-m", "cli", "--server", stack.env["SDQ_SERVER"], "submit", "-", "--wait",
         "--width", "256", "--height", "256", "--steps", "30"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
        env={**os.environ, "SDQ_PROGRESS_INTERVAL": str(interval)})
    proc.stdin.write(b"a slow lighthouse\na slow harbour\na slow meadow\na slow tower\n")
    proc.stdin.close()
    arrivals: list[tuple[float, bytes]] = []
    for line in iter(proc.stderr.readline, b""):
        arrivals.append((time.monotonic(), line))
    assert proc.wait(300) == 0, b"".join(line for _, line in arrivals).decode()
    job_id = proc.stdout.read().decode().split()[0]
    text = b"".join(line for _, line in arrivals).decode()
    assert "\r" not in text and "|" not in text, text  # no bar redraws
    progress = [(t, line.decode()) for t, line in arrivals if line.startswith(f"job {job_id[:8]} ".encode())
                and b"items " in line]
    assert len(progress) >= 3, text  # the job outlasted an interval, so pacing was exercised
    assert all(re.fullmatch(rf"job {job_id[:8]} (queued|running|succeeded) \d+%: items \d+/4 done, .*\n", line)
               for _, line in progress), text
    assert progress[-1][1].startswith(f"job {job_id[:8]} succeeded 100%: items 4/4 done"), text  # the end is shown
    running = progress[:-1]  # lines while the job ran: paced
    gaps = [b[0] - a[0] for a, b in zip(running, running[1:])]
    assert min(gaps) >= interval * 0.8, gaps  # one line per interval (a little slack for pipe delivery)
