"""1. Queue overhead against the bare limit, in two regimes (long and short items).

The queue: producer + two `sdq worker --threads 1` processes (models preloaded, warmed up) make
N images of one job; wall time runs from just before the POST to the job's `finished_at` (every
image is in the bucket by then). The bare limit: the same N generations (same prompts, seeds,
size, steps) in two plain warm diffusers processes with one torch thread each, no queue.

Per-item overhead is broken down from the item records workers write (`started_at`, `finished_at`,
`timings` {load, generate, encode, upload}), Redis' own command statistics over the run (status
updates, server side) and a client-side timing of the worker's status calls on a scratch job.
"""
from __future__ import annotations

import statistics
import time
import uuid
from collections import defaultdict
from typing import Any

from bench.bare import BarePool
from bench.common import (BUCKET, Bench, bench_stack, command_delta, cpu_delta, cpu_snapshot, dist, main_for,
                          redis_command_stats, target)
from sdq import defaults
from sdq.records import Item, Job
from sdq.state import keys

WORKERS = 2
THREADS = 1

REGIMES = {
    "long": {"n": 48, "params": {"width": 256, "height": 256, "steps": 20}, "repeats": 3},
    "short": {"n": 240, "params": {"width": 64, "height": 64, "steps": 4}, "repeats": 3},
}
QUICK = {
    "long": {"n": 8, "params": {"width": 128, "height": 128, "steps": 10}, "repeats": 1},
    "short": {"n": 60, "params": {"width": 64, "height": 64, "steps": 4}, "repeats": 1},
}
SEED = 1000


def _ms(x: float) -> float:
    return round(x * 1000, 2)


def breakdown(run: dict[str, Any], bare_generate: list[float]) -> dict[str, Any]:
    """Where the queue's time per item goes, from the item records of one queue run."""
    items, n = run["items"], len(run["items"])
    t = {k: [(it.timings or {}).get(k, 0.0) for it in items] for k in ("load", "generate", "encode", "upload")}
    started = [it.started_at for it in items]
    # Per worker: time from its first claim to its last stored image, less its model time.
    by_worker: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        by_worker[it.worker].append(it)
    off_model = 0.0
    for its in by_worker.values():
        span = max(i.finished_at for i in its) - min(i.started_at for i in its)
        off_model += span - sum(i.timings.get("load", 0) + i.timings.get("generate", 0) for i in its)
    chunks = len({(it.worker, it.started_at) for it in items})
    bare_gen = statistics.fmean(bare_generate)
    return {
        "enqueue_ms_total": _ms(run["submit_s"]),
        "enqueue_ms_per_item": _ms(run["submit_s"] / n),
        "wait_first_claim_ms": _ms(min(started) - run["t0"]),
        "wait_ms": dist([s - run["t0"] for s in started], 1000),
        "load_ms_mean": _ms(statistics.fmean(t["load"])),
        "generate_ms_mean": _ms(statistics.fmean(t["generate"])),
        "generate_ms_bare_mean": _ms(bare_gen),
        "generate_excess_ms": _ms(statistics.fmean(t["generate"]) - bare_gen),
        "encode_ms_mean": _ms(statistics.fmean(t["encode"])),
        "upload_ms_mean": _ms(statistics.fmean(t["upload"])),
        "worker_off_model_ms_per_item": _ms(off_model / n),
        "chunks": chunks,
        "items_per_worker": {w: len(its) for w, its in sorted(by_worker.items())},
        "batch_sizes": sorted({it.batch or 1 for it in items}),
    }


def status_call_cost(bench: Bench, n: int = 240, chunk: int = 8) -> dict[str, float]:
    """Client-side round trip of the worker's status calls (claim a chunk, progress, finish an item)
    on a scratch job in the same Redis, in ms."""
    jobs = bench.jobs
    job_id = "bench" + uuid.uuid4().hex[:12]
    items = [Item(index=i, prompt="x", seed=i, steps=4) for i in range(n)]
    jobs.create(Job(id=job_id, owner="bench", state="queued", created_at=time.time(), n_items=n,
                    requires={"device": "any"}), items)
    gens = {it.index: it.gen for it in jobs.all_items(job_id)}
    try:
        claim, progress, finish = [], [], []
        for start in range(0, n, chunk):
            t = time.perf_counter()
            jobs.start_items(job_id, list(range(start, min(n, start + chunk))), "bench", "cpu", "fp32")
            claim.append(time.perf_counter() - t)
        for i in range(n):
            t = time.perf_counter()
            jobs.add_progress(job_id, [i], 1, 1, 4)
            progress.append(time.perf_counter() - t)
            t = time.perf_counter()
            jobs.finish_item(job_id, i, "succeeded", {"worker": "bench", "key": f"jobs/{job_id}/{i:05d}.png",
                                                      "timings": {"generate": 0.1}}, 1, worker="bench", gen=gens[i])
            finish.append(time.perf_counter() - t)
        return {"claim_chunk_ms_p50": round(statistics.median(claim) * 1000, 3), "chunk": chunk,
                "progress_ms_p50": round(statistics.median(progress) * 1000, 3),
                "finish_ms_p50": round(statistics.median(finish) * 1000, 3)}
    finally:
        bench.r.delete(keys.job_key(job_id), keys.items_key(job_id), keys.owner_jobs_key("bench"))
        bench.r.zrem(keys.ACTIVE_KEY, job_id)


