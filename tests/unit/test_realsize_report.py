"""The real-size bench section: each CPU's latest run is kept beside this one's, and the target checks
the path `--cpu-path fastest` picks against eager fp32."""
from __future__ import annotations

from bench.realsize_report import other_cpu_tables, other_cpus, render

INTEL = {"cpu": "Intel(R) Xeon(R) Processor", "flags": ["amx_bf16", "avx512_bf16"], "native_bf16": True}
AMD = {"cpu": "AMD EPYC", "flags": ["avx2"], "native_bf16": False}


def _run(cpu: dict, paths: dict[str, float], picked: str) -> dict:
    out = {"cpu": cpu, "load_avg_at_start": [1.0], "load_avg_at_end": [1.0], "size": 256, "steps": 2,
           "eager": {"threads": 2, "fastest": {"path": picked, "reason": "probe", "probe_ms": {}},
                     "paths": {k: {"s_per_step": v, "rounds_s_per_step": [v], "fixed_s": 10.0, "image_diff": 0.0}
                               for k, v in paths.items()}},
           "compile": {"model": "sd15-shaped", "dtype": "fp32", "backend": "compile", "size": 256, "steps": 2,
                       "low_memory": False, "error": "not run (--cases)"},
           "memory": []}
    return {**out, **render(out)}


def test_each_cpus_latest_run_is_kept_beside_this_ones():
    intel = _run(INTEL, {"fp32/eager": 14.1, "bf16/channels_last": 4.0}, "bf16/channels_last")
    amd = _run(AMD, {"fp32/eager": 37.4, "fp32/channels_last": 38.5}, "fp32/eager")
    kept = other_cpus(intel, AMD)
    assert [r["cpu"] for r in kept] == [INTEL]
    amd["other_cpus"] = kept
    assert other_cpus(amd, AMD) == kept  # a new run here replaces this CPU's, keeps the others
    assert [r["cpu"] for r in other_cpus(amd, INTEL)] == [AMD]  # back on the Intel: the AMD run stays
    (table,) = other_cpu_tables(kept)
    assert "Intel" in table["title"] and "amx_bf16" in table["title"] and table["table"] == intel["table"]
    assert other_cpus(None, AMD) == [] and other_cpus({"error": "x"}, AMD) == []


def test_the_target_checks_the_path_fastest_picks_not_only_the_best_one():
    slower = _run(AMD, {"fp32/eager": 37.4, "fp32/channels_last": 38.5}, "fp32/channels_last")
    picked = next(t for t in slower["targets"] if "picks" in t["name"])
    assert (picked["target"], picked["value"], picked["met"]) == (">= 1.0", 0.97, False)
    native = _run(INTEL, {"fp32/eager": 14.1, "bf16/channels_last": 4.0}, "bf16/channels_last")
    assert all(t["target"] == ">= 1.8" and t["met"] for t in native["targets"])
    assert "not run" not in str(native["table"])  # a part left out with --cases is not a row
