"""Shared pieces of the benchmarks: options, the local stack, waiting for jobs, statistics, machine facts."""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import redis

from cli.client import Client
from cli.services import LOCAL_AWS, Stack, free_port, wait_for
from sdq.state import keys
from sdq.state.store import JobStore

BUCKET = "sdq-bench"
"""Bucket the benchmarks write to (on their own S3 server)."""

MODEL = "builtin:tiny-sd"
"""The model every benchmark runs."""

INHERITED = ("SDQ_REDIS_URL", "SDQ_S3_ENDPOINT_URL", "SDQ_S3_PUBLIC_ENDPOINT_URL", "SDQ_SERVER",
             "SDQ_API_TOKENS", "SDQ_TOKEN", "SDQ_MODELS")
"""Variables of the caller's environment that must not leak into the private stack."""


# -- options -----------------------------------------------------------------------------------

def parser(description: str) -> argparse.ArgumentParser:
    """The options every benchmark script takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="small sizes, for a check (numbers not comparable)")
    p.add_argument("--device", default="cpu", help="worker device: cpu, cuda, cuda:N or auto")
    p.add_argument("--models-dir", default=None,
                   help="cache of built-in models (default: bench/.models, generated once)")
    p.add_argument("--workdir", default=None, help="logs and service data (default: a fresh temp dir)")
    p.add_argument("--json", default=None, help="also write this benchmark's result to this file")
    return p


def default_models_dir() -> Path:
    """Where the benchmarks keep the built-in models between runs."""
    return Path(__file__).resolve().parent / ".models"


def clean_environment(models_dir: Path) -> None:
    """Point child processes at the bench bucket and model cache; drop the caller's sdq settings."""
    for var in INHERITED:
        os.environ.pop(var, None)
    os.environ.update(LOCAL_AWS, SDQ_MODELS_DIR=str(models_dir), SDQ_S3_BUCKET=BUCKET, HF_HUB_OFFLINE="1",
                      TOKENIZERS_PARALLELISM="false", TRANSFORMERS_VERBOSITY="error", DIFFUSERS_VERBOSITY="error")


def ensure_models(models_dir: Path) -> float:
    """Generate `builtin:tiny-sd` into `models_dir` if missing (in a child process: the bench
    process stays torch-free); returns the seconds it took."""
    t0 = time.perf_counter()
    code = ("import sys; from pathlib import Path; from workers.builtins.registry import ensure_builtin; "
            "ensure_builtin(Path(sys.argv[1]), 'tiny-sd')")
    subprocess.run([sys.executable, "-c", code, str(models_dir)], check=True)
    return time.perf_counter() - t0


# -- the stack ---------------------------------------------------------------------------------

@dataclass
class Bench:
    """A private stack (redis-server, SeaweedFS S3, producer) plus the workers a benchmark adds."""

    stack: Stack
    device: str
    models_dir: Path
    r: redis.Redis = field(init=False)
    jobs: JobStore = field(init=False)
    client: Client = field(init=False)
    worker_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.r = redis.Redis.from_url(self.stack.env["SDQ_REDIS_URL"])
        self.jobs = JobStore(self.r)
        self.client = Client(self.stack.env["SDQ_SERVER"], timeout=120)

    def add_workers(self, names: list[str], *args: str, preload: bool = True, timeout: float = 300,
                    env: dict[str, str] | None = None) -> float:
        """Start `sdq worker` processes in parallel (with `env` on top of the stack's environment);
        returns seconds until all joined the fleet."""
        t0 = time.perf_counter()
        extra = ["--preload", MODEL] if preload else []
        saved = {k: os.environ.get(k) for k in env or {}}
        os.environ.update(env or {})  # Stack.worker passes the environment of this process on
        try:
            procs = [self.stack.worker(n, "--device", self.device, *extra, *args, "--loglevel", "WARNING",
                                       wait=False) for n in names]
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
        for name, svc in zip(names, procs):
            wait_for(lambda name=name: self.r.exists(keys.worker_key(name)), f"worker {name}", timeout, svc.proc)
        self.worker_names += names
        return time.perf_counter() - t0

    def stop_workers(self) -> None:
        """Stop every worker (warm shutdown), keeping redis, S3 and the producer."""
        keep = []
        for svc in self.stack.services:
            if svc.name.startswith("worker-"):
                svc.stop()
            else:
                keep.append(svc)
        self.stack.services[:] = keep
        for name in self.worker_names:
            self.r.delete(keys.worker_key(name))
            self.r.srem(keys.FLEET_KEY, name)
        self.worker_names = []

    def worker_records(self) -> list[dict[str, Any]]:
        """The live workers: name, device, device name, dtype, threads, max batch."""
        fields = ("name", "device", "device_name", "dtype", "threads", "max_batch")
        return [{k: w.get(k) for k in fields} for w in self.client.workers()]

    def submit(self, n: int, params: dict[str, Any], tag: str = "bench") -> tuple[str, float, float]:
        """Submit `n` prompts; returns (job id, time.time() before the POST, seconds to the 202). The
        result cache is off: every benchmark job makes its images (repeats submit the same items)."""
        body = {"prompts": prompts(n, tag), "model": MODEL, "params": {"cache": False, **params}}
        t0 = time.time()
        p0 = time.perf_counter()
        job_id = self.client.submit(body)["id"]
        return job_id, t0, time.perf_counter() - p0

    def wait(self, job_id: str, timeout: float = 900) -> dict[str, Any]:
        """Poll the job's state in Redis (cheap: no producer load) until it ended; returns the job."""
        deadline = time.monotonic() + timeout
        key = keys.job_key(job_id)
        while time.monotonic() < deadline:
            if self.r.hget(key, "state") in (b"succeeded", b"failed", b"cancelled"):
                job = self.jobs.get(job_id)
                if job.state != "succeeded":
                    raise RuntimeError(f"job {job_id} ended {job.state}: {job.counts}")
                return job
            time.sleep(0.2)  # finished_at is stamped by Redis' script: polling only ends the wait
        raise TimeoutError(f"job {job_id} not finished after {timeout}s: {self.jobs.get(job_id).counts}")

    def run_job(self, n: int, params: dict[str, Any], tag: str = "bench") -> dict[str, Any]:
        """Submit, wait, and return wall time, submit time and every item record."""
        job_id, t0, submit_s = self.submit(n, params, tag)
        job = self.wait(job_id)
        items = self.jobs.all_items(job_id)
        return {"job": job, "items": items, "t0": t0, "submit_s": submit_s,
                "wall_s": job.finished_at - t0}

    def warm_up(self, params: dict[str, Any], per_worker: int = 3, attempts: int = 4) -> None:
        """Run small jobs until every worker made at least one item with `params` (first-call costs)."""
        want = set(self.worker_names)
        for _ in range(attempts):
            run = self.run_job(per_worker * len(want), params, tag="warm-up")
            want -= {it.worker for it in run["items"]}
            if not want:
                return
        raise RuntimeError(f"workers {sorted(want)} took no warm-up item")


