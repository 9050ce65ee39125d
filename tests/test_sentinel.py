"""Redis high availability: with SDQ_REDIS_URL naming Redis Sentinel, the primary dies mid-job, a
replica is promoted, and the producer and workers carry on with it."""
from __future__ import annotations

import shutil
import time

import pytest
import redis

from cli.client import Client
from cli.services import Stack, free_port, wait_for
from sdq.exceptions import ApiError, ConfigError
from sdq.state.redisconn import broker, parse_sentinel

MASTER = "sdqprimary"


@pytest.mark.unit
def test_sentinel_urls_parse_and_map_to_kombu():
    spec = parse_sentinel("sentinel://:s3cr%40t@h1:26379,h2:26380/mymaster/2")
    assert spec.sentinels == (("h1", 26379), ("h2", 26380)) and spec.master == "mymaster"
    assert spec.db == 2 and spec.password == "s3cr@t"
    assert broker("sentinel://h1:26379,h2/m") == ("sentinel://h1:26379/0;sentinel://h2:26379/0", {"master_name": "m"})
    assert parse_sentinel("redis://h:6379/0") is None and broker("redis://h:6379/0") == ("redis://h:6379/0", {})
    for bad in ("sentinel://h1:26379", "sentinel:///m", "sentinel://h1:x/m", "sentinel://h1/m/zero"):
        with pytest.raises(ConfigError, match="SDQ_REDIS_URL"):
            parse_sentinel(bad)


def _replication(port: int) -> dict:
    return redis.Redis(port=port).info("replication")


@pytest.mark.slow
def test_primary_killed_mid_job_replica_promoted_job_completes(tmp_path, s3_url, models_dir):
    stack = Stack(tmp_path, env={"SDQ_S3_ENDPOINT_URL": s3_url})
    try:
        # 1. A primary, a replica and one Sentinel (quorum 1) on loopback.
        primary_port, replica_port, sentinel_port = free_port(), free_port(), free_port()
        stack.redis(primary_port)
        primary = stack.services[-1]
        (tmp_path / "replica").mkdir()
        stack._spawn("redis-replica", [shutil.which("redis-server"), "--bind", "127.0.0.1", "--port",
                                       str(replica_port), "--dir", str(tmp_path / "replica"), "--appendonly", "yes",
                                       "--save", "", "--maxmemory-policy", "noeviction",
                                       "--replicaof", "127.0.0.1", str(primary_port)])
        wait_for(lambda: _replication(replica_port)["master_link_status"] == "up", "replica in sync", 30)
        conf = tmp_path / "sentinel.conf"
        conf.write_text(f"port {sentinel_port}\nbind 127.0.0.1\ndir {tmp_path}\n"
                        f"sentinel monitor {MASTER} 127.0.0.1 {primary_port} 1\n"
                        f"sentinel down-after-milliseconds {MASTER} 1000\n"
                        f"sentinel failover-timeout {MASTER} 5000\n")
        stack._spawn("sentinel", [shutil.which("redis-server"), str(conf), "--sentinel"])
        sentinel = redis.Redis(port=sentinel_port)
        wait_for(lambda: sentinel.sentinel_get_master_addr_by_name(MASTER), "sentinel", 30)
        wait_for(lambda: sentinel.sentinel_master(MASTER)["num-slaves"] >= 1, "sentinel sees the replica", 30)

        # 2. Producer and worker find the primary through the Sentinel.
        stack.env["SDQ_REDIS_URL"] = f"sentinel://127.0.0.1:{sentinel_port}/{MASTER}"
        stack.producer(free_port())
        stack.worker("w-sentinel", "--device", "cpu", "--threads", "1", "--preload", "builtin:tiny-sd")
        client = Client(stack.env["SDQ_SERVER"])
        items = [{"prompt": f"failover {i}"} for i in range(8)]
        job_id = client.submit({"items": items, "params": {"width": 128, "height": 128, "steps": 40, "seed": 5}})["id"]
        wait_for(lambda: client.job(job_id, limit=0)["counts"]["succeeded"] >= 1, "job under way", 120)

        # 3. The primary dies mid-job; the Sentinel promotes the replica.
        primary.proc.kill()
        done_at_kill = int(redis.Redis(port=replica_port).hget(f"sdq:job:{job_id}", "c:succeeded"))
        assert done_at_kill < len(items), "the job ended before the primary was killed"
        primary.proc.wait(10)
        wait_for(lambda: int(sentinel.sentinel_get_master_addr_by_name(MASTER)[1]) == replica_port,
                 "failover to the replica", 60)
        assert _replication(replica_port)["role"] == "master"

        # 4. The job completes on the new primary; the producer answers again.
        deadline, doc = time.monotonic() + 240, None
        while time.monotonic() < deadline:
            try:
                doc = client.job(job_id)
            except (ApiError, OSError):
                doc = None  # the producer may answer 503 while the failover is under way
            if doc and doc["state"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.5)
        assert doc is not None and doc["state"] == "succeeded", doc and doc["counts"]
        assert doc["counts"]["succeeded"] == len(items)
        assert all(it["key"] for it in doc["items"])
    finally:
        stack.stop()
