"""Named defaults. Environment variables are read only in `sdq.config`."""
from __future__ import annotations

REDIS_URL = "redis://127.0.0.1:6379/0"
"""Broker and job-state Redis."""

S3_BUCKET = "sdq"
"""Bucket that receives results and uploads."""

SERVER = "http://127.0.0.1:8000"
"""Where clients find the producer."""

# -- job defaults, applied at submit and recorded in the job (so results are reproducible) -----
MODEL = "builtin:tiny-sd"
"""Model of a job that names none."""

PIPELINE = "txt2img"
"""Pipeline of a job that names none."""

PRIORITY = 5
"""Priority of a job that gives none (0-9, 9 most urgent)."""

STEPS = 20
"""Denoising steps per image."""

GUIDANCE_SCALE = 7.5
"""Classifier-free guidance scale."""

WIDTH = 512
"""Image width (for `upscale`, see `UPSCALE_SIDE`)."""

HEIGHT = 512
"""Image height (for `upscale`, see `UPSCALE_SIDE`)."""

SCHEDULER = "pndm"
"""Scheduler (one of `contract.SCHEDULERS`)."""

STRENGTH = 0.8
"""How much img2img and depth2img change the init image (0-1)."""

NOISE_LEVEL = 20
"""Noise the x4 upscaler adds to its input (0-350)."""

UPSCALE_SIDE = 128
"""Input width and height of `upscale` when no size is given (the output is 4x)."""

MAX_ITEMS = 10_000
"""Hard limit on items in one job (`SDQ_MAX_ITEMS`)."""

MAX_PIXELS = 1024 * 1024
"""Producer's hard limit on width*height of one image (`SDQ_MAX_PIXELS`)."""

MAX_SIDE = 2048
"""Largest width or height accepted at submit."""

MAX_STEPS = 150
"""Largest number of denoising steps accepted at submit."""

URL_TTL = 3600
"""Lifetime of presigned GET URLs, seconds (`SDQ_URL_TTL`)."""

VISIBILITY_TIMEOUT = 45
"""Redis broker visibility timeout, seconds (`SDQ_VISIBILITY_TIMEOUT`). Short on purpose: a live
worker's heartbeat keeps the messages it holds fresh (see `workers.fleet.leases`), so only a dead
worker's messages outlive it and go back to the queue."""

LEASE_MIN_REFRESHES = 4
"""A held message's lease is refreshed at least this often per visibility timeout."""

HEARTBEAT_INTERVAL = 10.0
"""Seconds between a worker's capability refreshes."""

HEARTBEAT_TTL = 30
"""Seconds a capability record lives without a refresh: a dead worker is gone within this."""

CHUNK_MAX = 32
"""Most items in one task message."""

CHUNK_SPLIT = 4
"""A task message holds 1/CHUNK_SPLIT of a live worker's fair share of the items still left
(guided self-scheduling: large chunks first, one micro-batch each at the end)."""

PROGRESS_INTERVAL = 0.25
"""Seconds between step-progress writes (and cancel checks) of a running item."""

UPLOAD_THREADS = 4
"""Background PNG encode + upload threads per worker."""

MODEL_CACHE_SIZE = 2
"""Pipelines a worker keeps loaded at once."""

JOB_TTL = 30 * 24 * 3600
"""Seconds job records live in Redis after creation."""

UNFINISHED_JOB_MAX_AGE = JOB_TTL - 24 * 3600
"""Seconds after submit at which a job still unfinished is cancelled by the reaper (a day before its
records expire, so its queued items leave its owner's count with it)."""

MAX_DEVICE_MEMORY_GB = 1024
"""Largest `requires.min_memory_gb` accepted at submit: above any single device's memory (the largest
accelerators hold 288 GB; a CPU worker advertises its RAM), so a larger need could never be served."""

PARKED_RECHECK = 300
"""Seconds between checks of the parked chunks (no live worker could take them) against the fleet,
besides the check each time the fleet changes (`sdq.state.outbox.Outbox.park`)."""

IDEMPOTENCY_TTL = 24 * 3600
"""How long an ``Idempotency-Key`` names the job it made (`sdq.state.idempotency`), seconds."""

IDEMPOTENCY_KEY_MAX = 255
"""Longest ``Idempotency-Key`` accepted, characters."""

RESULT_CACHE_TTL = 30 * 24 * 3600
"""Seconds a result-cache entry lives after it was made or last served (`sdq.state.resultindex`)."""

OOM_HAND_OFFS = 2
"""Most workers an item is handed to after running out of memory in low-memory mode (then it fails)."""

UPSCALE_MAX_BATCH = 1
"""Most images per x4-upscaler call (`sdq worker --upscale-batch`): its VAE decodes in fp32 at 4x the size."""

