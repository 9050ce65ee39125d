"""A small HTTP client of the producer API, used by the CLI."""
from __future__ import annotations

import json
from typing import Any, Iterable, Iterator

import requests

from sdq.exceptions import ApiError, SdqError


def sse_events(lines: Iterable[str]) -> Iterator[tuple[str, Any]]:
    """(event name, JSON data) of each frame of a Server-Sent Events stream, given its lines; each
    pair comes as soon as the blank line that ends its frame is read."""
    event, data = "message", []
    for line in lines:
        if line:
            field, _, value = line.partition(":")
            if field == "event":
                event = value.strip()
            elif field == "data":
                data.append(value.removeprefix(" "))
            continue
        if data:  # a blank line ends a frame; comments and retry-only frames carry no data
            yield event, json.loads("\n".join(data))
        event, data = "message", []


class Client:
    """Talks to one producer."""

    def __init__(self, server: str, token: str | None = None, timeout: float = 30.0) -> None:
        self.server = server.rstrip("/")
        self.session = requests.Session()
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout

    def _call(self, method: str, path: str, **kwargs) -> Any:
        try:
            resp = self.session.request(method, self.server + path, timeout=self.timeout, **kwargs)
        except requests.ConnectionError as exc:
            raise SdqError(f"cannot reach the sdq server at {self.server} ({exc.__class__.__name__}); "
                           "is it running? (set --server or SDQ_SERVER)") from None
        try:
            body = resp.json()
        except ValueError:
            body = {"error": {"message": resp.text[:200]}}
        if resp.status_code >= 400:
            raise ApiError(resp.status_code, body)
        return body

    def submit(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /v1/jobs."""
        return self._call("POST", "/v1/jobs", json=body)

    def job(self, job_id: str, offset: int = 0, limit: int = 100) -> dict[str, Any]:
        """GET /v1/jobs/{id}."""
        return self._call("GET", f"/v1/jobs/{job_id}", params={"offset": offset, "limit": limit})

    def all_items(self, job_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The job document and every item (paging through)."""
        doc = self.job(job_id, 0, 100)
        items = list(doc["items"])
        while len(items) < doc["n_items"]:
            items += self.job(job_id, len(items), 100)["items"]
        return doc, items

    def jobs(self, offset: int = 0, limit: int = 20) -> dict[str, Any]:
        """GET /v1/jobs: the caller's jobs, newest first."""
        return self._call("GET", "/v1/jobs", params={"offset": offset, "limit": limit})

    def events(self, job_id: str, read_timeout: float = 60.0) -> Iterator[tuple[str, dict[str, Any]]]:
        """GET /v1/jobs/{id}/events: (event name, data) pairs until the server ends the stream."""
        try:
            resp = self.session.get(f"{self.server}/v1/jobs/{job_id}/events", stream=True,
                                    timeout=(self.timeout, read_timeout))
        except requests.ConnectionError as exc:
            raise SdqError(f"cannot reach the sdq server at {self.server} ({exc.__class__.__name__})") from None
        with resp:
            if resp.status_code >= 400:
                raise ApiError(resp.status_code, resp.json())
            yield from sse_events(resp.iter_lines(chunk_size=None, decode_unicode=True))

    def cancel(self, job_id: str) -> dict[str, Any]:
        """DELETE /v1/jobs/{id}."""
        return self._call("DELETE", f"/v1/jobs/{job_id}")

    def retry(self, job_id: str) -> dict[str, Any]:
        """POST /v1/jobs/{id}/retry."""
        return self._call("POST", f"/v1/jobs/{job_id}/retry")

    def workers(self) -> list[dict[str, Any]]:
        """GET /v1/workers."""
        return self._call("GET", "/v1/workers")["workers"]

    def upload(self, data: bytes, filename: str) -> dict[str, Any]:
        """POST /v1/uploads (multipart)."""
        return self._call("POST", "/v1/uploads", files={"file": (filename, data)})