def store_path_cost(bench: Bench, n: int = 200) -> dict[str, Any]:
    """The worker's own CPU per stored image, step by step, as its upload thread spends it (thread CPU
    time, in this process, against the benchmark's Redis and S3): PNG encode with the infotext, the
    S3 PUT as a worker's store makes it (direct, `storage.direct`, on a plain-HTTP endpoint) and through
    boto3's `put_object` beside it, the state update (finish script); and the S3 server's CPU per PUT. The
    thumbnail (WebP encode + a second PUT) is timed apart: only images larger than the thumbnail side make one."""
    import numpy as np
    from PIL import Image

    from storage.s3 import ResultStore
    from workers.running.thumbs import encode_thumb
    from workers.running.uploader import encode_png

    store = ResultStore(BUCKET, bench.stack.env["SDQ_S3_ENDPOINT_URL"], outage_limit=60.0)  # as a worker's
    plain = ResultStore(BUCKET, bench.stack.env["SDQ_S3_ENDPOINT_URL"])  # no outage limit: boto3's put_object
    rng = np.random.default_rng(0)
    small = Image.fromarray((rng.random((64, 64, 3)) * 255).astype("uint8"))
    large = Image.fromarray((rng.random((512, 512, 3)) * 255).astype("uint8"))
    infotext = "a prompt of some length, as users write them\nSteps: 4, Sampler: PNDM, " + "x" * 300
    job_id = "bench" + uuid.uuid4().hex[:12]
    items = [Item(index=i, prompt="x", seed=i, steps=4) for i in range(n)]
    bench.jobs.create(Job(id=job_id, owner="bench", state="queued", created_at=time.time(), n_items=n,
                          requires={"device": "any"}), items)
    bench.jobs.start_items(job_id, list(range(n)), "bench", "cpu", "fp32")
    gens = {it.index: it.gen for it in bench.jobs.all_items(job_id)}
    data = encode_png(small, infotext)
    thumb = encode_thumb(large)

    def per_call(fn) -> float:
        fn(0)
        t0 = time.thread_time()
        for i in range(1, n):
            fn(i)
        return _ms((time.thread_time() - t0) / (n - 1))

    try:
        s3_0 = cpu_snapshot()
        out = {
            "encode_png_64_ms": per_call(lambda i: encode_png(small, infotext)),
            "put_ms": per_call(lambda i: store.put(f"bench/{job_id}/{i:05d}.png", data, content_type="image/png")),
        }
        s3_cpu = cpu_delta(s3_0, cpu_snapshot())["cpu_s"].get("s3", 0.0)
        out["put_path"] = "direct" if store.direct is not None else "boto3"
        out["put_boto3_ms"] = per_call(lambda i: plain.put(f"bench/{job_id}/b{i:05d}.png", data,
                                                           content_type="image/png"))
        out["finish_ms"] = per_call(lambda i: bench.jobs.finish_item(
            job_id, i, "succeeded", {"worker": "bench", "key": f"jobs/{job_id}/{i:05d}.png",
                                     "timings": {"generate": 0.1}}, 1, worker="bench", gen=gens[i]))
        out["small_image_total_ms"] = round(out["encode_png_64_ms"] + out["put_ms"] + out["finish_ms"], 2)
        out["s3_server_ms_per_put"] = round(s3_cpu * 1000 / n, 2)
        out["thumb_encode_512_ms"] = per_call(lambda i: encode_thumb(large))
        out["thumb_put_ms"] = per_call(lambda i: store.put(f"bench/{job_id}/t{i:05d}.webp", thumb,
                                                           content_type="image/webp"))
        out["bytes_png_64"] = len(data)
        return out
    finally:
        bench.r.delete(keys.job_key(job_id), keys.items_key(job_id), keys.owner_jobs_key("bench"))
        bench.r.zrem(keys.ACTIVE_KEY, job_id)


