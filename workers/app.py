"""Building a worker: every part once, fully constructed (cog's `setup()`), then serving.

`build_worker` turns the options into a `Worker`: device, services (Redis, Celery, S3), the
pipeline cache, uploader, router, runner, capability, heartbeat and leases, each given what it
uses. `Worker.serve` joins the fleet and consumes until stopped. `workers.main` only calls these.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
from dataclasses import dataclass, field

import redis
from celery import Celery
from celery.signals import worker_ready

from sdq import contract, defaults
from sdq.memory import load_cast
from sdq.celery_app import make_celery, request_finalize, send_chunk
from sdq.config import Settings
from sdq.records import Chunk
from sdq.state.faults import FaultRules
from sdq.state.leases import UnackedIndex
from sdq.state.redisconn import connect
from sdq.state.resultindex import ResultIndex
from sdq.state.store import JobStore
from storage import ResultStore
from workers.running.backups import Backups
from workers.fleet.capability import Activity, Capability, Heartbeat, worker_models
from workers.finishing.courier import Courier
from workers.loading.device import Device, resolve_offload, select_device, set_threads
from workers.testing.faults import Faults
from workers.finishing.finalize import finalize_job
from workers.fleet.idlewatch import IdleWatch
from workers.fleet.leases import Leases
from workers.running.parts import Outputs, Presence, RunOptions
from workers import options as worker_options
from workers.loading.pipelines import PipelineCache, warm_imports
from workers.running.preview import PreviewDecoders, decoder_loader
from workers.fleet.reaper import Reaper
from workers.running.resultcache import CachedResults
from workers.running.routing import Router
from workers.running.runner import Runner
from workers.running.speedometer import Speedometer
from workers.tasks import register
from workers.running.uploader import Uploader
from workers.finishing.webhook_delivery import deliver_webhook

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
    debug_memory_gb: float | None = None  # testing aid: the device memory a CPU worker reports (it may offload)
    offload: str = "auto"  # `--offload`: auto, never, model, group (`workers.loading.device.resolve_offload`)
    debug_fatal_after: int | None = None
    safety_checker: bool = True
    upscale_batch: int | None = None
    loglevel: str = "INFO"
    # A CPU worker's path (`workers.loading.cpu_paths`): eager, channels_last, compile or fastest (measured at start).
    cpu_path: str = "eager"
    # Preview decoders by latent channels (`--preview-decoder 4=madebyollin/taesd`), over the built-in tiny ones.
    preview_decoders: dict[int, str] | None = None
    # Request options' values for jobs that give none (`--option-default NAME=JSON`), by option name.
    option_defaults: dict[str, object] | None = None


@dataclass
class OptionParts:
    """What the request options' worker hooks get of the worker at its start (`workers.options.setup`)."""

    jobs: JobStore
    previews: PreviewDecoders
    option_defaults: dict[str, object] = field(default_factory=dict)


def cpuinfo_override() -> str | None:
    """The text of `SDQ_CPUINFO` (a file standing in for /proc/cpuinfo: tests of CPU-path choice), or None."""
    path = os.environ.get("SDQ_CPUINFO")
    if not path:
        return None
    with open(path, encoding="utf-8") as f:
        return f.read()


def default_max_batch(kind: str) -> int:
    """Micro-batch size when not given: 4 on a GPU; 1 on a CPU, where batching gains nothing."""
    return 4 if kind == "gpu" else 1


def redis_client(url: str) -> redis.Redis:
    """A Redis client (or Sentinel-followed primary) that notices a dead connection (socket timeout,
    health checks)."""
    return connect(url, socket_timeout=defaults.REDIS_SOCKET_TIMEOUT, socket_connect_timeout=10,
                   health_check_interval=defaults.REDIS_HEALTH_CHECK, socket_keepalive=True)


@dataclass
class Worker:
    """A worker's parts, built once by `build_worker`."""

    name: str
    device: Device
    queues: list[str]
    celery: Celery
    leases: Leases
    heartbeat: Heartbeat
    uploader: Uploader
    cache: PipelineCache
    runner: Runner
    lookout: IdleWatch | None = None  # straggler backups while idle (None: `SDQ_SCHEDULING=count`)
    loglevel: str = "INFO"
    courier: Courier | None = None

    def serve(self) -> int:
        """Join the fleet once Celery consumes, and consume until stopped."""
        self.leases.connect()

        def join_fleet(**_: object) -> None:
            """Publish the record once Celery consumes: a worker in the fleet is one that takes work."""
            self.heartbeat.beat()
            if not self.heartbeat.is_alive():  # the signal comes again after a broker reconnect
                self.heartbeat.start()
            if self.lookout is not None and self.lookout.ident is None:  # once: it outlives broker reconnects
                self.lookout.start()

        worker_ready.connect(join_fleet, weak=False)
        log.info("worker %s on %s (%s, %s, %s) consuming %s", self.name, self.device.device, self.device.name,
                 self.device.dtype, self.device.backend, self.queues)
        try:
            self.celery.worker_main([
                "worker", "--pool=solo", "--concurrency=1", f"--hostname={self.name}@%h",
                f"--queues={','.join([*self.queues, contract.worker_queue(self.name)])}",
                f"--loglevel={self.loglevel}", "--without-gossip", "--without-mingle",
            ])
        finally:
            if self.lookout is not None:
                self.lookout.stop()
            self.heartbeat.stop()
            self.uploader.shutdown()
            if self.courier is not None:
                self.courier.shutdown()
        return 0