WEBHOOK_MAX_RETRIES = 8
"""Retries of a webhook delivery after its first attempt (Celery's `max_retries` on the task)."""

WEBHOOK_BACKOFF_MAX = 300
"""Longest pause, seconds, between webhook attempts: Celery's exponential backoff (1, 2, 4, ... s,
each drawn at random below that with full jitter) stops growing here."""

WEBHOOK_DEADLINE = 15.0
"""Hard wall-clock limit, seconds, on one webhook attempt (DNS, connect, TLS, request, status and headers)."""

WEBHOOK_DNS_TIMEOUT = 5.0
"""Longest wait, seconds, for a webhook host's name to resolve (inside `WEBHOOK_DEADLINE`)."""

WEBHOOK_RESPONSE_BYTES = 1024
"""Most bytes of a webhook receiver's answer body read (only of an error answer, for the log)."""

WEBHOOK_THREADS = 8
"""Courier threads per worker that deliver webhooks (off the slot that makes images)."""

WEBHOOK_TENANT_THREADS = 2
"""Most of a worker's courier threads one tenant's deliveries hold at once (its slow DNS included)."""

WEBHOOK_TENANT_BACKLOG = 64
"""Deliveries of one tenant a worker's courier holds waiting; beyond it the task is sent again later."""

WEBHOOK_BACKLOG = 1024
"""Deliveries a worker's courier holds waiting, all tenants together; beyond it the task is sent again later."""

WEBHOOK_REFUSED_DELAY = 10.0
"""Mean pause, seconds, before a delivery the courier had no room for is offered again (not an attempt)."""

FINALIZE_BACKOFF_MAX = 60
"""Longest pause, seconds, between attempts of a job's finalisation (retried until it succeeds)."""

FATAL_EXIT_CODE = 3
"""Exit status of a worker whose device hit a sticky error (a broken CUDA context): restart it."""
# -- hostile input and tenants (see docs/SECURITY.md) ----------------------------------------
MAX_JSON_BODY_BYTES = 16 * 1024 * 1024
"""Largest JSON request body (POST /v1/jobs), bytes."""

MAX_PROMPT_FILE_BYTES = 16 * 1024 * 1024
"""Largest prompt-file request body (text/plain, text/csv, JSONL), bytes."""

MAX_UPLOAD_BODY_BYTES = 16 * 1024 * 1024 + 64 * 1024
"""Largest POST /v1/uploads body (the image plus multipart framing), bytes."""

MAX_OTHER_BODY_BYTES = 64 * 1024
"""Largest body of any request that takes none (GET, DELETE, retry), bytes."""

MAX_JSON_DEPTH = 16
"""Deepest nesting of arrays/objects in a JSON body (the submit schema needs 4)."""

JSON_VALUES_PER_ITEM = 16
"""JSON values a body may hold per allowed item (`SDQ_MAX_ITEMS`), checked before parsing."""

JSON_VALUES_BASE = 4096
"""JSON values every body may hold on top of the per-item budget (params, sweep, requires)."""

MAX_LIST_LENGTH = 100_000
"""Longest `prompts` or `items` list the schema accepts (the item cap usually refuses sooner)."""

PROMPT_FILE_LINES_PER_ITEM = 4
"""Lines (blank and comment lines included) a prompt file may have per allowed item."""

MAX_QUEUED_ITEMS_PER_TENANT = 100_000
"""Most items one tenant may have queued at once (`SDQ_MAX_QUEUED_ITEMS`); beyond it submit answers 429."""

QUEUE_FULL_RETRY_AFTER = 30
"""`Retry-After` seconds sent with a 429 for a full tenant queue."""

UNAVAILABLE_RETRY_AFTER = 5
"""`Retry-After` seconds sent with a 503 (Redis, broker or S3 unreachable)."""

STREAM_MAX_SECONDS = 600
"""Longest life of one event stream (`SDQ_STREAM_MAX_SECONDS`); the client reconnects after it."""

STREAM_RETRY_MS = 2000
"""The `retry:` hint (milliseconds) sent at the start of every event stream."""

PRODUCER_CONNECTIONS = 2000
"""Concurrent connections per producer process (gevent greenlets; streams included)."""

MAX_STREAMS_PER_TENANT = 256
"""Event streams one tenant may hold open at once over all producers (`SDQ_MAX_STREAMS`); beyond it 429."""

STREAMS_FULL_RETRY_AFTER = 10
"""`Retry-After` seconds sent with a 429 for a tenant holding its most event streams."""

UPLOAD_DECODES_PER_TENANT = 2
"""Uploads of one tenant decoded at once over all producers (`SDQ_MAX_UPLOAD_DECODES`); beyond it 429."""

UPLOAD_DECODE_THREADS = 2
"""Native threads per producer process that decode and re-encode uploads (off the gevent loop)."""

