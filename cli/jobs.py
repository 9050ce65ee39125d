"""Client commands: submit, status, wait, download, cancel, workers, models."""
from __future__ import annotations

import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import requests

from sdq import contract
from cli import extras as cli_extras
from cli.client import Client
from cli.gallery import write_gallery
from sdq.exceptions import InvalidInput, PromptFileError, SdqError
from sdq.prompts import parse_prompts

PARAM_FLAGS = {"steps": "steps", "width": "width", "height": "height", "seed": "seed", "n": "images_per_prompt",
               "negative_prompt": "negative_prompt", "guidance": "guidance_scale", "scheduler": "scheduler",
               "strength": "strength"}


def build_body(args, items: list[dict[str, Any]], client: Client | None = None) -> dict[str, Any]:
    """The submit body from parsed prompt items and CLI flags (images the flags name are uploaded with
    `client`)."""
    params = {key: getattr(args, flag) for flag, key in PARAM_FLAGS.items() if getattr(args, flag, None) is not None}
    body: dict[str, Any] = {"model": args.model, "pipeline": args.pipeline, "params": params,
                            "priority": args.priority}
    if all(set(it) == {"prompt"} for it in items):
        body["prompts"] = [it["prompt"] for it in items]
    else:
        body["items"] = items
    if args.device:
        body["requires"] = {"device": args.device}
    if getattr(args, "grid", False):
        params["grid"] = True
    if getattr(args, "no_cache", False):
        params["cache"] = False
    params.update(cli_extras.option_params(args, client))
    if getattr(args, "sweep", None):
        try:
            body["sweep"] = json.loads(args.sweep)
        except json.JSONDecodeError as exc:
            raise InvalidInput("--sweep", f"--sweep must be a JSON object, e.g. '{{\"guidance_scale\": [5, 9]}}' "
                               f"({exc.msg})") from None
    if getattr(args, "webhook_url", None):
        body["webhook_url"] = args.webhook_url
    return body


