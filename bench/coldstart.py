"""6. Warm vs cold: the first item on a fresh worker started without `--preload`, vs the next ones.

Two cases, each a fresh `sdq worker` process: an empty model cache (the first item also generates
the built-in model), and a model cache that already holds it (the first item loads it from disk).
The job is submitted once the worker joined the fleet; with one item per task message, each item's
latency is its claim to its image stored (`finished_at - started_at`); the first also includes
the time from the POST to its claim.
"""
from __future__ import annotations

import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.common import bench_stack, main_for

SIZES = {"full": {"n": 8, "params": {"width": 256, "height": 256, "steps": 20}},
         "quick": {"n": 4, "params": {"width": 128, "height": 128, "steps": 10}}}
SEED = 6000


def one_case(bench, name: str, n: int, params: dict[str, Any], env: dict[str, str] | None) -> dict[str, Any]:
    """A fresh worker without preload; the timed job; the worker stopped."""
    joined_s = bench.add_workers([name], "--threads", "1", preload=False, env=env)
    job = bench.run_job(n, params)
    bench.stop_workers()
    items = sorted(job["items"], key=lambda it: it.finished_at)
    first, rest = items[0], items[1:]
    latency = [it.finished_at - it.started_at for it in rest]
    return {"worker_start_to_joined_s": round(joined_s, 3),
            "first_item_s": round(first.finished_at - job["t0"], 3),
            "first_item_load_s": first.timings["load"], "first_item_generate_s": first.timings["generate"],
            "next_items_s": {"median": round(statistics.median(latency), 3), "max": round(max(latency), 3)},
            "next_generate_s_median": round(statistics.median(it.timings["generate"] for it in rest), 3),
            "cold_over_warm": round((first.finished_at - job["t0"]) / statistics.median(latency), 2)}


def run(opts) -> dict[str, Any]:
    """Empty model cache, then a populated one."""
    cfg = SIZES["quick" if opts.quick else "full"]
    n, params = cfg["n"], {**cfg["params"], "seed": SEED}
    cases = {}
    with tempfile.TemporaryDirectory(prefix="sdq-bench-cold-models-") as empty, bench_stack("coldstart", opts) as bench:
        cases["empty model cache"] = one_case(bench, "cold1", n, params, {"SDQ_MODELS_DIR": str(Path(empty))})
        cases["model on disk"] = one_case(bench, "cold2", n, params, None)
    out = {"n": n, "params": cfg["params"], "cases": cases}
    out["table"] = [["case", "worker start to joined s", "first item s (POST to stored)", "of which load s",
                     "first generate s", "next items s (median)", "next generate s", "first / next"]]
    for label, c in cases.items():
        out["table"].append([label, c["worker_start_to_joined_s"], c["first_item_s"], c["first_item_load_s"],
                             c["first_item_generate_s"], c["next_items_s"]["median"], c["next_generate_s_median"],
                             c["cold_over_warm"]])
    return out


if __name__ == "__main__":
    raise SystemExit(main_for("coldstart", run, __doc__.splitlines()[0]))
