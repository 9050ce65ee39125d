"""The check shared by the families' tests: a worker without the memory a model's family needs never takes its item."""
from __future__ import annotations

import pytest

from cli.client import Client
from cli.services import Stack
from sdq import families
from tests.conftest import wait_until
from tests.support.families import run
from tests.test_faults_routing import log_text


def worker_memory(client: Client) -> float:
    """The memory (GB) the stack's first worker reports."""
    return float(wait_until(client.workers, "the worker's capability record", 60)[0]["memory_total_gb"])


def left_queued_for_memory(client: Client, stack: Stack, worker: str, family: str, heavy: dict, light: dict) -> dict:
    """`heavy` (a job of a model the producer takes for a full-size one of `family`) is passed on by `worker`,
    which lacks the memory, and stays queued while `light` runs; returns the heavy job's document (the caller
    cancels it). Skips on a machine with that memory."""
    need = families.FAMILIES[family].memory.need_gb("fp32", 64 * 64)
    if worker_memory(client) >= need:
        pytest.skip(f"this machine has the {need} GB a full-size {family} model is estimated to need in fp32")
    job = client.submit(heavy)["id"]
    wait_until(lambda: f"job {job}: passing the chunk on" in log_text(stack, worker), "the chunk passed on", 60)
    assert f"needs {need:g} GB" in log_text(stack, worker)
    run(client, light)
    doc = client.job(job)
    assert doc["state"] == "queued" and doc["items"][0].get("attempts") is None, doc
    return doc
