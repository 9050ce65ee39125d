"""Every Redis key sdq uses, spelled here and nowhere else (tests/unit/test_layering.py checks).

Jobs (all expire `JOB_TTL` after creation):

- ``sdq:job:<id>`` hash: the `sdq.records.Job` fields (JSON where structured, see `Job.to_hash`)
  and counters ``c:<state>`` per item state, ``steps_done``/``steps_total`` for progress;
- ``sdq:job:<id>:items`` hash: item index -> `sdq.records.Item` as JSON (unset fields left out);
- ``sdq:job:<id>:prog`` hash: item index -> steps counted by its current run;
- ``sdq:job:<id>:won`` hash: item index -> the run that may store its result, when an item has a
  straggler backup (the first copy to claim it wins);
- ``sdq:jobs:<owner>`` sorted set of job ids by creation time;
- ``sdq:active`` sorted set of unfinished job ids by creation time (for queue positions);
- ``sdq:queued-items`` hash: owner -> that owner's queued items (the per-tenant cap);
- ``sdq:finalize`` sorted set of ended jobs not yet finalised;
- ``sdq:running:<worker>`` / ``sdq:running-workers``: which worker runs which items (the reaper);
- ``sdq:events:<id>`` pub/sub channel of job events.

The fleet and the rest: ``sdq:worker:<name>`` / ``sdq:workers`` / ``sdq:fleet:events`` (`sdq.state.fleet`),
``sdq:outbox`` (messages still to publish, `sdq.state.outbox`), ``sdq:parked`` and ``sdq:parked:fleet``
(chunks no live worker can take, ibid.), ``sdq:reaper:lock``,
``sdq:rcache:<key>`` (`sdq.state.resultindex`), ``sdq:upload:<key>`` (`producer.uploads`),
``sdq:a1111-options:<owner>`` (`producer.doors.a1111`),
``sdq:held:<kind>:<owner>`` and ``sdq:upload-bytes:<owner>:<day>`` (per-tenant limits, `sdq.state.limits`),
``sdq:once:<owner>:<door>:<digest>`` (idempotency keys, `sdq.state.idempotency`),
``sdq:debug:...`` (fault injection, `workers.testing.faults`) and kombu's ``unacked_index``.

The Lua scripts (`sdq.state.scripts`) get every key in KEYS, built here: `job_script_keys`.
sdq runs on one Redis (not Cluster), so a script may touch keys of several jobs.
"""
from __future__ import annotations

from sdq.contract import worker_queue

ACTIVE_KEY = "sdq:active"
"""Sorted set of unfinished job ids by creation time."""

FINALIZE_KEY = "sdq:finalize"
"""Sorted set of ended jobs whose manifest/grid/webhook are not done yet, by time recorded."""

RUNNING_WORKERS_KEY = "sdq:running-workers"
"""Set of workers with items `running`; `running_key(worker)` holds each one's ``job:index``."""

RUNNING_PREFIX = "sdq:running:"
"""Prefix of the per-worker sets of running items (`running_key`)."""

WORKER_PREFIX = "sdq:worker:"
"""Prefix of the workers' published records (`worker_key`); the scripts that ask whether a run's
holder is alive get it in KEYS and read ``<prefix><worker>``."""

FLEET_KEY = "sdq:workers"
"""Set of the names of workers that published a record (`worker_key`)."""

FLEET_EVENTS_CHANNEL = "sdq:fleet:events"
"""Pub/sub channel: the name of each worker that publishes its record (it started or finished
something, or its heartbeat); idle workers look for stragglers when it speaks (`workers.fleet.idlewatch`)."""

OUTBOX_KEY = "sdq:outbox"
"""The outbox (`sdq.state.outbox`): sorted set of messages to publish, by the time they are due; each
state change that needs a message records it here in the same step."""

PARKED_KEY = "sdq:parked"
"""Chunk messages no live worker can take (`sdq.state.outbox.Outbox.park`), by the time they were parked:
they wait here, not in the outbox, until the fleet changes."""

PARKED_FLEET_KEY = "sdq:parked:fleet"
"""The fleet (`sdq.state.fleet.signature`) the parked chunks were last checked against; expires
`PARKED_RECHECK` seconds after it was set, so they are checked again at least that often."""

REAPER_LOCK_KEY = "sdq:reaper:lock"
"""Held by the one worker that reaps at a time."""

RESULT_INDEX_PREFIX = "sdq:rcache:"
"""Prefix of the result-cache index entries (`sdq.state.resultindex`)."""

FAULT_RULES_KEY = "sdq:debug:faults"
"""Hash of fault-injection rules for every worker; ``<this>:<worker>`` for one worker."""

UNACKED_INDEX_KEY = "unacked_index"
"""kombu's sorted set of delivered, unacknowledged messages (delivery tag -> delivery time)."""

