"""The real-size section's table, targets and findings, and the runs kept from other CPUs.

A CPU decides which paths pay (AMX/avx512_bf16 or avx2 only), so each CPU's latest run stays in the
section beside this machine's: `bench/results.json` keeps them under `other_cpus`, keyed by model and flags.
"""
from __future__ import annotations

from typing import Any

from sdq.families import FAMILIES
from sdq.memory import load_cast

IMAGE_STEPS = 20
"""Steps of the image 'images per hour' counts."""

MEMORY_FAMILY = "sd"
"""The family whose advertised need the memory cases are compared with (both full-size built-ins are SD)."""


def cpu_key(cpu: dict[str, Any]) -> str:
    """What tells two CPUs apart here: the model name and the flags that decide a path."""
    return f"{cpu.get('cpu')} [{', '.join(cpu.get('flags', []))}]"


def other_cpus(earlier: dict[str, Any] | None, cpu: dict[str, Any]) -> list[dict[str, Any]]:
    """The latest run of every other CPU: the earlier result itself (when its CPU differs) and the
    runs it kept, without this CPU's."""
    if not earlier or "cpu" not in earlier:
        return []
    kept = {cpu_key(r["cpu"]): r for r in earlier.get("other_cpus", [])}
    kept[cpu_key(earlier["cpu"])] = {k: v for k, v in earlier.items() if k != "other_cpus"}
    kept.pop(cpu_key(cpu), None)
    return list(kept.values())


def _per_hour(c: dict[str, Any]) -> float:
    return round(3600 / (c["fixed_s"] + IMAGE_STEPS * c["s_per_step"]), 1)


def _rss(phase: dict[str, float] | None) -> str:
    if not phase:
        return "-"
    return f"{phase['VmRSS']} (anon {phase.get('RssAnon', '?')} + files {phase.get('RssFile', '?')})"


def advertised_gb(c: dict[str, Any]) -> float:
    """The SD family's advertised need for a memory case: its dtype and size, on a CPU."""
    dtype = c["dtype"]
    return FAMILIES[MEMORY_FAMILY].memory.need_gb(dtype, c["size"] ** 2, load_cast("cpu", dtype))


def render(out: dict[str, Any]) -> dict[str, Any]:
    """The table, targets and findings of RESULTS.md."""
    cpu, eager = out["cpu"], out["eager"]
    paths = eager.get("paths", {})
    base = paths.get("fp32/eager", {}).get("s_per_step")
    size = f"sd15-shaped, {out['size']}"
    table = [["model, size", "path (dtype / backend)", "s/step", "vs fp32 eager", f"images/hour ({IMAGE_STEPS} steps)",
              "warm-up s", "peak RSS GB", "low-memory", "image diff vs fp32 (0-255)"]]
    if "error" in eager and "--cases" not in eager["error"]:
        table.append([size, "eager paths", "-", "-", "-", "-", "-", "off", f"not measured: {eager['error']}"])
    for key, c in paths.items():
        table.append([size, key.replace("/", " / "), f"{c['s_per_step']} (rounds: {c['rounds_s_per_step']})",
                      f"{base / c['s_per_step']:.2f}x", _per_hour(c), "-", "-", "off", c["image_diff"]])
    for c in [out["compile"], *out["memory"]]:
        label, path, low = f"{c['model']}, {c['size']}", f"{c['dtype']} / {c['backend']}", c["low_memory"]
        low = "on" if low else "off"
        if "error" in c:
            if "--cases" not in c["error"]:
                table.append([label, path, "-", "-", "-", "-", "-", low, f"not measured: {c['error']}"])
        elif c["steps"] <= 1:  # a memory case: one call (or the load alone), no step timing
            what = f"(one-step call {c['call_s']} s)" if c["steps"] else "(load only: bf16 is emulated here)"
            table.append([label, path, what, "-", "-", "-", c["peak_rss_gb"], low, "-"])
        else:
            vs = f"{base / c['s_per_step']:.2f}x" if base else "-"
            table.append([label, path, c["s_per_step"], vs, _per_hour(c), c["warmup_s"], c["peak_rss_gb"], low, "-"])
    return {"table": table, "targets": _targets(out, base), "findings": _findings(out)}


def _targets(out: dict[str, Any], base: float | None) -> list[dict[str, Any]]:
    """The fastest path timed, and the path `--cpu-path fastest` picks, each against eager fp32:
    >= 1.8 on a CPU with native bf16, never slower (>= 1.0) elsewhere."""
    cpu, paths, compiled = out["cpu"], out["eager"].get("paths", {}), out["compile"]
    timed = {k: c["s_per_step"] for k, c in paths.items()}
    if "error" not in compiled:
        timed[f"{compiled['dtype']}/compile"] = compiled["s_per_step"]
    if not base or len(timed) < 2:
        return []
    need = 1.8 if cpu["native_bf16"] else 1.0
    best = min(timed, key=timed.get)
    gain = round(base / timed[best], 2)
    targets = [{"name": f"fastest CPU path / eager fp32, s/step ({best})", "target": f">= {need}",
                "value": gain, "met": gain >= need}]
    picked = out["eager"].get("fastest", {}).get("path")
    if picked in timed:
        gain = round(base / timed[picked], 2)
        targets.append({"name": f"the path `--cpu-path fastest` picks / eager fp32, s/step ({picked})",
                        "target": f">= {need}", "value": gain, "met": gain >= need})
    return targets


def _findings(out: dict[str, Any]) -> list[str]:
    cpu, eager = out["cpu"], out["eager"]
    lines = [f"CPU: {cpu['cpu']}, flags {', '.join(cpu['flags']) or 'none of note'}; native bf16: "
             f"{'yes' if cpu['native_bf16'] else 'no (bf16 not timed: it would be emulated)'}; "
             f"{eager.get('threads', '?')} torch threads; load average {out['load_avg_at_start']} at start, "
             f"{out['load_avg_at_end']} at end"]
    fastest = eager.get("fastest")
    if fastest:
        lines.append(f"`--cpu-path fastest` on this CPU picks {fastest['path']}: {fastest['reason']}; probe ms "
                     f"{fastest['probe_ms']}")
    for c in out["memory"]:
        if "error" in c:
            continue
        phases = c.get("rss_gb", {})
        lines.append(f"{c['model']} at {c['size']}x{c['size']}, {c['dtype']}, low-memory "
                     f"{'on' if c['low_memory'] else 'off'}: peak RSS {c['peak_rss_gb']} GB; at load "
                     f"{_rss(phases.get('load'))}, in the call {_rss(phases.get('call'))} (load {c['load_s']} s, "
                     f"the call {c['call_s']} s); advertised need {advertised_gb(c)} GB")
    return lines


def other_cpu_tables(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each other CPU's run as a table after the section's findings, its targets and findings in the note."""
    extra = []
    for r in runs:
        ran = r.get("ran", {})
        note = [f"Run on {ran.get('at', '?')} at commit {ran.get('commit', '?')}"
                + (f" ({ran['note']})" if ran.get("note") else "") + "."]
        note += [f"- target {t['name']} {t['target']}: measured **{t['value']}** — "
                 f"{'met' if t['met'] else '**MISSED**'}" for t in r.get("targets", [])]
        note += [f"- {line}" for line in r.get("findings", [])]
        extra.append({"title": f"On another CPU: {cpu_key(r['cpu'])}", "note": "\n".join(note),
                      "table": r["table"]})
    return extra
