"""A loopback TCP proxy a test can take down and bring back (an outage of the server behind it)."""
from __future__ import annotations

import socket
import threading

from cli.services import free_port


class TcpProxy:
    """Forwards 127.0.0.1:`port` to 127.0.0.1:`target`. `down()` refuses new connections and cuts
    open ones; `up()` listens again on the same port; `cut_after(n)` goes down by itself once `n`
    more bytes went from the server to clients (an outage in the middle of a download), setting `cut`."""

    def __init__(self, target: int) -> None:
        self.target, self.port = target, free_port()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self.served = 0  # bytes sent from the server to clients
        self.cut = threading.Event()
        self._cut_at: int | None = None

    def cut_after(self, nbytes: int) -> None:
        """Go down once `nbytes` more bytes were served."""
        self.cut.clear()
        self._cut_at = self.served + nbytes

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        """Accept connections again."""
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Close the listening socket and every open connection."""
        if self._listener is not None:
            try:  # wakes the thread blocked in accept(); close() alone would leave it accepting
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._listener = None
        with self._lock:
            for conn in self._conns:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                conn.close()
            self._conns.clear()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.target), timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._conns.update((client, server))
            for a, b, served in ((client, server, False), (server, client, True)):
                threading.Thread(target=self._pump, args=(a, b, served), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, served: bool = False) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
                if served:
                    self._count(len(data))
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)

    def _count(self, n: int) -> None:
        with self._lock:
            self.served += n
            cut = self._cut_at is not None and self.served >= self._cut_at
            if cut:
                self._cut_at = None
        if cut:
            self.down()
            self.cut.set()