QUEUED_BY_OWNER_KEY = "sdq:queued-items"
"""Hash of owner -> items of that owner's jobs in state `queued` (kept by the job scripts; the
per-tenant cap reads one field at submit). An owner with none has no field."""

SHARED_SCRIPT_KEYS = (ACTIVE_KEY, FINALIZE_KEY, RUNNING_PREFIX, RUNNING_WORKERS_KEY, QUEUED_BY_OWNER_KEY, OUTBOX_KEY)
"""KEYS[1..6] of every job script (`lua/common.lua`): active jobs, jobs to finalise, the prefix of
the running sets (the worker is read from the item inside the script), workers with running items,
queued items per owner, the outbox."""


def job_key(job_id: str) -> str:
    """Hash of a job's fields and counters."""
    return f"sdq:job:{job_id}"


def items_key(job_id: str) -> str:
    """Hash of a job's items, index -> JSON."""
    return f"{job_key(job_id)}:items"


def progress_key(job_id: str) -> str:
    """Hash of the steps each item's current run counted."""
    return f"{job_key(job_id)}:prog"


def won_key(job_id: str) -> str:
    """Hash of item index -> the run that may store its result (straggler backups)."""
    return f"{job_key(job_id)}:won"


def events_channel(job_id: str) -> str:
    """Pub/sub channel of a job's events."""
    return f"sdq:events:{job_id}"


def door_options_key(owner: str) -> str:
    """Hash of an owner's A1111 options (`POST /sdapi/v1/options`: `sd_model_checkpoint` ...), JSON values."""
    return f"sdq:a1111-options:{owner}"


def owner_jobs_key(owner: str) -> str:
    """Sorted set of an owner's job ids by creation time."""
    return f"sdq:jobs:{owner}"


def running_key(worker: str) -> str:
    """Set of ``job:index`` running on `worker`."""
    return RUNNING_PREFIX + worker


def worker_key(name: str) -> str:
    """A worker's published record (JSON, expires unless refreshed)."""
    return WORKER_PREFIX + name


def upload_key(key: str) -> str:
    """The record of an uploaded input image stored at S3 `key`."""
    return f"sdq:upload:{key}"


def held_key(kind: str, owner: str) -> str:
    """Sorted set of `owner`'s uses of `kind` in progress (streams, upload decodes), scored by expiry."""
    return f"sdq:held:{kind}:{owner}"


def once_key(owner: str, door: str, digest: str) -> str:
    """String: the job a tenant's idempotency key (its SHA-256 `digest`) made at `door`, for a day."""
    return f"sdq:once:{owner}:{door}:{digest}"


def upload_bytes_key(owner: str, day: str) -> str:
    """Counter of the upload bytes `owner` sent on UTC `day` (YYYYMMDD)."""
    return f"sdq:upload-bytes:{owner}:{day}"


KOMBU_BINDING_PREFIXES = ("_kombu.binding.", "_kombu.binding_permanent.")
"""kombu's prefixes of an exchange's binding table and of its permanent bindings (sdq names each
exchange like its queue)."""

KOMBU_BINDING_DEADLINES_KEY = "_kombu.binding_deadlines"
"""kombu's sorted set of bindings that expire (its own bookkeeping)."""

KOMBU_PRIORITY_SEP = "\x06\x16"
"""kombu's separator between a queue's name and a priority step (its list per priority, 1-9 here)."""


def worker_queue_keys(name: str) -> list[str]:
    """Every broker key of the queue only worker `name` consumes: its lists (one per priority) and binding."""
    queue = worker_queue(name)
    return [queue, *(f"{queue}{KOMBU_PRIORITY_SEP}{p}" for p in range(1, 10)),
            *(prefix + queue for prefix in KOMBU_BINDING_PREFIXES)]


def fault_marker_key(worker: str, point: str) -> str:
    """Set when fault point `point` is hit on `worker` (tests wait on it)."""
    return f"sdq:debug:{worker}:{point}"


def job_keys(job_id: str) -> list[str]:
    """The five keys of one job in a script's KEYS: hash, items, progress, won, events channel."""
    return [job_key(job_id), items_key(job_id), progress_key(job_id), won_key(job_id), events_channel(job_id)]


def job_script_keys(job_id: str) -> list[str]:
    """KEYS of a script on one job (`lua/common.lua`): the shared six, then the job's five."""
    return [*SHARED_SCRIPT_KEYS, *job_keys(job_id)]


def run_script_keys(job_id: str) -> list[str]:
    """KEYS of a script that asks whether an item's holder is alive (start, claim, finish): the keys of
    `job_script_keys`, then `WORKER_PREFIX` (KEYS[12])."""
    return [*job_script_keys(job_id), WORKER_PREFIX]
