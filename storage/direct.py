"""Object PUTs without botocore's request pipeline: one request signed here (botocore's SigV4 signer)
and sent over a pooled urllib3 connection.

For a plain-HTTP endpoint reached without a proxy (a SeaweedFS, MinIO or Ceph gateway beside the
workers) it takes about half the client CPU of `put_object` per small object. HTTPS endpoints and
endpoints behind a proxy keep botocore, with its TLS, CA-bundle and proxy settings (`usable`).
"""
from __future__ import annotations

import re
import urllib.request
from urllib.parse import quote, urlsplit

import urllib3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

STALE_CONNECTION_RETRIES = 2
"""Connection-level retries within one attempt: a pooled keep-alive connection the server closed fails
its first use (botocore's own retries cover that for `put_object`)."""


class Refused(Exception):
    """The endpoint answered a PUT with an error: its HTTP status and S3 error code (`storage.s3` classifies
    them as it does botocore's errors)."""

    def __init__(self, key: str, status: int, code: str) -> None:
        super().__init__(f"PUT {key}: HTTP {status} {code}")
        self.status, self.code = status, code


def usable(endpoint_url: str | None) -> bool:
    """Whether PUTs to `endpoint_url` may go direct: plain HTTP, and no proxy set for its host."""
    if not endpoint_url:
        return False
    parts = urlsplit(endpoint_url)
    if parts.scheme != "http" or not parts.hostname:
        return False
    proxies = urllib.request.getproxies_environment()
    if not (proxies.get("http") or proxies.get("all")):
        return True
    return bool(urllib.request.proxy_bypass_environment(parts.hostname, proxies))


def _error_code(body: bytes) -> str | None:
    """The `<Code>` of an S3 error document, if the body is one."""
    found = re.search(rb"<Code>([^<]{1,100})</Code>", body or b"")
    return found.group(1).decode("ascii", "replace") if found else None


class DirectPut:
    """Signed PUTs to one plain-HTTP, path-style S3 endpoint."""

    def __init__(self, endpoint_url: str, region: str, credentials: Credentials, connect_timeout: float = 5,
                 read_timeout: float = 30, pool_size: int = 16) -> None:
        self.base = endpoint_url.rstrip("/")
        self.region, self.credentials = region, credentials
        self.pool = urllib3.PoolManager(maxsize=pool_size, block=False)
        self.timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        self.retries = urllib3.Retry(total=STALE_CONNECTION_RETRIES, connect=STALE_CONNECTION_RETRIES,
                                     read=STALE_CONNECTION_RETRIES, status=0, redirect=False, raise_on_status=False)

    def put(self, bucket: str, key: str, data: bytes, content_type: str, metadata: dict[str, str]) -> None:
        """Write `data` at `key`. Raises `Refused` for an error answer and urllib3's `HTTPError` when the
        endpoint cannot be reached."""
        url = f"{self.base}/{quote(bucket, safe='')}/{quote(key, safe='/~')}"
        headers = {"Content-Type": content_type, **{f"x-amz-meta-{k}": v for k, v in metadata.items()}}
        request = AWSRequest(method="PUT", url=url, data=data, headers=headers)
        S3SigV4Auth(self.credentials.get_frozen_credentials(), "s3", self.region).add_auth(request)
        answer = self.pool.request("PUT", url, body=data, headers=dict(request.headers.items()),
                                   retries=self.retries, timeout=self.timeout)
        if answer.status >= 300:
            raise Refused(key, answer.status, _error_code(answer.data) or str(answer.status))
