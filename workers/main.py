"""`sdq worker`: one process bound to one device, consuming the queues it can serve."""
from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass

from celery.signals import worker_ready

from sdq import contract, defaults, fleet
from sdq.config import Settings
from sdq.redisconn import connect
from sdq.jobstore import JobStore
from sdq.lifecycle import finalize_job
from sdq.queue import make_celery
from storage import ResultStore

log = logging.getLogger("sdq.worker")


@dataclass
class WorkerOptions:
    """Command-line options of `sdq worker`."""

    device: str = "auto"
    dtype: str = "auto"
    models: list[str] | None = None
    max_pixels: int | None = None
    max_batch: int | None = None
    threads: int | None = None
    name: str | None = None
    low_memory: bool = False
    force_dtype: bool = False
    preload: list[str] | None = None
    debug_oom_pixels: int | None = None
    debug_fatal_after: int | None = None
    safety_checker: bool = True
    upscale_batch: int | None = None
    loglevel: str = "INFO"


def default_max_batch(kind: str) -> int:
    """Micro-batch size when not given: 4 on a GPU; 1 on a CPU, where batching gains nothing."""
    return 4 if kind == "gpu" else 1


def run_worker(settings: Settings, opts: WorkerOptions) -> int:
    """Start the worker and block until it is stopped."""
    # 1. Device first: refuse a bad device/dtype before anything is loaded.
    from workers.capability import Capability, Heartbeat, worker_models
    from workers.device import select_device
    from workers.leases import Leases

    device = select_device(opts.device, opts.dtype, force=opts.force_dtype)
    import torch

    if opts.threads:
        torch.set_num_threads(opts.threads)
    models = worker_models(opts.models, settings.models)
    max_pixels = opts.max_pixels or settings.max_pixels
    max_batch = opts.max_batch or default_max_batch(device.kind)
    name = opts.name or f"{device.kind}-{socket.gethostname()}-{os.getpid()}"
    queues = contract.queues_for_worker(device.device, device.dtype, max_pixels) + [contract.CONTROL_QUEUE]

    # 2. Services and the warm pipeline cache.
    from workers.pipelines import PipelineCache, warm_imports
    from workers.runner import Runner
    from workers.tasks import register
    from workers.uploader import Uploader
    from workers.webhook import deliver_webhook

    client = connect(settings.redis_url)
    jobs = JobStore(client)
    store = ResultStore.from_settings(settings)
    store.ensure_bucket()
    celery = make_celery(settings.redis_url, settings.visibility_timeout)
    uploader = Uploader(store, jobs, lambda job_id: finalize_job(jobs, store, job_id, celery),
                        threads=defaults.UPLOAD_THREADS)
    cache = PipelineCache(settings.models_dir, device, defaults.MODEL_CACHE_SIZE,
                          allow_ckpt=settings.allow_ckpt, low_memory=opts.low_memory,
                          safety_checker=opts.safety_checker,
                          upscale_batch=opts.upscale_batch or defaults.UPSCALE_MAX_BATCH, store=store)
    runner = Runner(name, device, cache, jobs, store, uploader, max_batch)
    runner.debug_oom_pixels = opts.debug_oom_pixels
    runner.debug_fatal_after = opts.debug_fatal_after
    runner.models = models
    runner.publish = lambda chunk: celery.send_task(contract.TASK_GENERATE, kwargs={"chunk": chunk},
                                                    queue=chunk["queue"], priority=chunk.get("priority"))
    warm_imports()
    for model in opts.preload or []:
        cache.load(model)
    register(celery, runner, on_webhook=lambda task, job_id: deliver_webhook(task, jobs, settings, job_id))

    # 3. Join the fleet, then consume.
    capability = Capability(name, device, models, max_pixels, max_batch, queues, opts.threads, runner)
    leases = Leases(client)
    leases.connect()
    interval = min(defaults.HEARTBEAT_INTERVAL, settings.visibility_timeout / defaults.LEASE_MIN_REFRESHES)
    heartbeat = Heartbeat(client, capability, interval, leases)
    runner.announce = lambda: fleet.publish(client, capability.record())

    def join_fleet(**_: object) -> None:
        """Publish the record once Celery consumes: a worker in the fleet is one that takes work."""
        heartbeat.beat()
        if not heartbeat.is_alive():  # the signal comes again after a broker reconnect
            heartbeat.start()

    worker_ready.connect(join_fleet, weak=False)
    log.info("worker %s on %s (%s, %s) consuming %s", name, device.device, device.name, device.dtype, queues)
    try:
        celery.worker_main([
            "worker", "--pool=solo", "--concurrency=1", f"--hostname={name}@%h",
            f"--queues={','.join(queues)}", f"--loglevel={opts.loglevel}", "--without-gossip",
            "--without-mingle",
        ])
    finally:
        heartbeat.stop()
        uploader.shutdown()
    return 0
