"""Named defaults. Environment variables are read only in `sdq.config`."""
from __future__ import annotations

REDIS_URL = "redis://127.0.0.1:6379/0"
"""Broker and job-state Redis."""

S3_BUCKET = "sdq"
"""Bucket that receives results and uploads."""

SERVER = "http://127.0.0.1:8000"
"""Where clients find the producer."""

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
worker's heartbeat keeps the messages it holds fresh (see `workers.leases`), so only a dead
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

OOM_HAND_OFFS = 2
"""Most workers an item is handed to after running out of memory in low-memory mode (then it fails)."""
HAND_OFF_PAUSE = 0.5
"""Seconds a worker waits before publishing again a handed-off chunk that came back to it."""

UPSCALE_MAX_BATCH = 1
"""Most images per x4-upscaler call (`sdq worker --upscale-batch`): its VAE decodes in fp32 at 4x the size."""

FATAL_EXIT_CODE = 3
"""Exit status of a worker whose device hit a sticky error (a broken CUDA context): restart it."""
