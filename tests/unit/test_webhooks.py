"""Webhook signatures and target checks (no network: IP literals only)."""
from __future__ import annotations

import hashlib
import hmac

import pytest

from sdq.exceptions import InvalidInput
from sdq.webhooks import resolve_target, sign, tenant_secret, verify


def test_signature_is_the_hmac_of_timestamp_dot_body():
    expected = hmac.new(b"k", b"1700000000.{}", hashlib.sha256).hexdigest()
    assert sign("k", "1700000000", b"{}") == "sha256=" + expected
    assert verify("k", "1700000000", b"{}", "sha256=" + expected)


@pytest.mark.parametrize("secret, ts, body, sig", [("other", "1", b"x", None), ("k", "2", b"x", None),
                                                   ("k", "1", b"y", None), ("k", "1", b"x", "")])
def test_any_change_breaks_the_signature(secret, ts, body, sig):
    good = sign("k", "1", b"x")
    assert not verify(secret, ts, body, good if sig is None else sig)


def test_each_tenant_has_its_own_secret():
    assert tenant_secret("master", "alice") != tenant_secret("master", "bob")
    assert tenant_secret("master", "alice") != tenant_secret("other", "alice")
    assert len(tenant_secret("master", "alice")) == 64


@pytest.mark.parametrize("url, code", [("ftp://example.com/x", "invalid_url"), ("http:///x", "invalid_url"),
                                       ("http://u:p@example.com/", "invalid_url"),
                                       ("http://example.com:99999/", "invalid_url"),
                                       ("http://127.0.0.1:8080/hook", "forbidden_target"),
                                       ("http://[::ffff:10.0.0.1]/", "forbidden_target")])
def test_refused_targets_name_the_field(url, code):
    with pytest.raises(InvalidInput) as err:
        resolve_target(url, allow_private=False, field="webhook_url")
    assert err.value.field == "webhook_url" and err.value.code == code


def test_a_checked_target_keeps_the_address_to_connect_to():
    target = resolve_target("https://127.0.0.1/a?b=1", allow_private=True)
    assert (target.scheme, target.ip, target.port, target.path) == ("https", "127.0.0.1", 443, "/a?b=1")