UPLOAD_DECODE_HOLD = 120
"""Seconds an upload decode slot is held at most (freed earlier when the decode ends; a crash frees it then)."""

UPLOAD_QUOTA_BYTES = 1024 * 1024 * 1024
"""Upload bytes one tenant may send per UTC day (`SDQ_UPLOAD_QUOTA_BYTES`); beyond it 429 until midnight."""

UPLOADS_BUSY_RETRY_AFTER = 5
"""`Retry-After` seconds sent with a 429 for a tenant whose uploads are all being decoded."""

GRID_MAX_PIXELS = 64 * 1024 * 1024
"""Largest contact sheet (width x height); cells are scaled down to fit."""

GRID_MIN_CELL = 32
"""Smallest cell side of a contact sheet; a grid that would need less is refused at submit."""
# -- reliability (issue 11) ------------------------------------------------------------------
MAX_ATTEMPTS = 3
"""Runs an item gets (worker lost, infrastructure error) before it is failed with its last error
(`SDQ_MAX_ATTEMPTS`); a retry of the job starts counting again."""

REAPER_INTERVAL = 15.0
"""Seconds between reaper sweeps (`SDQ_REAPER_INTERVAL`): items `running` on a worker that left the
fleet go back to the queue. With `HEARTBEAT_TTL` a dead worker's items are queued again within
HEARTBEAT_TTL + REAPER_INTERVAL (45 s)."""

FINALIZE_RESEND = 60.0
"""Seconds after which a job still waiting for finalisation gets its finalize task sent again
(`SDQ_FINALIZE_RESEND`)."""

STALL_TIMEOUT = 600.0
"""Seconds a busy worker may go without progress (a denoising step, a model loaded, an upload
attempt) before it stops renewing its message's lease, so the chunk goes to another worker
(`SDQ_STALL_TIMEOUT`)."""

FINISH_MAX_S = 1800.0
"""Longest a pipeline call may run after its last denoising step (the VAE decode; a video's frames are
decoded, then encoded into its MP4) without counting as a stall: a large decode on a slow device may
outlast `STALL_TIMEOUT`; one longer than this is treated as hung."""

S3_BACKOFF_CAP = 15.0
"""Longest pause, seconds, between sdq's own attempts at an S3 call during an outage
(`SDQ_S3_BACKOFF_CAP`)."""

S3_OUTAGE_LIMIT = 600.0
"""Seconds sdq keeps retrying one S3 call before giving up (`SDQ_S3_OUTAGE_LIMIT`)."""

REDIS_SOCKET_TIMEOUT = 30.0
"""Seconds a worker waits on one Redis reply before treating the connection as broken."""

REDIS_HEALTH_CHECK = 15
"""Seconds of idleness after which a Redis connection is checked with PING before use."""

PASS_ON_DELAY = 2
"""Seconds (a Celery countdown) before a chunk this worker may not run is offered again."""

OUTBOX_LEASE = 30
"""Seconds a message recorded in the outbox (`sdq.state.outbox`) is left to its writer (or to the
sweeper that took it) before any worker's heartbeat publishes it."""

HELD_RECHECK = 15
"""Seconds before a duplicate delivery of items a live worker holds is looked at again (`workers.running.runner`):
if that worker lost them without a trace meanwhile, the copy takes them over."""

CLAIM_POLL = 1.0
"""Seconds between an item's holder asking again for the claim on its result while a live straggler
backup holds it (`workers.running.uploader`)."""

LOST_PASS_ONS = 3
"""Times a worker passes on (to the other live workers) a chunk it gave back after an
infrastructure error, before running it again itself."""

CLI_PROGRESS_INTERVAL = 5.0
"""Seconds between the plain progress lines `sdq submit --wait`, `sdq wait` and `sdq demo` print
when their output is not a terminal (a file, a pipe, a CI log) (`SDQ_PROGRESS_INTERVAL`)."""

WARM_ADAPTERS = 8
"""Adapters (e.g. LoRA) a worker keeps loaded per model after their jobs (least recently used unloaded first)."""

PREVIEW_INTERVAL = 0.5
"""Seconds between two previews of one item unless the job asks otherwise (`params.preview.interval`)."""

PREVIEW_INTERVAL_MIN = 0.25
"""Fewest seconds between two previews of one item, whatever the job asks."""

PREVIEW_MAX_PER_ITEM = 40
"""Most previews one item sends, however long it runs."""

PREVIEW_SIDE = 192
"""Longest side of a preview image, in pixels."""

PREVIEW_MAX_BYTES = 24 * 1024
"""Largest preview JPEG (before base64); a larger one is made smaller."""

STREAM_PREVIEW_INTERVAL = 0.2
"""Seconds at least between two previews one event stream forwards (a job of many items running on many
workers at once does not flood a client); the previews in between are dropped."""