def build_worker(settings: Settings, opts: WorkerOptions) -> Worker:
    """Build every part of a worker once, fully constructed; nothing consumes yet."""
    # 1. Device first: refuse a bad device/dtype before anything is loaded.
    set_threads(opts.threads)  # before the device: `--cpu-path fastest` measures with the worker's threads
    device = select_device(opts.device, opts.dtype, force=opts.force_dtype, cpu_path=opts.cpu_path,
                           cpuinfo=cpuinfo_override())
    if opts.debug_memory_gb is not None:
        device = dataclasses.replace(device, simulated_gb=opts.debug_memory_gb)
    offload = resolve_offload(opts.offload, device)
    models = worker_models(opts.models, settings.models)
    max_pixels = opts.max_pixels or settings.max_pixels
    max_batch = opts.max_batch or default_max_batch(device.kind)
    name = opts.name or f"{device.kind}-{socket.gethostname()}-{os.getpid()}"
    queues = contract.queues_for_worker(device.device, device.dtype, max_pixels) + [contract.CONTROL_QUEUE]

    # 2. Services: Redis, the broker, the result store.
    client = redis_client(settings.redis_url)
    jobs = JobStore(client, settings.outbox_lease)
    celery = make_celery(settings.redis_url, settings.visibility_timeout)
    leases = Leases(UnackedIndex(client), stall_timeout=settings.stall_timeout)
    store = ResultStore.from_settings(settings, outage_limit=settings.s3_outage_limit,
                                      backoff_cap=settings.s3_backoff_cap, on_retry=leases.progress)
    store.ensure_bucket()

    def finalize(job_id: str) -> None:
        request_finalize(celery, job_id)

    def publish(chunk: Chunk) -> None:  # to its queue, or to one worker's own (`to`: a straggler backup)
        send_chunk(celery, chunk)

    # 3. Every part of the worker, each given what it uses.
    faults = Faults.from_env(FaultRules(client), name)
    uploader = Uploader(store, jobs, finalize, threads=defaults.UPLOAD_THREADS, faults=faults,
                        progress=leases.progress)
    cache = PipelineCache(settings.models_dir, device, defaults.MODEL_CACHE_SIZE,
                          allow_ckpt=settings.allow_ckpt, low_memory=opts.low_memory,
                          safety_checker=opts.safety_checker,
                          upscale_batch=opts.upscale_batch or defaults.UPSCALE_MAX_BATCH, store=store)
    worker_options.setup(OptionParts(jobs, PreviewDecoders(
        decoder_loader(cache.fetcher, device.device, device.torch_dtype), opts.preview_decoders),
        dict(opts.option_defaults or {})))
    speedometer = Speedometer(device.kind)
    by_speed = settings.scheduling == "speed"
    router = Router(name, models, max_pixels, device.memory_gb()[0], speedometer if by_speed else None,
                    dtype=device.dtype, cast_from=load_cast(device.device, device.dtype), offload=offload)
    activity = Activity(speed=speedometer)
    backups = Backups(name, jobs, router, speedometer, lambda: activity.current is None, publish,
                      queues) if by_speed else None
    capability = Capability(name, device, models, max_pixels, max_batch, queues, opts.threads, activity,
                            cache.loaded, cache.loaded_adapters, cache.quantized, offload, cache.offloaded_models,
                            lambda: worker_options.held_gb(cache.entries()))
    reaper = Reaper(jobs, celery, finalize, settings.reaper_interval, settings.finalize_resend)
    interval = min(settings.heartbeat_interval, settings.visibility_timeout / defaults.LEASE_MIN_REFRESHES)
    heartbeat = Heartbeat(jobs, capability, interval, leases, reaper, settings.heartbeat_ttl, publish)
    lookout = IdleWatch(jobs, backups, lambda: activity.current is None, quiet_s=interval) if backups else None
    results = CachedResults(ResultIndex(client), cache.fetcher.hasher, store, jobs, name, device.device, device.dtype,
                            opts.safety_checker, finalize, digest=cache.weights_digest,
                            low_memory=cache.low_memory_for)  # the loaded weights' digest
    runner = Runner(name, device, cache,
                    Outputs(jobs, store, uploader, finalize, results),
                    Presence(router, publish, leases, activity, heartbeat.publish, heartbeat.publish_by),
                    RunOptions(faults, max_batch, settings.max_attempts, opts.debug_oom_pixels,
                               opts.debug_fatal_after))

    # 4. Load once: imports warmed, models preloaded; the tasks bound to this runner.
    warm_imports()
    for model in opts.preload or []:
        cache.load(model)
    courier = Courier(celery, lambda job_id, attempt: deliver_webhook(jobs, settings, job_id, attempt),
                      tenant_of=lambda job_id: getattr(jobs.get(job_id), "owner", ""))
    register(celery, runner, on_webhook=courier.submit,
             on_finalize=lambda job_id: finalize_job(jobs, store, job_id, celery))
    return Worker(name, device, queues, celery, leases, heartbeat, uploader, cache, runner, lookout, opts.loglevel,
                  courier)
