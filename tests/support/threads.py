"""One torch thread for a module's in-process diffusers runs (import `one_thread` into the test module)."""
from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread: on a shared 2-core machine two threads make tiny models ~10x slower under load."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
