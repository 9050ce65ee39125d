"""5. Micro-batching: images/s of one worker at `--max-batch 1` and at `--max-batch 4`.

The same job (items sharing all parameters, so the worker may batch them) runs on a fresh worker
started with each setting; each gets a warm-up job first. The batch sizes the worker actually used
are read back from the item records.
"""
from __future__ import annotations

from typing import Any

from bench.common import bench_stack, main_for

SIZES = {"full": {"n": 160, "params": {"width": 64, "height": 64, "steps": 4}},
         "quick": {"n": 40, "params": {"width": 64, "height": 64, "steps": 4}}}
BATCHES = (1, 4)
SEED = 5000


def add_args(p) -> None:
    """`--threads`: torch threads of the one worker."""
    p.add_argument("--threads", type=int, default=1, help="torch threads of the worker (default 1)")


def run(opts) -> dict[str, Any]:
    """One worker per max-batch setting, one after the other."""
    cfg = SIZES["quick" if opts.quick else "full"]
    n, params = cfg["n"], {**cfg["params"], "seed": SEED}
    threads = getattr(opts, "threads", 1)
    runs = {}
    with bench_stack("batching", opts) as bench:
        for batch in BATCHES:
            bench.add_workers([f"b{batch}"], "--threads", str(threads), "--max-batch", str(batch))
            bench.warm_up(params, per_worker=batch)
            job = bench.run_job(n, params)
            used = sorted({it.batch or 1 for it in job["items"]})
            gen = sum(it.timings["generate"] for it in job["items"]) / n
            runs[batch] = {"wall_s": round(job["wall_s"], 3), "images_per_s": round(n / job["wall_s"], 3),
                           "batch_sizes_used": used, "generate_ms_per_image": round(gen * 1000, 2)}
            workers = bench.worker_records()
            bench.stop_workers()
    gain = runs[4]["images_per_s"] / runs[1]["images_per_s"]
    out = {"n": n, "params": cfg["params"], "threads": threads, "runs": runs, "gain": round(gain, 3),
           "workers": workers}
    out["table"] = [["--max-batch", "items", "wall s", "images/s", "generate ms/image", "batch sizes used"]]
    out["table"] += [[b, n, r["wall_s"], r["images_per_s"], r["generate_ms_per_image"], r["batch_sizes_used"]]
                     for b, r in runs.items()]
    out["table"].append(["gain 4 vs 1", "", "", round(gain, 3), "", ""])
    used = runs[4]["batch_sizes_used"]
    out["findings"] = []
    if max(used) < 4 or len(used) > 1:
        out["findings"].append(
            f"at --max-batch 4 the worker ran batches of {used}: a micro-batch never spans two task messages, "
            f"and a job's last chunk holds whatever is left when the item count is not a multiple of the "
            f"workers' max batch")
    return out


if __name__ == "__main__":
    raise SystemExit(main_for("batching", run, __doc__.splitlines()[0], add_args))
