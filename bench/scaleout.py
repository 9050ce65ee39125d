"""4. Scale-out: throughput of one job on 1 worker, then on 2 workers, each `--threads 1`.

Throughput is items / (POST .. the job's `finished_at`). Each worker count gets a warm-up job first,
so every worker has made an image with these parameters before the timed job.
"""
from __future__ import annotations

from typing import Any

from bench.common import bench_stack, main_for, target

SIZES = {"full": {"n": 64, "params": {"width": 256, "height": 256, "steps": 8}},
         "quick": {"n": 12, "params": {"width": 128, "height": 128, "steps": 6}}}
SEED = 4000


def run(opts) -> dict[str, Any]:
    """1 worker, then 2."""
    cfg = SIZES["quick" if opts.quick else "full"]
    n, params = cfg["n"], {**cfg["params"], "seed": SEED}
    runs = {}
    with bench_stack("scaleout", opts) as bench:
        for count in (1, 2):
            bench.add_workers([f"s{i + 1}" for i in range(len(bench.worker_names), count)], "--threads", "1")
            bench.warm_up(params)
            job = bench.run_job(n, params)
            per_worker: dict[str, int] = {}
            for it in job["items"]:
                per_worker[it.worker] = per_worker.get(it.worker, 0) + 1
            runs[count] = {"wall_s": round(job["wall_s"], 3), "images_per_s": round(n / job["wall_s"], 3),
                           "items_per_worker": per_worker}
        workers = bench.worker_records()
    speedup = runs[2]["images_per_s"] / runs[1]["images_per_s"]
    out = {"n": n, "params": cfg["params"], "runs": runs, "speedup": round(speedup, 3), "workers": workers}
    out["table"] = [["workers x threads", "items", "wall s", "images/s", "items per worker"]]
    out["table"] += [[f"{c} x 1", n, r["wall_s"], r["images_per_s"], r["items_per_worker"]] for c, r in runs.items()]
    out["table"].append(["speed-up 2 vs 1", "", "", round(speedup, 3), ""])
    out["targets"] = [target("throughput 2 workers / 1 worker", speedup, 1.8, op=">=")]
    return out


if __name__ == "__main__":
    raise SystemExit(main_for("scaleout", run, __doc__.splitlines()[0]))
