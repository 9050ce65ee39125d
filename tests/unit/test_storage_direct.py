"""Which endpoints take direct PUTs, and how their error answers are classified (pure logic)."""
from __future__ import annotations

import pytest
import urllib3

from storage import direct
from storage.s3 import _no_bucket, transient, translate
from storage.errors import StorageError, StorageUnavailable

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def no_proxies(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", "no_proxy",
                 "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


def test_only_plain_http_endpoints_without_a_proxy_go_direct(monkeypatch):
    assert direct.usable("http://s3.internal:8333") and direct.usable("http://127.0.0.1:9000/")
    assert not direct.usable("https://s3.us-east-1.amazonaws.com")  # TLS: botocore's CA bundle and settings
    assert not direct.usable(None) and not direct.usable("")
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.corp:3128")
    assert not direct.usable("http://s3.internal:8333")  # the proxy botocore would use
    monkeypatch.setenv("NO_PROXY", "s3.internal")
    assert direct.usable("http://s3.internal:8333")


@pytest.mark.parametrize("status,code,outage", [
    (503, "SlowDown", True), (500, "InternalError", True), (502, "502", True), (400, "RequestTimeout", True),
    (403, "AccessDenied", False), (403, "SignatureDoesNotMatch", False), (400, "InvalidArgument", False),
])
def test_an_error_answer_is_an_outage_or_a_refusal_as_botocores_would_be(status, code, outage):
    answer = direct.Refused("jobs/j/00000.png", status, code)
    assert transient(answer) is outage
    out = translate(answer)
    assert isinstance(out, StorageUnavailable) is outage and isinstance(out, StorageError)
    assert code in str(out) and "jobs/j/00000.png" in str(out)


def test_a_missing_bucket_and_a_dead_connection_are_told_apart():
    assert _no_bucket(direct.Refused("k", 404, "NoSuchBucket"))
    assert not _no_bucket(direct.Refused("k", 404, "NoSuchKey"))
    assert isinstance(translate(urllib3.exceptions.NewConnectionError(None, "refused")), StorageUnavailable)
