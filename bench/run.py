"""`python -m bench.run` (`make bench`): every benchmark in turn, then results.json and RESULTS.md.

Each benchmark starts and stops its own private stack. A benchmark that fails is recorded as
failed (with its error) and the others still run; the exit status is then 1.
"""
from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path

from bench import report
from bench.common import clean_environment, default_models_dir, ensure_models, machine, parser

ORDER = ("overhead", "submit", "status", "scaleout", "batching", "coldstart", "events", "previews", "step_cache", "gpu",
         "sim", "realsize")
"""Benchmarks, in the order they run (the module `bench.<name>` has `run(opts) -> dict`)."""

HERE = Path(__file__).resolve().parent


def previous(path: Path, opts) -> dict | None:
    """The results an `--only` run updates: the last full run's, when it used the same sizes."""
    if not path.exists():
        return None
    doc = json.loads(path.read_text())
    if doc.get("quick") != opts.quick or doc.get("device_option") != opts.device:
        return None
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(doc.get("finished_at", 0)))
    for result in doc["benchmarks"].values():
        result.setdefault("ran", {"at": when, "commit": doc["machine"].get("commit")})
    return doc


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; write `results.json` and `RESULTS.md` into `--out`."""
    p: argparse.ArgumentParser = parser(__doc__.splitlines()[0])
    p.add_argument("--only", default=None, help=f"comma-separated subset of: {', '.join(ORDER)}")
    p.add_argument("--out", default=None,
                   help="directory for results.json and RESULTS.md (default: bench/, or bench/.quick/ with --quick)")
    opts = p.parse_args(argv)
    # `gpu` (one worker against plain diffusers on the same device) is for GPU hosts: by default it
    # runs only with a --device other than cpu.
    names = ([n.strip() for n in opts.only.split(",")] if opts.only
             else [n for n in ORDER if n != "gpu" or opts.device != "cpu"])
    unknown = sorted(set(names) - set(ORDER))
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(ORDER)}")
    out_dir = Path(opts.out) if opts.out else (HERE / ".quick" if opts.quick else HERE)
    out_dir.mkdir(parents=True, exist_ok=True)

    # 1. The machine, and the built-in model generated once, before anything is timed.
    models_dir = Path(opts.models_dir) if opts.models_dir else default_models_dir()
    models_dir.mkdir(parents=True, exist_ok=True)
    clean_environment(models_dir)
    started = time.time()
    doc = {"quick": opts.quick, "device_option": opts.device, "started_at": started,
           "machine": machine(), "benchmarks": {}, "durations_s": {}}
    earlier = previous(out_dir / "results.json", opts) if opts.only else None
    if earlier is not None:  # `--only`: the other benchmarks keep their last results (each says when it ran)
        doc["benchmarks"], doc["durations_s"] = earlier["benchmarks"], earlier.get("durations_s", {})
    print(f"bench: models in {models_dir} (ready in {ensure_models(models_dir):.1f} s)", file=sys.stderr)

    # 2. Each benchmark on its own private stack.
    failed = False
    for name in names:
        t0 = time.time()
        print(f"bench: {name} ...", file=sys.stderr, flush=True)
        try:
            doc["benchmarks"][name] = importlib.import_module(f"bench.{name}").run(opts)
            doc["benchmarks"][name]["ran"] = {"at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                              "commit": doc["machine"].get("commit")}
        except Exception as exc:  # noqa: BLE001 - one failure must not lose the other results
            traceback.print_exc()
            doc["benchmarks"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            failed = True
        doc["durations_s"][name] = round(time.time() - t0, 1)
        print(f"bench: {name} done in {doc['durations_s'][name]:.0f} s", file=sys.stderr, flush=True)

    # 3. Results.
    workers = [w for res in doc["benchmarks"].values() for w in res.get("workers", [])]
    doc["machine"]["device"] = machine(workers).get("device")
    doc["finished_at"] = time.time()
    doc["duration_s"] = round(doc["finished_at"] - started, 1)
    (out_dir / "results.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out_dir / "RESULTS.md").write_text(report.render(doc))
    print(f"bench: wrote {out_dir / 'results.json'} and {out_dir / 'RESULTS.md'} in {doc['duration_s']:.0f} s",
          file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
