"""CPU-heavy work of a request (decoding and re-encoding uploads) on native threads, off the gevent loop.

Under gunicorn's gevent worker every request of the process shares one OS thread: a 16 Mpx decode
and PNG encode (seconds) run there would stop `/healthz` and every event stream of the process for
that long. `run` hands such work to a small pool of native threads (gevent's `ThreadPool`, made
once per process, after the fork) and parks only the calling greenlet; Pillow releases the GIL
while it decodes and encodes, so the loop keeps serving. The pool's threads run at a lower CPU
priority (`OFFLOAD_NICENESS`, Linux: niceness is per thread), so on a busy machine the loop that
answers `/healthz` and every stream goes first. Without gevent (Flask's threaded server) each request
already has its own thread and the work runs inline.
"""
from __future__ import annotations

import os
import threading
from typing import Any, Callable, TypeVar

from sdq import defaults

T = TypeVar("T")

OFFLOAD_NICENESS = 10
"""Niceness added to the offload threads (they yield the CPU to the loop that serves requests)."""

_lock = threading.Lock()
_niced = threading.local()
_pool: Any = None
_pool_pid = 0


def _gevent_pool() -> Any:
    """This process's native thread pool, when the process runs under gevent; else None."""
    global _pool, _pool_pid
    try:
        from gevent import monkey
    except ImportError:
        return None
    if not monkey.is_module_patched("threading"):
        return None
    with _lock:
        if _pool is None or _pool_pid != os.getpid():
            from gevent.threadpool import ThreadPool

            _pool, _pool_pid = ThreadPool(maxsize=defaults.UPLOAD_DECODE_THREADS), os.getpid()
        return _pool


def _lowered(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` on a thread whose CPU priority was lowered once (where the OS allows it)."""
    if not getattr(_niced, "done", False):
        _niced.done = True
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), OFFLOAD_NICENESS)
        except (AttributeError, OSError):  # not Linux, or not allowed: same priority as the loop
            pass
    return fn(*args)


def run(fn: Callable[..., T], *args: Any) -> T:
    """`fn(*args)` on a native thread under gevent (the caller's greenlet waits, the loop serves on);
    inline otherwise. Exceptions propagate to the caller."""
    pool = _gevent_pool()
    if pool is None:
        return fn(*args)
    return pool.apply(_lowered, (fn, *args))
