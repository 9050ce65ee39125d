"""10. Real size: seconds per step, images per hour and peak RSS of the full-size built-ins per CPU path.

`builtin:sd15-shaped` (SD 1.5's shapes, random weights) on each CPU path of `workers.loading.cpu_paths` (dtype and
backend, as a worker holds them). The eager paths run in one process, interleaved round by round (A B C D
A B C D), each converted from one fp32 master copy, and each keeps its fastest round: on a shared machine
other processes' load only adds time. `compile` runs in its own process (its warm-up is the compilation).
Seconds per step: the fastest interval between step callbacks (load from other processes only adds time);
the rest of the call (text encoder, the first UNet call's warm-up, VAE decode) is the fixed cost. Images per
hour: 3600 / (fixed + 20 x seconds per step), one process with all threads. Image diff: mean absolute pixel
difference (0-255) from eager fp32, same seed. The paths process also runs `--cpu-path fastest`'s probe, so
the section shows which path a worker on this CPU would pick and how that path did at full size.
Memory cases are fresh processes (their peak RSS is their own): one DDIM step at the model's own size, with
and without low-memory mode (VAE slicing and tiling, what `--low-memory` switches on), the peak split by
phase (load, call) into allocated memory and mapped weight-file pages (`bench.rss`), beside the need the
SD family advertises. The bench process itself stays torch-free. Each CPU's latest run stays in the
section (`other_cpus`): which path pays depends on the CPU.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import clean_environment, default_models_dir, main_for
from bench.realsize_report import other_cpu_tables, other_cpus, render

STEPS = {"full": 2, "quick": 1}
"""Timed denoising steps per call (PNDM: steps + 1 UNet calls; each ~2-4 s at 256x256 on 2 cores)."""

ROUNDS = {"full": 2, "quick": 1}
"""Interleaved rounds over the eager paths."""

SPEED_SIZE = 256
"""Image size of the speed cases (sd15-shaped at 256x256: ~3.7 s per step in eager fp32 on 2 threads)."""

COMPILE_TIMEOUT_S = 900
"""A `compile` case that has not finished by then is reported as not measured."""

CASE_TIMEOUT_S = 1200
"""Any other case."""

PROMPT = "a lighthouse on a cliff at dusk"

RESULTS = Path(__file__).resolve().parent / "results.json"
"""Where the other CPUs' latest runs are read from (the section keeps them beside this one's)."""

CASES = ("paths", "compile", "memory")
"""Parts of the benchmark (`--cases`: a subset, for a bounded run on a shared machine)."""


def eager_paths(native_bf16: bool) -> list[tuple[str, str]]:
    """The eager CPU paths timed side by side: fp32 eager first (the reference), bf16 only where native."""
    paths = [("fp32", "eager"), ("fp32", "channels_last")]
    return paths + ([("bf16", "eager"), ("bf16", "channels_last")] if native_bf16 else [])


def memory_cases(native_bf16: bool, quick: bool) -> list[dict[str, Any]]:
    """Peak RSS cases, each a fresh process: one step at the model's own size, normal and low-memory
    mode, in fp32 and bf16. Where bf16 is emulated (a step at 512x512 would take an hour), the bf16
    case is the load alone: its peak (fp32 files cast to bf16) is what the memory advertisement counts."""
    models = [("sd15-shaped", 512)] + ([] if quick else [("sd2-768-shaped", 768)])
    cases = []
    for model, size in models:
        cases += [(model, size, "fp32", False, 1), (model, size, "fp32", True, 1),
                  (model, size, "bf16", False, 1 if native_bf16 else 0)]
    return [{"kind": "one", "model": m, "dtype": dt, "backend": "eager", "size": size, "steps": steps,
             "low_memory": low} for m, size, dt, low, steps in cases]


# -- in a child process --------------------------------------------------------------------------

def _load(model: str, dtype: str):
    import diffusers
    import torch

    from sdq.sources import builtin_path
    from workers.builtins.registry import ensure_builtin

    models_dir = Path(os.environ["SDQ_MODELS_DIR"])
    ensure_builtin(models_dir, model)
    pipe = diffusers.DiffusionPipeline.from_pretrained(
        builtin_path(models_dir, model), dtype=torch.bfloat16 if dtype == "bf16" else torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _timed_call(pipe, size: int, steps: int) -> dict[str, Any]:
    """One image: seconds per step (the fastest interval between step callbacks: the first UNet call,
    before the first callback, takes the warm-up, and other processes' load only adds time), the fixed
    seconds (the rest of the call: text encoder, first-call warm-up, VAE decode), the image."""
    import torch

    stamps: list[float] = []

    def on_step(p, i, t, kwargs):
        stamps.append(time.perf_counter())
        return kwargs

    t0 = time.perf_counter()
    with torch.inference_mode():
        image = pipe(PROMPT, height=size, width=size, num_inference_steps=steps, output_type="np",
                     generator=torch.Generator().manual_seed(7), callback_on_step_end=on_step).images[0]
    call_s = time.perf_counter() - t0
    gaps = sorted(b - a for a, b in zip(stamps, stamps[1:])) or [call_s]
    per_step = gaps[0]
    return {"call_s": round(call_s, 2), "s_per_step": round(per_step, 3),
            "fixed_s": round(max(0.0, call_s - per_step * len(stamps)), 2), "image": image}


def _peak_rss_gb() -> float:
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)


def child_paths(spec: dict[str, Any]) -> dict[str, Any]:
    """The eager paths in one process, interleaved: an fp32 master pipeline, each other path a converted
    copy of its modules (as a worker on that path holds them), every path's fastest round kept."""
    import copy

    import numpy as np
    import torch

    from workers.loading.cpu_paths import apply_cpu_path, probe_ms, resolve_cpu_path

    chosen = resolve_cpu_path("auto", "fastest")  # what `--cpu-path fastest` picks on this CPU (its probe)
    emulated = {} if chosen.bf16_native else {f"bf16/{be}": probe_ms("bf16", be, reps=1)
                                              for be in ("eager", "channels_last")}
    pipe = _load(spec["model"], "fp32")
    master = {name: getattr(pipe, name) for name in ("unet", "text_encoder", "vae")}
    out: dict[str, dict[str, Any]] = {}
    ref = None
    for _ in range(spec["rounds"]):
        for dtype, backend in spec["paths"]:
            key = f"{dtype}/{backend}"
            for name, module in master.items():  # this path's modules: the master's, or a converted copy
                setattr(pipe, name, module if key == "fp32/eager" else
                        copy.deepcopy(module).to(torch.bfloat16 if dtype == "bf16" else torch.float32))
            apply_cpu_path(pipe, backend)
            got = _timed_call(pipe, spec["size"], spec["steps"])
            image = got.pop("image") * 255
            if ref is None:
                ref = image
            got["image_diff"] = round(float(np.abs(image - ref).mean()), 2)
            got["unet_dtype"] = str(pipe.unet.dtype).removeprefix("torch.")
            rounds = out.get(key, {}).get("rounds_s_per_step", []) + [got["s_per_step"]]
            if key not in out or got["s_per_step"] < out[key]["s_per_step"]:
                out[key] = got
            out[key]["rounds_s_per_step"] = rounds
            for name, module in master.items():
                setattr(pipe, name, module)
    return {"paths": out, "threads": torch.get_num_threads(), "peak_rss_gb": _peak_rss_gb(),
            "fastest": {"path": f"{chosen.dtype}/{chosen.backend}", "reason": chosen.reason,
                        "probe_ms": {**chosen.probe_ms, **emulated}}}


def child_one(spec: dict[str, Any]) -> dict[str, Any]:
    """One path in a fresh process: its load, warm-up (for `compile`, the compilation), a timed image
    (none when `steps` is 0: a load-only memory case) and the process's peak RSS, per phase."""
    import diffusers
    import torch

    from bench.rss import RssSampler
    from workers.loading.cpu_paths import apply_cpu_path

    rss = RssSampler()
    t0 = time.perf_counter()
    rss.phase("load")
    pipe = _load(spec["model"], spec["dtype"])
    apply_cpu_path(pipe, spec["backend"])
    if spec["low_memory"]:
        pipe.vae.enable_slicing()
        pipe.vae.enable_tiling()
    if spec["steps"] <= 1:  # a memory case: DDIM, one UNet call (PNDM makes two)
        pipe.scheduler = diffusers.DDIMScheduler.from_config(pipe.scheduler.config)
    load_s = time.perf_counter() - t0
    rss.phase("warm-up")
    t0 = time.perf_counter()
    if spec["backend"] == "compile":
        _timed_call(pipe, spec["size"], 1)  # the compilation, then a warm call
    warmup_s = time.perf_counter() - t0
    rss.phase("call")
    got = _timed_call(pipe, spec["size"], spec["steps"]) if spec["steps"] else {"call_s": 0, "image": None}
    got.pop("image")
    return {**got, "load_s": round(load_s, 2), "warmup_s": round(warmup_s, 2), "peak_rss_gb": _peak_rss_gb(),
            "rss_gb": rss.stop(), "unet_dtype": str(pipe.unet.dtype).removeprefix("torch."),
            "threads": torch.get_num_threads()}


# -- the benchmark -------------------------------------------------------------------------------

def run_case(spec: dict[str, Any]) -> dict[str, Any]:
    """One child process; an error or timeout is recorded, not raised."""
    spec = {**spec, "threads": os.cpu_count() or 1}
    timeout = COMPILE_TIMEOUT_S if spec.get("backend") == "compile" else CASE_TIMEOUT_S
    name = " ".join(f"{k}={v}" for k, v in spec.items() if k not in ("paths", "threads", "kind"))
    print(f"bench realsize: {name} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    try:
        out = subprocess.run([sys.executable, "-m", "bench.realsize", "--child", json.dumps(spec)],
                             capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"not finished within {timeout} s"}
    if out.returncode != 0:
        return {**spec, "error": (out.stderr.strip().splitlines() or ["?"])[-1][:200]}
    print(f"bench realsize: done in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return {**spec, **json.loads(out.stdout.strip().splitlines()[-1])}


def cpu_facts() -> dict[str, Any]:
    """The CPU model and the flags that decide a path (read without torch)."""
    cpuinfo = Path("/proc/cpuinfo")
    text = cpuinfo.read_text(errors="replace") if cpuinfo.exists() else ""
    flags: set[str] = set()
    model = "?"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features") and not flags:
            flags = set(value.split())
        if key.strip().lower() == "model name" and model == "?":
            model = value.strip()
    shown = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2", "bf16", "sve")
    return {"cpu": model, "flags": sorted(f for f in flags if f in shown),
            "native_bf16": any(f in flags for f in ("amx_bf16", "avx512_bf16", "bf16"))}


def run(opts) -> dict[str, Any]:
    """The eager paths side by side, `compile` in its own process, then the memory cases."""
    models_dir = Path(opts.models_dir) if opts.models_dir else default_models_dir()
    models_dir.mkdir(parents=True, exist_ok=True)
    clean_environment(models_dir)  # the children find the full-size built-ins there (generated once)
    cpu = cpu_facts()
    mode = "quick" if opts.quick else "full"
    out: dict[str, Any] = {"cpu": cpu, "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
                           "size": SPEED_SIZE, "steps": STEPS[mode]}
    cases = set((getattr(opts, "cases", None) or ",".join(CASES)).split(","))
    skipped = {"error": "not run (--cases)"}
    out["eager"] = run_case({"kind": "paths", "model": "sd15-shaped", "size": SPEED_SIZE, "steps": STEPS[mode],
                             "rounds": ROUNDS[mode], "paths": eager_paths(cpu["native_bf16"])}
                            ) if "paths" in cases else skipped
    compiled = {"kind": "one", "model": "sd15-shaped", "dtype": "bf16" if cpu["native_bf16"] else "fp32",
                "backend": "compile", "size": SPEED_SIZE, "steps": STEPS[mode], "low_memory": False}
    out["compile"] = run_case(compiled) if "compile" in cases else {**compiled, **skipped}
    out["memory"] = [run_case(c) for c in memory_cases(cpu["native_bf16"], opts.quick)] if "memory" in cases else []
    out["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    return with_other_cpus({**out, **render(out)}, RESULTS)


def with_other_cpus(result: dict[str, Any], results: Path) -> dict[str, Any]:
    """`result` with the latest real-size run of every other CPU kept from `results` (a results.json)."""
    earlier = None
    if results.exists():
        earlier = json.loads(results.read_text()).get("benchmarks", {}).get("realsize")
    result["other_cpus"] = other_cpus(earlier, result["cpu"])
    result["appendix"] = other_cpu_tables(result["other_cpus"])
    return result


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":
        spec = json.loads(sys.argv[2])
        print(json.dumps((child_paths if spec["kind"] == "paths" else child_one)(spec)))
        raise SystemExit(0)
    raise SystemExit(main_for("realsize", run, __doc__.splitlines()[0], lambda p: p.add_argument(
        "--cases", default=",".join(CASES), help=f"comma-separated subset of {', '.join(CASES)} (default: all)")))
