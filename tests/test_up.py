"""`sdq up` keeps its jobs (issue 22 defect 7): one work dir holds the data under port-independent
names and the ports it ran on; a busy port is an error naming it and its flag; a second `sdq up` on
a work dir in use stops with one line. Real `sdq up` processes (redis-server, SeaweedFS, producer)."""
from __future__ import annotations

import signal
import socket
import subprocess
import sys
from pathlib import Path

import requests

from cli.client import Client
from cli.services import free_port, wait_for


def up(workdir: Path, *args: str) -> subprocess.Popen:
    """`sdq up --workers 0` on `workdir`; its stderr (its services log there too) goes to a file beside it,
    read back by `err`."""
    path = workdir.parent / f"{workdir.name}-up-{len(list(workdir.parent.glob(workdir.name + '-up-*')))}.err"
    proc = subprocess.Popen([sys.executable, "-m", "cli", "up", "--workers", "0", "--workdir", str(workdir),
                             *args], stdout=subprocess.DEVNULL, stderr=path.open("w"), text=True)
    proc.err_path = path
    return proc


def err(proc: subprocess.Popen) -> str:
    """What `proc` wrote on stderr so far."""
    return proc.err_path.read_text(encoding="utf-8", errors="replace")


def wait_up(proc: subprocess.Popen, port: int) -> str:
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: requests.get(url + "/healthz", timeout=1).ok, "sdq up's producer", 120, proc)
    except RuntimeError:
        raise AssertionError(f"sdq up exited with {proc.returncode}: {err(proc)[-2000:]}") from None
    return url


def stop(proc: subprocess.Popen) -> str:
    """SIGTERM, as a service manager stops it; returns what it wrote on stderr."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    return err(proc)


def test_a_restart_on_the_same_work_dir_keeps_the_jobs_and_the_ports(tmp_path):
    ports = [free_port(), free_port(), free_port()]
    first = up(tmp_path, "--port", str(ports[0]), "--redis-port", str(ports[1]), "--s3-port", str(ports[2]))
    try:
        url = wait_up(first, ports[0])
        job_id = Client(url).submit({"model": "builtin:tiny-sd", "prompts": ["kept"],
                                     "params": {"width": 64, "height": 64, "steps": 2}})["id"]
    finally:
        stop(first)
    assert (tmp_path / "redis").is_dir()  # the data dir does not depend on the port
    second = up(tmp_path)  # no port flags: the remembered ones
    try:
        url = wait_up(second, ports[0])
        assert Client(url).job(job_id)["state"] == "queued"
    finally:
        screen = stop(second)
    assert str(tmp_path) in screen  # the first screen says where the state is


def test_a_busy_port_is_an_error_naming_it_and_its_flag(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = up(tmp_path, "--port", str(port), "--redis-port", str(free_port()), "--s3-port", str(free_port()))
        try:
            proc.wait(60)
        finally:
            if proc.poll() is None:
                stop(proc)
    screen = err(proc)
    assert proc.returncode == 2
    assert f"port {port} for producer" in screen and "--port" in screen, screen


def test_a_second_up_on_a_work_dir_in_use_stops_with_one_line(tmp_path):
    ports = [free_port(), free_port(), free_port()]
    first = up(tmp_path, "--port", str(ports[0]), "--redis-port", str(ports[1]), "--s3-port", str(ports[2]))
    try:
        wait_up(first, ports[0])
        second = up(tmp_path, "--port", str(free_port()), "--redis-port", str(free_port()),
                    "--s3-port", str(free_port()))
        try:
            second.wait(60)
        finally:
            if second.poll() is None:
                stop(second)
    finally:
        stop(first)
    screen = err(second)
    assert second.returncode == 2
    lines = [line for line in screen.splitlines() if line.strip()]
    assert len(lines) == 1 and "in use by another `sdq up`" in lines[0] and "--workdir" in lines[0], screen
