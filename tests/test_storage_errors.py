"""The store's boundary: a failed S3 call raises the store's own error, never botocore's (real SeaweedFS)."""
from __future__ import annotations

import time
import uuid

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


def test_a_worker_store_puts_direct_with_the_content_type_and_metadata(store: ResultStore, s3_url: str):
    """A store that rides out outages PUTs to a plain-HTTP endpoint directly (`storage.direct`): the object
    reads back as botocore wrote it, with its content type and metadata."""
    worker = ResultStore(store.bucket, s3_url, outage_limit=5.0)
    assert worker.direct is not None and store.direct is None  # a store without an outage limit keeps botocore
    key, data = "tests/storage-errors/direct ünïcode+key.png", bytes(range(256)) * 40
    worker.put(key, data, content_type="image/png", metadata={"width": "64", "height": "32"})
    head = store.client.head_object(Bucket=store.bucket, Key=key)
    assert (head["ContentType"], head["Metadata"], head["ContentLength"]) == (
        "image/png", {"width": "64", "height": "32"}, len(data))
    assert store.get(key) == data
    worker.put(key, b"again", content_type="image/png")  # overwrites, on the pooled connection
    assert store.get(key) == b"again"


def test_a_direct_put_creates_a_missing_bucket(store: ResultStore, s3_url: str):
    bucket = f"sdq-direct-{uuid.uuid4().hex[:12]}"
    worker = ResultStore(bucket, s3_url, outage_limit=5.0)
    assert worker.direct is not None
    worker.put("made.bin", b"made")
    assert worker.get("made.bin") == b"made"


def test_wrong_credentials_on_the_direct_path_fail_at_once_with_a_storage_error(store: ResultStore, s3_url: str,
                                                                                 monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    wrong = ResultStore(store.bucket, s3_url, outage_limit=30.0)
    assert wrong.direct is not None
    started = time.monotonic()
    with pytest.raises(StorageError) as err:
        wrong.put("tests/storage-errors/denied-direct.bin", b"x")
    assert not isinstance(err.value, ObjectMissing | StorageUnavailable), err.value
    assert "403" in str(err.value) and time.monotonic() - started < 10  # refused, not ridden out as an outage
