"""Starting and stopping local service processes: redis-server, an S3 endpoint, producer, workers.

Used by `sdq up`/`sdq demo` and by the test fixtures, so both run the stack the same way.
"""
from __future__ import annotations

import os
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

LOCAL_AWS = {"AWS_ACCESS_KEY_ID": "sdq-local", "AWS_SECRET_ACCESS_KEY": "sdq-local-secret",
             "AWS_DEFAULT_REGION": "us-east-1"}
"""Credentials for the local S3 endpoint (moto accepts any)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on `host` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


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

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Service:
        log = open(self.workdir / f"{name}.log", "ab") if self.quiet else None
        proc = subprocess.Popen(argv, env={**os.environ, **self.env, **(env or {})},
                                stdout=log or None, stderr=subprocess.STDOUT if log else None,
                                start_new_session=self.quiet)
        svc = Service(name, proc, log)
        self.services.append(svc)
        return svc

    def redis(self, port: int) -> str:
        """Start redis-server on 127.0.0.1:`port` (AOF on, no eviction); returns its URL."""
        binary = shutil.which("redis-server")
        if not binary:
            raise ConfigError("redis-server not found: install it (apt-get install redis-server) "
                              "or point SDQ_REDIS_URL at a running Redis")
        data = self.workdir / f"redis-{port}"
        data.mkdir(parents=True, exist_ok=True)
        svc = self._spawn("redis", [binary, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(data),
                                    "--appendonly", "yes", "--save", "", "--maxmemory-policy", "noeviction",
                                    "--protected-mode", "yes"])
        import redis

        url = f"redis://127.0.0.1:{port}/0"
        wait_for(lambda: redis.Redis.from_url(url).ping(), "redis-server", 20, svc.proc)
        self.env["SDQ_REDIS_URL"] = url
        return url

    def s3(self, port: int) -> str:
        """Start moto's standalone S3 server on 127.0.0.1:`port`; returns its endpoint URL."""
        svc = self._spawn("s3", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                          env=LOCAL_AWS)
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: requests.get(url, timeout=1).status_code < 500, "S3 endpoint", 30, svc.proc)
        self.env.update(LOCAL_AWS, SDQ_S3_ENDPOINT_URL=url)
        return url

    def producer(self, port: int, workers: int = 2) -> str:
        """Start the producer (gunicorn) on 127.0.0.1:`port`; returns its base URL."""
        svc = self._spawn("producer", [sys.executable, "-m", "sdq.cli", "producer", "--host", "127.0.0.1",
                                       "--port", str(port), "--workers", str(workers)])
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: requests.get(url + "/healthz", timeout=1).ok, "producer", 30, svc.proc)
        self.env["SDQ_SERVER"] = url
        return url

    def worker(self, name: str, *args: str, wait: bool = True, env: dict[str, str] | None = None) -> Service:
        """Start `sdq worker --name NAME ARGS...` (extra `env`); by default wait until it joined the fleet."""
        svc = self._spawn(f"worker-{name}", [sys.executable, "-m", "sdq.cli", "worker", "--name", name, *args],
                          env=env)
        if wait:
            import redis

            client = redis.Redis.from_url(self.env["SDQ_REDIS_URL"])
            wait_for(lambda: client.exists(f"sdq:worker:{name}"), f"worker {name}", 120, svc.proc)
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