@contextlib.contextmanager
def bench_stack(name: str, opts: argparse.Namespace, producer_workers: int = 2) -> Iterator[Bench]:
    """Start redis-server, a local S3 endpoint (SeaweedFS) and the producer on free loopback ports; stop them all at the end."""
    models_dir = Path(opts.models_dir) if opts.models_dir else default_models_dir()
    models_dir.mkdir(parents=True, exist_ok=True)
    clean_environment(models_dir)
    own_dir = opts.workdir is None
    workdir = Path(opts.workdir or tempfile.mkdtemp(prefix=f"sdq-bench-{name}-")) / name
    workdir.mkdir(parents=True, exist_ok=True)
    stack = Stack(workdir, env={"SDQ_S3_BUCKET": BUCKET})
    try:
        stack.redis(free_port())
        s3_url = stack.s3(free_port())
        os.environ.update({k: v for k, v in stack.env.items() if k.startswith("AWS_")})
        # The bucket, as an operator provides it (workers also create it; a job cancelled before any
        # worker ran would otherwise find no bucket for its manifest).
        from storage import ResultStore

        ResultStore(BUCKET, s3_url).ensure_bucket()
        stack.producer(free_port(), workers=producer_workers)
        bench = Bench(stack, opts.device, models_dir)
        warm_producer(bench)
        yield bench
    finally:
        stack.stop()
        if own_dir:
            shutil.rmtree(workdir.parent, ignore_errors=True)


def warm_producer(bench: Bench, rounds: int = 8) -> None:
    """Submit and cancel a few one-item jobs over fresh connections, so every producer process has
    made its first broker connection before anything is timed (no worker runs yet)."""
    import requests

    server = bench.stack.env["SDQ_SERVER"]
    for _ in range(rounds):
        resp = requests.post(f"{server}/v1/jobs", json={"prompts": ["warm-up"], "model": MODEL,
                                                        "params": {"width": 64, "height": 64, "steps": 1}}, timeout=30)
        resp.raise_for_status()
        requests.delete(f"{server}/v1/jobs/{resp.json()['id']}", timeout=30).raise_for_status()


def prompts(n: int, tag: str = "bench") -> list[str]:
    """`n` distinct prompts."""
    return [f"{tag} {i}: a lighthouse on a cliff at dusk, oil painting" for i in range(n)]


# -- statistics --------------------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    """The `q`-th percentile (0..100), linear interpolation."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def dist(values: list[float], scale: float = 1.0, digits: int = 2) -> dict[str, float]:
    """n, mean, p50, p90, p99, max of `values` times `scale`."""
    v = [x * scale for x in values]
    if not v:
        return {"n": 0}
    return {"n": len(v), "mean": round(statistics.fmean(v), digits), "p50": round(percentile(v, 50), digits),
            "p90": round(percentile(v, 90), digits), "p99": round(percentile(v, 99), digits),
            "max": round(max(v), digits)}


