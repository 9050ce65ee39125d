"""Rendering results as bench/RESULTS.md: the machine, then one section per benchmark."""
from __future__ import annotations

import json
import time
from typing import Any

TITLES = {
    "overhead": "1. Queue overhead vs the bare limit",
    "submit": "2. Submission: one request of N prompts vs raw Celery",
    "status": "3. Status at scale",
    "scaleout": "4. Scale-out: 1 vs 2 workers",
    "batching": "5. Micro-batching",
    "coldstart": "6. Warm vs cold",
    "events": "7. Event fan-out (SSE)",
    "gpu": "8. One worker vs plain diffusers on the same device",
    "sim": "9. Mixed fleets (simulation)",
    "realsize": "10. Real size: CPU paths and memory",
    "step_cache": "12. Step caching (and compiled workers)",
}

NOTES = {
    "step_cache": ("`params.step_cache` per method through the worker's own code on flux-mid (`bench/step_cache.py`: a "
                   "Flux-shaped transformer, random weights), against the uncached image of the same prompt and seed. "
                   "\"block work run\" counts the calls of the blocks' linear layers, so it is exact; the seconds "
                   "carry the noise of other load on the cores, and a case that skips nothing (FirstBlockCache at its "
                   "default threshold, which random weights never meet) shows how much. The image differences are "
                   "exact too (0-255 pixels)."),
    "realsize": ("`builtin:sd15-shaped` (SD 1.5's shapes, 859.5 M-parameter UNet, random weights) per CPU path "
                 "(`sdq worker --dtype ... --cpu-path ...`), all torch threads. The eager paths run in one process, "
                 "interleaved round by round, each keeping its fastest round (rounds in brackets); `compile` and each "
                 "memory case run in a fresh process. s/step = the fastest interval between step callbacks at "
                 "256x256 with CFG; images/hour = 3600 / (text encoder + VAE + first-call warm-up + 20 steps). Peak "
                 "RSS = the process's maximum resident set (weights, activations, allocator): what a worker on this "
                 "model needs. Memory cases: one DDIM step at the model's own size (sd15-shaped 512x512, sd2-768-shaped "
                 "768x768); low-memory = VAE slicing and tiling; where bf16 is emulated its case is the load alone "
                 "(its peak is at load); the findings split each peak into allocated memory (anon) and mapped "
                 "weight-file pages (files) and give the need `sdq/families.py` advertises for it. Image "
                 "diff = mean absolute pixel difference (0-255) from eager fp32, same seed. bf16 is timed only where "
                 "the CPU has it natively. Each CPU's latest run is kept below this one's. `python -m bench.realsize`."),
    "sim": ("A discrete-event simulation of one job of equal items on fleets of unequal workers, driving sdq's "
            "own policy functions (`sdq/scheduling/scheduling.py`): `count` = chunks sized from the number of "
            "workers and "
            "every worker takes whole chunks (sdq before speed awareness); `speed` = chunks from measured rates "
            "and speed-aware claims; `speed+backups` = plus straggler backups. Rates are items per second (the "
            "fastest makes one per second), known to all. Bound = max(total work / total rate, one item on the "
            "fastest worker); 'best' = the best schedule of whole items (each item on one worker). "
            "Message, upload and measurement costs are not modelled. `python -m bench.sim`."),
    "gpu": ("One `sdq worker --max-batch B` against one plain warm diffusers process making the same images "
            "in calls of B, same device and dtype (`python -m bench.run --device cuda` on a GPU host)."),
    "overhead": ("Wall time from just before the POST to the job's `finished_at` (every PNG in the bucket), "
                 "against the same generations in 2 plain warm diffusers processes x 1 torch thread. "
                 "Ratio: the median of the repeats (all in brackets). *encode/upload run on the worker's "
                 "background uploader, off the device's critical path (they still take CPU on a 2-core box). "
                 "'worker off-model' is each worker's time from its first claim to its last stored image, "
                 "less its load+generate time, per item: claim, Celery fetch/ack, status writes and the "
                 "upload tail on the critical path. 'status scripts' is Redis' own time in the Lua state "
                 "scripts (claim, finish) per item, from `INFO commandstats` (nested commands included)."),
    "submit": ("One POST of N prompts with no worker running; 'in broker' is when the Redis broker lists "
               "held every message (all N items, checked by decoding them). Raw Celery: "
               "`group(noop.s() x N).apply_async()` with the same Celery settings on the same Redis."),
    "status": "Client-side latency of sequential `GET /v1/jobs/{id}` over keep-alive HTTP to the producer (gunicorn).",
    "scaleout": "The same job on 1 then 2 workers, each `--threads 1`; throughput = items / (POST .. finished_at).",
    "batching": "One worker, the same job at `--max-batch 1` and `--max-batch 4`.",
    "coldstart": ("A fresh worker without `--preload`; the first item pays the model load (and, with an empty "
                  "model cache, generating the built-in model); the next ones run warm."),
    "events": ("Latency from `PUBLISH` on the job's Redis channel to the SSE client reading the frame, with "
               "1 and several concurrent clients; also real worker progress events, from their arrival on a "
               "Redis subscriber to the SSE client."),
}


