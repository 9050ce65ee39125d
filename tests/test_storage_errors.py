"""The store's boundary: a failed S3 call raises the store's own error, never botocore's (real SeaweedFS)."""
from __future__ import annotations

import pytest

from cli.services import free_port
from storage import ObjectMissing, ResultStore, StorageError, StorageUnavailable


def test_a_missing_object_raises_object_missing_on_every_read(store: ResultStore):
    with pytest.raises(ObjectMissing):
        store.get("tests/storage-errors/absent.bin")
    with pytest.raises(ObjectMissing):
        store.stream("tests/storage-errors/absent.bin")
    with pytest.raises(ObjectMissing):
        store.copy("tests/storage-errors/absent.bin", "tests/storage-errors/copy.bin")
    assert store.size("tests/storage-errors/absent.bin") is None


def test_wrong_credentials_raise_a_storage_error_not_botocores(store: ResultStore, s3_url: str, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    wrong = ResultStore(store.bucket, s3_url)
    with pytest.raises(StorageError) as err:
        wrong.put("tests/storage-errors/denied.bin", b"x")
    assert type(err.value).__module__ == "storage.errors"
    assert not isinstance(err.value, ObjectMissing | StorageUnavailable)


def test_an_unreachable_endpoint_raises_storage_unavailable_after_the_outage_limit():
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    gone = ResultStore("sdq-nowhere", closed, outage_limit=1.0, backoff_cap=0.2)
    with pytest.raises(StorageUnavailable):
        gone.put("a.bin", b"x")
    with pytest.raises(StorageUnavailable):
        gone.keys("jobs/")
