"""Hostile webhook receivers: one that reads the request, then answers one byte at a time, slowly, for ever; or
one that never answers at all (`HANG`)."""
from __future__ import annotations

import socket
import threading

BODY = b"HTTP/1.1 200 OK\r\nContent-Length: 100000000\r\nContent-Type: text/plain\r\n\r\n"
"""Answers a huge body it never finishes sending (headers complete at once, then a byte per tick)."""
HEADERS = b"HTTP/1.1 200 OK\r\n"
"""Answers a status line, then header bytes one per tick (the headers never end)."""
HANG = None
"""Answers nothing: reads until the sender gives up and closes."""


class TrickleReceiver:
    """Loopback server: after `prefix`, sends one byte every `interval` seconds until stopped (`HANG`: sends
    nothing). Counts requests, and connections open now and at most at once."""

    def __init__(self, prefix: bytes | None = BODY, interval: float = 2.0) -> None:
        self.prefix, self.interval = prefix, interval
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self.sock.getsockname()[1]
        self.requests = self.open = self.most_open = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with self._lock:
            self.requests += 1
            self.open += 1
            self.most_open = max(self.most_open, self.open)
        try:
            if self.prefix is HANG:
                while conn.recv(65536):  # until the sender gives up and closes
                    pass
                return
            conn.settimeout(10)
            data = b""
            while b"\r\n\r\n" not in data:  # the request head; the body is not needed
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            conn.sendall(self.prefix)
            while not self._stop.wait(self.interval):
                conn.sendall(b"x" if self.prefix == BODY else b"X")
        except OSError:
            pass
        finally:
            conn.close()
            with self._lock:
                self.open -= 1

    def close(self) -> None:
        self._stop.set()
        self.sock.close()