def store_path_finding(cost: dict[str, Any]) -> str:
    """What one stored small image costs the worker, and what the thumbnail it no longer makes cost."""
    thumb = round(cost["thumb_encode_512_ms"] + cost["thumb_put_ms"], 2)
    return (f"worker CPU per stored 64x64 image (upload thread, thread CPU time): PNG encode "
            f"{cost['encode_png_64_ms']} ms + S3 PUT ({cost.get('put_path', 'boto3')}) {cost['put_ms']} ms + state "
            f"update {cost['finish_ms']} ms = {cost['small_image_total_ms']} ms"
            + (f" (boto3's put_object of the same object, side by side: {cost['put_boto3_ms']} ms)"
               if "put_boto3_ms" in cost else "")
            + f"; the S3 server spends {cost['s3_server_ms_per_put']} ms per PUT. A thumbnail costs another {thumb} ms "
            f"(WebP encode {cost['thumb_encode_512_ms']} + PUT {cost['thumb_put_ms']}) plus a second server PUT: "
            f"images that fit in 256x256 no longer make one (they are their own thumbnail)")


def run_regime(bench: Bench, pool: BarePool, cfg: dict[str, Any]) -> dict[str, Any]:
    """Bare and queue runs of one regime, `repeats` pairs, each pair in the opposite order of the
    one before (so a slow drift of the shared machine does not always favour the same side)."""
    params = {**cfg["params"], "seed": SEED}
    n = cfg["n"]
    bench.warm_up(params)
    runs = []
    for repeat in range(cfg["repeats"]):
        sides: dict[str, Any] = {}
        for side in (("bare", "queue") if repeat % 2 == 0 else ("queue", "bare")):
            if side == "bare":
                pool.warm(params, SEED)  # before the CPU snapshot: both sides count exactly n images
            cpu0, cmds0 = cpu_snapshot(), redis_command_stats(bench.r)
            result = pool.run(n, params, SEED, warm=False) if side == "bare" else bench.run_job(n, params)
            sides[side] = {"result": result, **cpu_delta(cpu0, cpu_snapshot())}
            if side == "queue":
                sides[side]["redis"] = command_delta(cmds0, redis_command_stats(bench.r), n)
        bare, queue = sides["bare"]["result"], sides["queue"]["result"]
        runs.append({"order": "bare first" if repeat % 2 == 0 else "queue first",
                     "bare_wall_s": round(bare["wall_s"], 3), "queue_wall_s": round(queue["wall_s"], 3),
                     "ratio": round(queue["wall_s"] / bare["wall_s"], 4),
                     "overhead_ms_per_item": _ms((queue["wall_s"] - bare["wall_s"]) * WORKERS / n),
                     "breakdown": breakdown(queue, bare["generate_s"]), "redis_per_item": sides["queue"]["redis"],
                     "cpu_s": {"bare": sides["bare"]["cpu_s"], "queue": sides["queue"]["cpu_s"]},
                     "steal": {"bare": sides["bare"].get("steal"), "queue": sides["queue"].get("steal")},
                     "bare_device": bare["device"]})
    best = sorted(runs, key=lambda r: r["ratio"])[len(runs) // 2]  # the median run
    return {"n": n, "params": cfg["params"], "workers": WORKERS, "threads": THREADS,
            "ratio": best["ratio"], "ratios": [r["ratio"] for r in runs],
            "images_per_s_queue": round(n / best["queue_wall_s"], 2),
            "images_per_s_bare": round(n / best["bare_wall_s"], 2), "median_run": best, "runs": runs}


def run(opts) -> dict[str, Any]:
    """The regimes asked for (both by default) on one stack."""
    regimes = {name: cfg for name, cfg in (QUICK if opts.quick else REGIMES).items()
               if name in getattr(opts, "regimes", "long,short").split(",")}  # `bench.run` passes none
    with bench_stack("overhead", opts) as bench:
        bench.add_workers([f"w{i + 1}" for i in range(WORKERS)], "--threads", str(THREADS))
        workers = bench.worker_records()
        out: dict[str, Any] = {"workers": workers, "regimes": {}}
        with BarePool(WORKERS, THREADS, bench.device, bench.models_dir) as pool:
            for name, cfg in regimes.items():
                out["regimes"][name] = run_regime(bench, pool, cfg)
        out["status_calls"] = status_call_cost(bench)
        out["store_path"] = store_path_cost(bench)
    out["progress_interval_s"] = defaults.PROGRESS_INTERVAL
    goals = {"short": ("short-item wall ratio (queue / bare)", 1.15, 1.10),
             "long": ("long-item wall ratio (queue / bare)", 1.05, None)}
    out["targets"] = [target(goals[name][0], reg["ratio"], goals[name][1], aim=goals[name][2])
                      for name, reg in sorted(out["regimes"].items(), reverse=True)]
    out["table"] = table(out)
    out["findings"] = [cpu_finding(name, reg) for name, reg in out["regimes"].items()]
    out["findings"] += [cpu_budget_finding(name, reg) for name, reg in out["regimes"].items()]
    out["findings"].append(store_path_finding(out["store_path"]))
    return out


def cpu_budget_finding(name: str, reg: dict[str, Any]) -> str:
    """The wall ratio a CPU-bound box predicts from the extra CPU the queue run used per item
    (its workers beyond the bare processes, plus the S3 endpoint, Redis and the producer)."""
    run, n = reg["median_run"], reg["n"]
    q, b = run["cpu_s"]["queue"], run["cpu_s"]["bare"]
    bare = b.get("bare", 0.0) / n
    parts = {"workers": q.get("workers", 0.0) / n - bare, **{role: q.get(role, 0.0) / n
                                                             for role in ("s3", "redis", "producer")}}
    extra = sum(parts.values())
    if bare <= 0:
        return f"{name}: no CPU figures for the bare run"
    detail = ", ".join(f"{role} {_ms(v)}" for role, v in parts.items())
    return (f"{name}: both cores are busy in both runs, so the wall ratio follows the CPU spent per image. The "
            f"queue run spent {_ms(extra)} ms more CPU per image than the bare run's {_ms(bare)} ms ({detail}; ms), "
            f"which alone predicts a ratio of {1 + extra / bare:.3f} (measured {run['ratio']}). On a real "
            f"deployment the S3 endpoint and Redis run on other machines; the worker's own share is the "
            f"upload client (botocore), PNG encoding, Celery and the status scripts")


def cpu_finding(name: str, reg: dict[str, Any]) -> str:
    """Where the CPU went in the median run of a regime: workers vs bare processes, the services, steal."""
    run, n = reg["median_run"], reg["n"]
    q, b = run["cpu_s"]["queue"], run["cpu_s"]["bare"]
    services = ", ".join(f"{role} {_ms(q.get(role, 0.0) / n)}" for role in ("s3", "redis", "producer"))
    steal = run["steal"]
    stolen = (f"; CPU stolen by the hypervisor: {steal['bare']:.1%} of the bare run, {steal['queue']:.1%} of the "
              f"queue run" if steal["bare"] is not None and steal["queue"] is not None else "")
    return (f"{name} (median run, {run['order']}): CPU per item, workers {_ms(q.get('workers', 0.0) / n)} ms vs "
            f"bare processes {_ms(b.get('bare', 0.0) / n)} ms; services besides the workers (ms/item): "
            f"{services} — all on the same {WORKERS} cores as the workers{stolen}")


def table(out: dict[str, Any]) -> list[list[Any]]:
    """Rows for RESULTS.md."""
    rows = [["regime", "items", "bare s", "queue s", "ratio", "overhead ms/item", "enqueue ms/item",
             "first claim ms", "load ms", "generate ms (bare)", "encode ms*", "upload ms*", "status scripts, Redis us/item",
             "worker off-model ms/item"]]
    for name, reg in out["regimes"].items():
        run, b = reg["median_run"], reg["median_run"]["breakdown"]
        p = reg["params"]
        status_us = sum(v["server_us_per_item"] for k, v in run["redis_per_item"].items() if k in ("evalsha", "eval"))
        rows.append([f"{name}: {p['width']}x{p['height']}, {p['steps']} steps", reg["n"], run["bare_wall_s"],
                     run["queue_wall_s"], f"{reg['ratio']:.3f} ({', '.join(f'{r:.3f}' for r in reg['ratios'])})",
                     run["overhead_ms_per_item"], b["enqueue_ms_per_item"], b["wait_first_claim_ms"],
                     b["load_ms_mean"], f"{b['generate_ms_mean']} ({b['generate_ms_bare_mean']})",
                     b["encode_ms_mean"], b["upload_ms_mean"], round(status_us, 1),
                     b["worker_off_model_ms_per_item"]])
    return rows


if __name__ == "__main__":
    raise SystemExit(main_for("overhead", run, __doc__.splitlines()[0], lambda p: p.add_argument(
        "--regimes", default="long,short", help="which regimes to run, comma-separated (a side-by-side comparison "
                                                "of the short items alone: --regimes short)")))