def target(name: str, value: float, limit: float, op: str = "<=", aim: float | None = None) -> dict[str, Any]:
    """A target check: `value op limit`."""
    met = value <= limit if op == "<=" else value >= limit
    out = {"name": name, "value": round(value, 4), "target": f"{op} {limit}", "met": bool(met)}
    if aim is not None:
        out["aim"] = f"{op} {aim}"
        out["aim_met"] = bool(value <= aim if op == "<=" else value >= aim)
    return out


def redis_command_stats(r: redis.Redis) -> dict[str, dict[str, float]]:
    """`INFO commandstats`: command -> {calls, usec}."""
    return {k.removeprefix("cmdstat_"): {"calls": v["calls"], "usec": v["usec"]}
            for k, v in r.info("commandstats").items()}


def command_delta(before: dict, after: dict, per: int) -> dict[str, dict[str, float]]:
    """Redis calls and server-side microseconds per item between two `redis_command_stats` snapshots."""
    out = {}
    for cmd, a in after.items():
        if cmd == "info":  # our own snapshots
            continue
        b = before.get(cmd, {"calls": 0, "usec": 0})
        calls, usec = a["calls"] - b["calls"], a["usec"] - b["usec"]
        if calls:
            out[cmd] = {"calls_per_item": round(calls / per, 2), "server_us_per_item": round(usec / per, 1)}
    return dict(sorted(out.items(), key=lambda kv: -kv[1]["server_us_per_item"]))


# -- CPU accounting --------------------------------------------------------------------------

ROLES = {"workers": ("cli worker",), "producer": ("cli producer",), "s3": ("weed mini", "moto.server"),
         "redis": ("redis-server",), "bare": ("bench.bare",)}
"""Role of a process of the benchmark, by pieces of its command line."""


def cpu_snapshot() -> dict[str, Any]:
    """CPU seconds used so far by each role among this process' descendants, and the machine's
    /proc/stat counters (for the share of time the hypervisor stole)."""
    tick = os.sysconf("SC_CLK_TCK")
    procs: dict[int, tuple[int, str, float]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            procs[int(entry)] = (int(fields[1]), cmd, (int(fields[11]) + int(fields[12])) / tick)
    mine, grew = {os.getpid()}, True
    while grew:
        grew = False
        for pid, (ppid, _, _) in procs.items():
            if ppid in mine and pid not in mine:
                mine.add(pid)
                grew = True
    roles: dict[str, float] = defaultdict(float)
    for pid in mine - {os.getpid()}:
        _, cmd, cpu = procs[pid]
        role = next((r for r, needles in ROLES.items() if any(n in cmd for n in needles)), None)
        if role:
            roles[role] += cpu
    stat: list[int] = []
    with contextlib.suppress(OSError, ValueError):
        stat = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return {"roles": dict(roles), "stat": stat}


def cpu_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """CPU seconds per role between two snapshots, and the stolen share of the machine's time."""
    roles = {r: round(after["roles"].get(r, 0.0) - before["roles"].get(r, 0.0), 2)
             for r in after["roles"] if after["roles"].get(r, 0.0) - before["roles"].get(r, 0.0) > 0}
    out: dict[str, Any] = {"cpu_s": roles}
    if len(before["stat"]) > 7 and len(after["stat"]) > 7:
        d = [a - b for a, b in zip(after["stat"], before["stat"])]
        out["steal"] = round(d[7] / max(1, sum(d[:8])), 4)
    return out


# -- machine -----------------------------------------------------------------------------------

def machine(workers: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Cores, CPU model, memory, library versions (and the device the workers reported)."""
    import importlib.metadata as md

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        kb = next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
        mem_gb = round(int(kb.split()[1]) / 2**20, 1)
    versions = {}
    for pkg in ("torch", "diffusers", "transformers", "celery", "kombu", "redis", "flask", "gunicorn", "boto3", "moto"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    redis_server = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=10).stdout
        redis_server = next((w.split("=", 1)[1] for w in out.split() if w.startswith("v=")), out.strip())
    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=10, cwd=Path(__file__).resolve().parent).stdout.strip() or None
    out = {"cores": os.cpu_count(), "cpu": cpu, "memory_gb": mem_gb, "os": platform.platform(),
           "python": platform.python_version(), "redis_server": redis_server, "versions": versions,
           "commit": commit, "load_avg_at_start": [round(x, 2) for x in os.getloadavg()]}
    if workers:
        out["device"] = sorted({f"{w.get('device')} ({w.get('device_name')}, {w.get('dtype')})" for w in workers})
    return out


# -- running a benchmark alone -----------------------------------------------------------------

def main_for(name: str, run: Callable[[argparse.Namespace], dict[str, Any]], description: str,
             add_args: Callable[[argparse.ArgumentParser], None] | None = None) -> int:
    """`python -m bench.<name>`: run one benchmark, print its section of RESULTS.md and its JSON."""
    from bench import report

    p = parser(description)
    if add_args:
        add_args(p)
    opts = p.parse_args()
    result = run(opts)
    doc = {"quick": opts.quick, "machine": machine(result.get("workers")), "benchmarks": {name: result}}
    if opts.json:
        Path(opts.json).write_text(json.dumps(doc, indent=2) + "\n")
    print(report.section(name, result))
    return 0
