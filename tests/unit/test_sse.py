"""The client's Server-Sent Events parser (`cli.client.sse_events`), which the bench's readers share."""
from __future__ import annotations

from cli.client import sse_events


def test_frames_with_names_multiline_data_comments_and_retry_only_frames():
    lines = [": keepalive", "", "retry: 2000", "", "event: job.state", 'data: {"state":', 'data:  "queued"}', "",
             'data: {"n": 1}', "", "event: item.progress", "id: 7", 'data: {"step": 3}', ""]
    assert list(sse_events(lines)) == [("job.state", {"state": "queued"}), ("message", {"n": 1}),
                                       ("item.progress", {"step": 3})]


def test_a_frame_is_yielded_when_its_blank_line_is_read_and_not_before():
    read: list[str] = []

    def lines():
        for line in ("event: a", "data: 1", "", "event: b", "data: 2"):
            read.append(line)
            yield line

    frames = sse_events(lines())
    assert next(frames) == ("a", 1) and read[-1] == ""
    assert list(frames) == []  # an unterminated frame at the end of the stream is not one
