"""A small private network of Linux network namespaces ("hosts") on one bridge, for multi-host tests.

The bridge lives in a namespace of its own; the test process itself is attached to it too, so it
can reach every host. Nothing is routed anywhere else, and everything is removed on `close()`
(deleting a namespace deletes its interfaces and their peers).
"""
from __future__ import annotations

import os
import shutil
import subprocess

SUBNET = "10.213.{}.{}"
"""Addresses of the test hosts (inside namespaces this test creates; nothing else uses them)."""


def _ip(*args: str, netns: str | None = None) -> None:
    argv = ["ip", *(["-n", netns] if netns else []), *args]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    if out.returncode:
        raise OSError(f"{' '.join(argv)}: {out.stderr.strip()}")


class Network:
    """`hosts` namespaces at 10.213.N.1..hosts on a bridge; the caller's own address is .254."""

    def __init__(self, hosts: int) -> None:
        self.tag = f"sdq{os.getpid() % 100000}"
        self.net = os.getpid() % 200 + 20
        self.switch = f"{self.tag}sw"
        self.hosts: list[tuple[str, str]] = []  # (namespace, address)
        self._root_if = f"{self.tag}r"
        self._made: list[str] = []
        try:
            self._build(hosts)
        except BaseException:
            self.close()
            raise

    def address(self, n: int) -> str:
        """The address of host `n` (1-based); 254 is the test process."""
        return SUBNET.format(self.net, n)

    def _build(self, hosts: int) -> None:
        _ip("netns", "add", self.switch)
        self._made.append(self.switch)
        _ip("link", "add", "br0", "type", "bridge", netns=self.switch)
        _ip("link", "set", "br0", "up", netns=self.switch)
        for n in range(1, hosts + 1):
            ns = f"{self.tag}h{n}"
            _ip("netns", "add", ns)
            self._made.append(ns)
            _ip("link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", f"p{n}", "netns", self.switch)
            self._plug(f"p{n}")
            _ip("addr", "add", f"{self.address(n)}/24", "dev", "eth0", netns=ns)
            _ip("link", "set", "eth0", "up", netns=ns)
            _ip("link", "set", "lo", "up", netns=ns)
            self.hosts.append((ns, self.address(n)))
        # the test process joins the network as .254
        _ip("link", "add", self._root_if, "type", "veth", "peer", "name", "p0", "netns", self.switch)
        self._plug("p0")
        _ip("addr", "add", f"{self.address(254)}/24", "dev", self._root_if)
        _ip("link", "set", self._root_if, "up")

    def _plug(self, port: str) -> None:
        _ip("link", "set", port, "master", "br0", netns=self.switch)
        _ip("link", "set", port, "up", netns=self.switch)

    def close(self) -> None:
        """Remove every namespace (and with them every interface) this network made."""
        for ns in reversed(self._made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=20)
        subprocess.run(["ip", "link", "del", self._root_if], capture_output=True, timeout=20)
        self._made.clear()


def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here, or None when they can."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    if shutil.which("ip") is None:
        return "the `ip` command (iproute2) is not installed"
    probe = f"sdqprobe{os.getpid() % 100000}"
    out = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True, timeout=20)
    if out.returncode:
        return f"cannot create a network namespace: {out.stderr.strip() or out.returncode}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True, timeout=20)
    return None
