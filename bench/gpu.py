"""8. One worker against plain diffusers on the same device: for a GPU owner (`--device cuda`).

One `sdq worker --max-batch B` makes N images of one job; one plain warm diffusers process makes
the same N images (same prompts, seeds, size, steps) in calls of B images, on the same device in
the same dtype (the worker's `--dtype auto`: fp16 on CUDA). Both get an untimed warm-up first.
images/s = N / wall time; the ratio is what the queue costs (or gains) against diffusers alone.
On a CPU it runs at CPU sizes, as a check; `python -m bench.run` runs it only with `--device`
other than `cpu` (or when named in `--only`).
"""
from __future__ import annotations

from typing import Any

from bench.bare import BarePool
from bench.common import bench_stack, default_models_dir, main_for

SIZES = {
    "gpu": {"n": 64, "params": {"width": 512, "height": 512, "steps": 20}, "batch": 4},
    "cpu": {"n": 24, "params": {"width": 64, "height": 64, "steps": 4}, "batch": 4},
    "quick": {"n": 8, "params": {"width": 64, "height": 64, "steps": 4}, "batch": 2},
}
"""Job sizes: `gpu` for CUDA devices; `cpu` and `quick` only check that the benchmark runs."""
SEED = 8000


def add_args(p) -> None:
    """`--batch`, `--n`: override the images per call and the number of images."""
    p.add_argument("--batch", type=int, default=None, help="images per call of both sides (default 4)")
    p.add_argument("--n", type=int, default=None, help="images per run (default 64 on a GPU)")


def run(opts) -> dict[str, Any]:
    """The bare process first, then the worker (never both on the device at once)."""
    from pathlib import Path

    cfg = SIZES["quick" if opts.quick else ("cpu" if opts.device == "cpu" else "gpu")]
    n = getattr(opts, "n", None) or cfg["n"]
    batch = getattr(opts, "batch", None) or cfg["batch"]
    params = dict(cfg["params"])
    models_dir = Path(opts.models_dir) if opts.models_dir else default_models_dir()
    threads = 1 if opts.device == "cpu" else 2  # torch CPU threads: what the GPU side needs besides the device
    with BarePool(1, threads, opts.device, models_dir) as pool:
        bare = pool.run(n, {**params, "batch": batch}, SEED)
    with bench_stack("gpu", opts) as bench:
        bench.add_workers(["g0"], "--max-batch", str(batch), "--threads", str(threads))
        bench.warm_up(params, per_worker=batch)
        job = bench.run_job(n, {**params, "seed": SEED})
        workers = bench.worker_records()
    bare_ips, queue_ips = n / bare["wall_s"], n / job["wall_s"]
    used = sorted({it.batch or 1 for it in job["items"]})
    gen = sum(it.timings["generate"] for it in job["items"]) / n
    out = {"n": n, "params": params, "batch": batch, "device": bare["device"], "workers": workers,
           "bare": {"wall_s": round(bare["wall_s"], 3), "images_per_s": round(bare_ips, 3),
                    "generate_ms_per_image": round(1000 * sum(bare["generate_s"]) / n, 2)},
           "queue": {"wall_s": round(job["wall_s"], 3), "images_per_s": round(queue_ips, 3),
                     "generate_ms_per_image": round(gen * 1000, 2), "batch_sizes_used": used},
           "ratio": round(queue_ips / bare_ips, 3)}
    out["table"] = [["side", "images", "images per call", "wall s", "images/s", "generate ms/image"],
                    ["plain diffusers", n, batch, out["bare"]["wall_s"], out["bare"]["images_per_s"],
                     out["bare"]["generate_ms_per_image"]],
                    ["sdq worker", n, used, out["queue"]["wall_s"], out["queue"]["images_per_s"],
                     out["queue"]["generate_ms_per_image"]],
                    ["sdq / diffusers", "", "", "", out["ratio"], ""]]
    out["findings"] = [f"device: {bare['device']}; {params['width']}x{params['height']}, {params['steps']} steps"]
    return out


if __name__ == "__main__":
    raise SystemExit(main_for("gpu", run, __doc__.splitlines()[0], add_args))