def _read_prompt_file(name: str) -> str:
    """The text of a prompt file (`-`: standard input); PromptFileError when it cannot be read as UTF-8."""
    try:
        return sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
    except OSError as exc:
        raise PromptFileError(f"{name}: cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError as exc:
        raise PromptFileError(f"{name}: not UTF-8 text (byte {exc.start})") from None


def cmd_submit(args, client: Client) -> int:
    """Submit a prompt file; optionally wait and download."""
    items = parse_prompts(_read_prompt_file(args.file), args.file)
    body = build_body(args, items, client)
    if args.init_image:
        path = Path(args.init_image)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise InvalidInput("--init-image", f"--init-image {str(path)!r} cannot be read: {exc.strerror}") from None
        body["params"]["init_image"] = client.upload(data, path.name)["key"]
    cli_extras.apply_mask(args, body["params"], client)
    if args.dry_run:
        quote = client.submit({**body, "dry_run": True})
        print(json.dumps(quote) if args.json else describe_quote(quote))
        return 0 if quote["accepted"] else 1
    resp = client.submit(body)
    if args.json and not args.wait:
        print(json.dumps(resp))
        return 0
    print(f"job {resp['id']}: {resp['items']} items queued (seed {resp['seed']})", file=sys.stderr)
    for warning in resp.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    if not args.json:
        print(resp["id"])
    if not args.wait:
        return 0
    doc = wait_job(client, resp["id"], quiet=args.json)
    if args.out:
        download(client, resp["id"], Path(args.out) / resp["id"], quiet=args.json, grid=getattr(args, "grid", False))
    if args.json:
        print(json.dumps(doc))
    return 0 if doc["state"] == "succeeded" else 1


def describe_quote(quote: dict[str, Any]) -> str:
    """A dry run's quote as lines of text: per queue, the able workers with their seconds per item, the
    others with why not, and when the job would finish."""
    lines = [f"dry run: {quote['items']} items of {quote['model']} ({quote['pipeline']}), "
             f"{quote['items_ahead']} items queued ahead; nothing was submitted"]
    for q in quote["queues"]:
        lines.append(f"  {q['queue']}: {q['items']} items")
        lines += [f"    can run on {w['name']} ({w['device']}, {w['dtype']}): {w['seconds_per_item']} s/item"
                  f"{'' if w['measured'] else ' (not measured yet: its device kind typical)'}" for w in q["able_workers"]]
        lines += [f"    not on {w['name']}: {'; '.join(w['reasons'])}" for w in q["unable_workers"]]
        if q["finish_in_s"] is not None:
            lines.append(f"    would start in ~{q['start_in_s']} s and finish in ~{q['finish_in_s']} s")
    if not quote["runnable_now"]:
        lines.append("no live worker can take some of its items now: they would wait for a capable worker")
    lines += [f"refused: {r['message']}" for r in quote["refusals"]]
    lines += [f"warning: {w}" for w in quote["warnings"]]
    return "\n".join(lines)


def wait_job(client: Client, job_id: str, quiet: bool = False, poll: float = 0.5) -> dict[str, Any]:
    """Poll until the job ends, showing its progress (steps, items, ETA; `cli.progress`); returns the final status."""
    import os

    from sdq import defaults
    from sdq.config import _float
    from cli.progress import Progress

    shown = None if quiet else Progress(
        job_id, sys.stderr, _float(os.environ, "SDQ_PROGRESS_INTERVAL", defaults.CLI_PROGRESS_INTERVAL))
    try:
        while True:
            doc = client.job(job_id, 0, 0)
            if shown is not None:
                shown.show(doc)
            if doc["state"] in contract.TERMINAL_STATES:
                break
            time.sleep(poll)
    finally:
        if shown is not None:
            shown.close()
    if not quiet:
        print(summary_table(client, doc), file=sys.stderr)
    return doc


SUMMARY_ITEMS_MAX = 2000
"""Jobs up to this size get a per-worker breakdown in the summary (it pages through all items)."""


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    fmt = lambda r: "  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths)))  # noqa: E731
    return [fmt(header), *(fmt(r) for r in rows)]


def summary_table(client: Client, doc: dict[str, Any]) -> str:
    """The end-of-job summary: items per state, wall time and rate, then items per worker and failures."""
    c = doc["counts"]
    wall = (doc.get("finished_at") or time.time()) - (doc.get("started_at") or doc["created_at"])
    lines = [f"job {doc['id']}  {doc['state']}  {doc['n_items']} items in {wall:.1f}s"
             + (f" ({c['succeeded'] / wall:.2f} images/s)" if wall > 0 and c["succeeded"] else "")]
    lines += _table(["STATE", "ITEMS"], [[k, str(v)] for k, v in c.items()])
    if doc["n_items"] <= SUMMARY_ITEMS_MAX:
        _, items = client.all_items(doc["id"])
        per: dict[str, list[float]] = {}
        for it in items:
            if it["state"] == "succeeded":  # copies from the result cache apart: they would skew the mean
                name = (it.get("worker") or "-") + (" (cached)" if it.get("cached") else "")
                per.setdefault(name, []).append(it.get("duration_s") or 0.0)
        if per:
            lines.append("")
            lines += _table(["WORKER", "ITEMS", "MEAN S/ITEM"],
                            [[w, str(len(d)), f"{sum(d) / len(d):.3f}"] for w, d in sorted(per.items())])
        failed = [it for it in items if it["state"] == "failed"]
        if failed:
            lines.append("")
            lines += _table(["FAILED", "ERROR"], [[str(it["index"]), str(it.get("error"))[:100]] for it in failed[:20]])
    return "\n".join(lines)


def _fetch(url: str, path: Path, size: int | None) -> bool:
    if size and path.exists() and path.stat().st_size == size:
        return False
    resp = requests.get(url, timeout=60)
    resp.raise_for_status()
    tmp = path.with_suffix(".part")
    tmp.write_bytes(resp.content)
    tmp.replace(path)
    return True


def download(client: Client, job_id: str, out: Path, quiet: bool = False, grid: bool = False) -> Path:
    """Fetch every succeeded image (and a video item's MP4; parallel; complete files are skipped) and
    write index.html.

    Resumable: an image already present with the stored size is not fetched again, and a file is
    renamed into place only once complete. With `grid`, also writes `grid.png` (`workers.finishing.grid`).
    """
    doc, items = client.all_items(job_id)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SdqError(f"cannot write the download folder {str(out)!r}: {exc.strerror or exc}") from None
    todo = [it for it in items if it["state"] == "succeeded" and it.get("url")]
    with ThreadPoolExecutor(max_workers=8) as pool:
        fetched = sum(pool.map(lambda it: _fetch(it["url"], out / f"{it['index']:05d}.png", it.get("bytes")), todo))
        videos = [it for it in todo if it.get("video_url")]  # a video item: its MP4 beside its poster PNG
        fetched += sum(pool.map(lambda it: _fetch(it["video_url"], out / f"{it['index']:05d}.mp4",
                                                  it.get("video_bytes")), videos))
    (out / "job.json").write_text(json.dumps({**doc, "items": items}, indent=1), encoding="utf-8")
    if doc.get("manifest"):
        _fetch(doc["manifest"], out / "manifest.json", None)
    if grid:
        _write_grid(out, doc, items)
    gallery = write_gallery(out, doc, items)
    if not quiet:
        print(f"{len(todo)} images in {out} ({fetched} downloaded); gallery: {gallery}", file=sys.stderr)
    return out


def _write_grid(out: Path, doc: dict[str, Any], items: list[dict[str, Any]]) -> Path:
    from PIL import Image

    from workers.finishing.grid import make_grid
    from sdq.records import Item, Job

    images = {it["index"]: Image.open(out / f"{it['index']:05d}.png").convert("RGB")
              for it in items if (out / f"{it['index']:05d}.png").exists()}
    path = out / "grid.png"
    make_grid(Job.from_record(doc), [Item.from_record(it) for it in items], images).save(path)
    return path


def cmd_status(args, client: Client) -> int:
    """Print a job's status."""
    doc = client.job(args.job, args.offset, args.limit)
    if args.json:
        print(json.dumps(doc))
        return 0
    c = doc["counts"]
    print(f"job {doc['id']}  {doc['state']}  {doc['progress'] * 100:.0f}%  model {doc['model']}  "
          f"pipeline {doc['pipeline']}")
    print("  " + "  ".join(f"{k} {v}" for k, v in c.items()) + (f"  eta {doc['eta_seconds']}s" if doc.get("eta_seconds") else "")
          + (f"  queue position {doc['queue_position']}" if doc.get("queue_position") is not None else ""))
    for it in doc["items"]:
        print(f"  {it['index']:5d} {it['state']:9s} seed {it['seed']:<10} {it.get('worker') or '-':16s} "
              f"{(it.get('prompt') or '')[:60]}" + (f"  error: {it['error']}" if it.get("error") else ""))
    return 0


def cmd_wait(args, client: Client) -> int:
    """Wait for a job to end."""
    doc = wait_job(client, args.job, quiet=args.json)
    if args.json:
        print(json.dumps(doc))
    return 0 if doc["state"] == "succeeded" else 1


def cmd_download(args, client: Client) -> int:
    """Download a job's images."""
    download(client, args.job, Path(args.dir), grid=getattr(args, "grid", False))
    return 0


def cmd_cancel(args, client: Client) -> int:
    """Cancel a job."""
    resp = client.cancel(args.job)
    print(json.dumps(resp) if args.json else f"job {resp['id']}: {resp['state']}")
    return 0


def cmd_retry(args, client: Client) -> int:
    """Re-queue a job's failed and cancelled items."""
    resp = client.retry(args.job)
    print(json.dumps(resp) if args.json else f"job {resp['id']}: {resp.get('requeued', 0)} items re-queued")
    return 0


def _speed(rates: dict[str, dict], steps: int = 20) -> str:
    """A worker's measured rates as people read them, e.g. `tiny-sd/txt2img/256x256: 12 steps/s,
    1.6 s/image`: steps per second and time per `steps`-step image at the latest size of each kind
    (the record keeps megapixel-steps per second), or `not measured yet` before its first item."""
    out = []
    for key, r in sorted(rates.items()):
        model, pipeline, cls = (key.split("|") + ["", ""])[:3]
        w = r.get("width") or int(cls.lstrip("p") or 0)
        h = r.get("height") or w
        if not (r.get("rate") and w and h):
            continue
        per_s = r["rate"] / (w * h / 1e6)
        per_image = steps / per_s
        pace = f"{per_image:.3g} s/image" if per_image >= 1 else f"{1 / per_image:.3g} images/s"
        out.append(f"{model.removeprefix('builtin:')}/{pipeline}/{w}x{h}: {per_s:.3g} steps/s, {pace}")
    return "; ".join(out) or "not measured yet"


def _loaded(worker: dict) -> str:
    """A worker's loaded models, each quantized one with how (`builtin:tiny-flux-gguf (gguf Q8_0)`)."""
    quantized = worker.get("quantized") or {}
    return ",".join(f"{m} ({quantized[m]})" if m in quantized else m for m in worker.get("loaded_models") or ())


def cmd_workers(args, client: Client) -> int:
    """Show the fleet."""
    workers = client.workers()
    if args.json:
        print(json.dumps(workers))
        return 0
    workers = [{**w, "loaded_models": _loaded(w)} for w in workers]
    cols = ("name", "host", "device", "dtype", "device_name", "memory_free_gb", "max_pixels", "max_batch",
            "items_done", "loaded_models", "speed")
    rows = [[str(w.get(c) if not isinstance(w.get(c), list) else ",".join(w[c])) for c in cols[:-1]]
            + [_speed(w.get("speed") or {})] for w in workers]
    widths = [max(len(c), *(len(r[i]) for r in rows)) if rows else len(c) for i, c in enumerate(cols)]
    print("  ".join(c.upper().ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)))
    if not rows:
        print("(no live workers)")
    return 0
