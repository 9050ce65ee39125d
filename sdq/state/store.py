"""`JobStore`: job and item state in Redis, both sides of it over one connection.

The producer's side (`sdq.state.jobs`) and the worker's side (`sdq.state.runs`) are written apart;
producer, workers, reaper and tests hold one `JobStore` and use the part they need.
"""
from __future__ import annotations

from sdq.state.jobs import Jobs
from sdq.state.runs import Runs
from sdq.state.streams import Streams
from sdq.state.tenantstate import TenantState
from sdq.state.uploads import Uploads

EVENTS = ("item.started", "item.progress", "item.finished", "job.finished")
"""The events the store publishes on a job's channel (`sdq.state.keys.events_channel`)."""


class JobStore(Jobs, Runs, Uploads, TenantState, Streams):
    """Job and item records in Redis, and what the producer keeps beside them (uploads, tenants' door
    options and slots, job event subscriptions, queue lengths). Pass the connection in."""
