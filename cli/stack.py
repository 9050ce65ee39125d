"""`sdq up`, `sdq demo` and `sdq producer`: running the local stack."""
from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from sdq import defaults
from cli import services
from cli.client import Client
from cli.services import Stack, free_port
from cli.workdir import WorkdirLock, choose_ports, default_workdir, remember_ports


def start_stack(workdir: Path, workers: int, threads: int | None, producer_port: int = 8000,
                redis_port: int = 6379, s3_port: int = 9000, quiet: bool = True) -> Stack:
    """Start redis-server, a local S3 endpoint (SeaweedFS), the producer and `workers` CPU workers on
    these ports; their data lives in `workdir` under names independent of the ports."""
    stack = Stack(workdir, quiet=quiet)
    try:
        if os.environ.get("SDQ_REDIS_URL"):
            stack.env["SDQ_REDIS_URL"] = os.environ["SDQ_REDIS_URL"]
        else:
            stack.redis(redis_port, data="redis")
        if os.environ.get("SDQ_S3_ENDPOINT_URL"):
            stack.env["SDQ_S3_ENDPOINT_URL"] = os.environ["SDQ_S3_ENDPOINT_URL"]
        else:
            stack.s3(s3_port)
        stack.producer(producer_port)
        for i in range(workers):
            extra = ["--threads", str(threads)] if threads else []
            stack.worker(f"cpu{i + 1}", "--device", "cpu", "--preload", defaults.MODEL, *extra)
    except BaseException:
        stack.stop()
        raise
    return stack


def default_threads(workers: int) -> int:
    """Torch threads per CPU worker: the cores shared out evenly."""
    return max(1, (os.cpu_count() or 1) // max(1, workers))


def cmd_up(args) -> int:
    """Run the local stack in the foreground until Ctrl-C. Its jobs, results and ports are kept in the
    work dir (`cli.workdir`), so the next `sdq up` goes on where this one stopped."""
    workdir = Path(args.workdir) if args.workdir else default_workdir()
    workdir.mkdir(parents=True, exist_ok=True)
    lock = WorkdirLock(workdir)
    lock.acquire()
    skip = {name for name, env in (("redis", "SDQ_REDIS_URL"), ("s3", "SDQ_S3_ENDPOINT_URL")) if os.environ.get(env)}
    ports = choose_ports(workdir, {"producer": args.port, "redis": args.redis_port, "s3": args.s3_port}, skip)
    n = args.workers
    print(f"sdq up: state in {workdir} (jobs, results, logs, ports; --workdir DIR for another)", file=sys.stderr)
    stack = start_stack(workdir, n, args.threads or default_threads(n), ports["producer"], ports.get("redis", 0),
                        ports.get("s3", 0), quiet=False)
    remember_ports(workdir, ports)
    print(f"sdq is up: server {stack.env['SDQ_SERVER']}  redis {stack.env['SDQ_REDIS_URL']}  "
          f"S3 {stack.env['SDQ_S3_ENDPOINT_URL']}  workers {n}  (logs and data in {workdir}; S3 credentials in "
          f"{workdir / 's3-credentials.json'})", file=sys.stderr)
    print(f"try: SDQ_SERVER={stack.env['SDQ_SERVER']} sdq submit examples/prompts.txt --wait --out results",
          file=sys.stderr)
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        while all(s.proc.poll() is None for s in stack.services):
            time.sleep(0.5)
        print("a service exited; stopping", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("stopping", file=sys.stderr)
        return 0
    finally:
        stack.stop()
        lock.release()


def cmd_demo(args) -> int:
    """Start a private stack, submit the example prompts, wait, download to results/, stop."""
    from cli.jobs import download, wait_job
    from sdq.prompts import parse_prompts

    prompts = Path(args.prompts)
    workdir = Path(tempfile.mkdtemp(prefix="sdq-demo-"))
    print(f"starting a local stack (redis-server, S3 endpoint, producer, {args.workers} CPU workers)...",
          file=sys.stderr)
    stack = start_stack(workdir, args.workers, default_threads(args.workers), free_port(), free_port(), free_port())
    try:
        client = Client(stack.env["SDQ_SERVER"])
        items = parse_prompts(prompts.read_text(encoding="utf-8"), str(prompts))
        body = {"prompts": [it["prompt"] for it in items], "model": defaults.MODEL,
                "params": {"width": args.size, "height": args.size, "steps": args.steps, "seed": 42,
                           "negative_prompt": "blurry, low quality"}}
        resp = client.submit(body)
        print(f"job {resp['id']}: {resp['items']} prompts from {prompts}", file=sys.stderr)
        doc = wait_job(client, resp["id"])
        out = download(client, resp["id"], Path(args.out) / resp["id"])
        print(f"open {out / 'index.html'}", file=sys.stderr)
        return 0 if doc["state"] == "succeeded" else 1
    finally:
        stack.stop()
        shutil.rmtree(workdir, ignore_errors=True)


def _no_control_socket() -> list[str]:
    """gunicorn's flag that turns off its control socket (one fixed path per user, shared by every
    producer on the machine) where this gunicorn has one."""
    from gunicorn.config import KNOWN_SETTINGS

    return ["--no-control-socket"] if any("--no-control-socket" in s.cli for s in KNOWN_SETTINGS if s.cli) else []


def cmd_producer(args) -> int:
    """Serve the producer: gunicorn with gevent workers where installed, else Flask's threaded server.

    gevent serves each request, event streams included, on a greenlet: hundreds of open streams
    cost no thread each, and /healthz keeps answering. Settings are checked first, so a malformed
    SDQ_API_TOKENS stops the command with its message instead of a gunicorn boot loop."""
    from sdq.config import Settings

    Settings.from_env()
    try:
        import gevent  # noqa: F401
        import gunicorn  # noqa: F401
    except ImportError:
        from producer.app import serving_app

        serving_app().run(host=args.host, port=args.port, threaded=True)
        return 0
    argv = [sys.executable, "-m", "gunicorn", "--bind", f"{args.host}:{args.port}", "--workers", str(args.workers),
            "--worker-class", "gevent", "--worker-connections", str(defaults.PRODUCER_CONNECTIONS),
            "--timeout", "0", "--graceful-timeout", "5",
            "--access-logfile", "-", *_no_control_socket(), "producer.app:serving_app()"]
    os.execv(sys.executable, argv)
    return 0


__all__ = ["cmd_up", "cmd_demo", "cmd_producer", "services"]
