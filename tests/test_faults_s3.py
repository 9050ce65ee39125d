"""An S3 outage of 60 s mid-job (issue 11 defect 1): uploads ride it out with sdq's own backoff,
keeping each encoded PNG, and the job succeeds without making any image twice; a run superseded while it
rides one out stores nothing (issue 39 defect 10)."""
from __future__ import annotations

import time
from contextlib import contextmanager
from typing import Iterator
from urllib.parse import urlparse

import pytest
import redis

from cli.client import Client
from cli.services import Stack, wait_for
from sdq.state import keys
from sdq.state.store import JobStore
from tests.conftest import wait_job
from tests.tcpproxy import TcpProxy
from tests.test_faults import FAST_RECOVERY, WARM
from tests.test_faults_routing import log_text

OUTAGE = 60.0
"""Seconds the S3 endpoint stays unreachable."""


@contextmanager
def proxied_stack(stack_factory, s3_url: str, name: str,
                  worker: str) -> Iterator[tuple[Stack, Client, redis.Redis, TcpProxy]]:
    """A fault stack whose S3 is reached through a TCP proxy (up at first), with one warm worker."""
    proxy = TcpProxy(urlparse(s3_url).port)
    proxy.up()
    st = stack_factory(name, env={**FAST_RECOVERY, "SDQ_S3_ENDPOINT_URL": proxy.url})
    try:
        st.worker(worker, *WARM)
        yield st, Client(st.env["SDQ_SERVER"]), redis.Redis.from_url(st.env["SDQ_REDIS_URL"]), proxy
    finally:
        st.stop()
        proxy.down()


@pytest.mark.slow
def test_uploads_ride_out_a_60s_s3_outage(stack_factory, s3_url, store):
    with proxied_stack(stack_factory, s3_url, "s3-outage", "s3w") as (st, client, r, proxy):
        proxy.down()
        down_at = time.monotonic()
        job_id = client.submit({"model": "builtin:tiny-sd", "prompts": ["a", "b", "c"],
                                "params": {"width": 64, "height": 64, "steps": 4, "seed": 1}})["id"]
        wait_for(lambda: time.monotonic() - down_at >= OUTAGE, "the outage", OUTAGE + 5)
        doc = client.job(job_id)
        assert doc["state"] == "running" and doc["counts"]["running"] >= 1, doc  # waiting, not failed
        assert doc["counts"]["failed"] == doc["counts"]["succeeded"] == 0, doc
        proxy.up()
        doc = wait_job(client, job_id, 120)
        assert doc["state"] == "succeeded", doc
        assert all(it["attempts"] == 1 for it in doc["items"]), doc["items"]  # no image made twice
        wait_for(lambda: store.size(f"jobs/{job_id}/manifest.json"), "the manifest (finalize task)", 60)
        assert [k for k in store.keys(f"jobs/{job_id}/") if "/thumbs/" not in k] == [
            f"jobs/{job_id}/{i:05d}.png" for i in range(3)] + [f"jobs/{job_id}/manifest.json"]
        assert r.exists("sdq:worker:s3w")


def test_a_run_superseded_while_its_put_rides_out_an_outage_stores_nothing(stack_factory, s3_url, store):
    """The run claimed its item and is retrying its PUT through an outage when it is superseded (reaped while
    alive) and the job cancelled: the claim is asked again before every attempt, so once S3 is back the
    cancelled item gets no object (issue 39 defect 10)."""
    with proxied_stack(stack_factory, s3_url, "s3-superseded", "s3s") as (st, client, r, proxy):
        jobs = JobStore(r)
        proxy.down()
        job_id = client.submit({"model": "builtin:tiny-sd", "prompts": ["a"],
                                "params": {"width": 64, "height": 64, "steps": 2, "seed": 1, "cache": False}})["id"]
        key = f"jobs/{job_id}/00000.png"
        wait_for(lambda: f"S3 PUT {key} failed" in log_text(st, "s3s"), "the claimed run's PUT retrying", 120)
        assert r.hget(keys.won_key(job_id), "0") == b"s3s"  # claimed before the outage was met
        assert jobs.reap("s3s") == [(job_id, 0)]
        assert jobs.cancel(job_id) == ("cancelled", True)
        proxy.up()
        wait_for(lambda: r.zcard(keys.UNACKED_INDEX_KEY) == 0, "the superseded run's message acknowledged", 90)
        assert store.size(key) is None
        assert jobs.all_items(job_id)[0].state == "cancelled"
        assert "cancelled or superseded after its claim" in log_text(st, "s3s")