def _md_table(rows: list[list[Any]]) -> str:
    head, *body = rows
    lines = ["| " + " | ".join(str(h) for h in head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


def section(name: str, result: dict[str, Any]) -> str:
    """The RESULTS.md section of one benchmark."""
    out = [f"## {TITLES.get(name, name)}", ""]
    if result.get("error"):
        return "\n".join(out + [f"**Failed:** `{result['error']}`", ""])
    if result.get("ran"):
        out += [f"Run on {result['ran']['at']} at commit {result['ran']['commit']}.", ""]
    if name in NOTES:
        out += [NOTES[name], ""]
    if result.get("table"):
        out += [_md_table(result["table"]), ""]
    for extra in result.get("extra", []):  # further tables, each under its own heading
        out += [f"### {extra['title']}", "", extra.get("note", ""), "", _md_table(extra["table"]), ""]
    for t in result.get("targets", []):
        mark = "met" if t["met"] else "**MISSED**"
        aim = f"; aim {t['aim']}: {'met' if t.get('aim_met') else 'not met'}" if "aim" in t else ""
        out.append(f"- target {t['name']} {t['target']}: measured **{t['value']}** — {mark}{aim}")
    for line in result.get("findings", []):
        out.append(f"- {line}")
    out.append("")
    for extra in result.get("appendix", []):  # tables after the findings (other CPUs' runs), each under its heading
        out += [f"### {extra['title']}", "", extra.get("note", ""), "", _md_table(extra["table"]), ""]
    return "\n".join(out)


def machine_section(m: dict[str, Any]) -> str:
    """The machine description."""
    v = m.get("versions", {})
    rows = [["what", "value"], ["CPU", f"{m.get('cpu')}, {m.get('cores')} cores"],
            ["memory", f"{m.get('memory_gb')} GiB"], ["OS", m.get("os")], ["Python", m.get("python")],
            ["device (workers)", ", ".join(m.get("device") or ["?"])],
            ["redis-server", m.get("redis_server")],
            ["libraries", ", ".join(f"{k} {val}" for k, val in v.items() if val)],
            ["commit", m.get("commit")], ["load average at start", m.get("load_avg_at_start")]]
    return _md_table(rows)


def render(doc: dict[str, Any]) -> str:
    """The whole RESULTS.md."""
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(doc.get("finished_at", time.time())))
    out = ["# sdq benchmark results", "",
           f"Written by `make bench` (`python -m bench.run`) on {when}, in {doc.get('duration_s', 0):.0f} s"
           + (" — **quick sizes: not comparable**" if doc.get("quick") else "") + ". Every figure is a ratio "
           "or a distribution measured in the same run, side by side (`--only` re-runs update single sections, "
           "each says when it ran). Raw data: `bench/results.json`.", "",
           "## Machine", "", machine_section(doc["machine"]), "", "## Targets", ""]
    rows = [["benchmark", "target", "measured", "status"]]
    for name, res in doc["benchmarks"].items():
        for t in res.get("targets", []):
            rows.append([TITLES.get(name, name).split(". ", 1)[-1] + ": " + t["name"], t["target"], t["value"],
                         "met" if t["met"] else "**missed**"])
        if res.get("error"):
            rows.append([TITLES.get(name, name), "-", "-", f"**failed**: {res['error'][:80]}"])
    out += [_md_table(rows), ""]
    for name, res in doc["benchmarks"].items():
        out.append(section(name, res))
    return "\n".join(out)


if __name__ == "__main__":  # re-render RESULTS.md from results.json
    from pathlib import Path

    here = Path(__file__).resolve().parent
    (here / "RESULTS.md").write_text(render(json.loads((here / "results.json").read_text())))
