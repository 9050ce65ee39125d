"""11. Previews: generate ms per image with and without `params.preview`, side by side on one worker.

One warm worker makes the same job twice per round, with previews at the default interval and without (the
other way round in the next round), and the generate time of every item is read back from its record: what the
previews' decodes on the device thread cost, the JPEG encoding and publishing being on a thread aside.
"""
from __future__ import annotations

import statistics
from typing import Any

from bench.common import bench_stack, main_for
from sdq import defaults

SIZES = {"full": {"n": 12, "rounds": 3, "params": {"width": 256, "height": 256, "steps": 20}},
         "quick": {"n": 4, "rounds": 2, "params": {"width": 256, "height": 256, "steps": 20}}}
SEED = 7000


def _generate_ms(job: dict[str, Any]) -> float:
    return statistics.mean(it.timings["generate"] for it in job["items"]) * 1000


def run(opts) -> dict[str, Any]:
    """Alternate the two jobs on one worker, `rounds` times each."""
    cfg = SIZES["quick" if opts.quick else "full"]
    n, params = cfg["n"], {**cfg["params"], "seed": SEED}
    on = {**params, "preview": {"interval": defaults.PREVIEW_INTERVAL}}
    ms: dict[str, list[float]] = {"without": [], "with": []}
    with bench_stack("previews", opts) as bench:
        bench.add_workers(["p1"], "--threads", "1")
        bench.warm_up(params, per_worker=1)
        for r in range(cfg["rounds"]):
            order = (("without", params), ("with", on)) if r % 2 == 0 else (("with", on), ("without", params))
            for label, p in order:
                ms[label].append(_generate_ms(bench.run_job(n, p)))
        bench.stop_workers()
    med = {k: statistics.median(v) for k, v in ms.items()}
    ratio = med["with"] / med["without"]
    out = {"n": n, "params": cfg["params"], "interval_s": defaults.PREVIEW_INTERVAL, "rounds": cfg["rounds"],
           "generate_ms": {k: [round(x, 1) for x in v] for k, v in ms.items()}, "ratio": round(ratio, 3)}
    out["table"] = [["previews", "generate ms/image (median of rounds)", "each round"]]
    out["table"] += [[k, round(med[k], 1), ", ".join(f"{x:.1f}" for x in ms[k])] for k in ("without", "with")]
    out["table"].append(["ratio with / without", round(ratio, 3), ""])
    out["findings"] = [f"previews every {defaults.PREVIEW_INTERVAL} s (the default) cost {100 * (ratio - 1):+.1f}% generate "
                       f"time per {cfg['params']['width']}x{cfg['params']['height']} image on one CPU thread"]
    return out


if __name__ == "__main__":
    raise SystemExit(main_for("previews", run, __doc__.splitlines()[0]))
