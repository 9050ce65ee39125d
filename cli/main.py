"""`sdq` entry point: argument parsing and dispatch."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

import requests

from sdq import defaults, options
from cli import extras as cli_extras
from sdq.exceptions import InvalidInput, SdqError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="sdq", description="Distributed Stable Diffusion job queue.")
    p.add_argument("--server", default=os.environ.get("SDQ_SERVER", defaults.SERVER),
                   help="producer URL (SDQ_SERVER)")
    p.add_argument("--token", default=os.environ.get("SDQ_TOKEN"), help="API token (SDQ_TOKEN)")
    sub = p.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run redis, a local S3 endpoint, the producer and CPU workers")
    up.add_argument("--workers", type=int, default=1)
    up.add_argument("--threads", type=int, default=None, help="torch threads per worker")
    up.add_argument("--port", type=int, default=None, help="producer port (default: the last one used, else 8000)")
    up.add_argument("--redis-port", type=int, default=None, help="Redis port (default: the last one used, else 6379)")
    up.add_argument("--s3-port", type=int, default=None, help="S3 port (default: the last one used, else 9000)")
    up.add_argument("--workdir", default=None,
                    help="where jobs, results, logs and ports are kept (default: $SDQ_HOME, else the user data dir)")

    demo = sub.add_parser("demo", help="start a private stack, run the example prompts, write results/")
    demo.add_argument("--prompts", default="examples/prompts.txt")
    demo.add_argument("--out", default="results")
    demo.add_argument("--workers", type=int, default=2)
    demo.add_argument("--size", type=int, default=256)
    demo.add_argument("--steps", type=int, default=20)

    prod = sub.add_parser("producer", help="serve the HTTP API")
    prod.add_argument("--host", default="127.0.0.1")
    prod.add_argument("--port", type=int, default=8000)
    prod.add_argument("--workers", type=int, default=2, help="gunicorn worker processes")

    w = sub.add_parser("worker", help="run a worker bound to one device")
    w.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    w.add_argument("--dtype", default="auto", help="auto, fp16, bf16 or fp32")
    w.add_argument("--force-dtype", action="store_true", help="allow fp16 on a CPU")
    w.add_argument("--cpu-path", default="eager", choices=("eager", "channels_last", "compile", "fastest"),
                   help="a CPU worker's backend; fastest: measured at start, bf16 too where the CPU has it natively "
                        "(docs/MODELS.md)")
    w.add_argument("--models", default=None, help="comma-separated models this worker may load")
    w.add_argument("--preload", default=None, help="comma-separated models to load at start")
    w.add_argument("--max-pixels", type=int, default=None, help="largest width*height per image")
    w.add_argument("--max-batch", type=int, default=None, help="most images per pipeline call")
    w.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    w.add_argument("--name", default=None, help="worker name (Celery node NAME@host)")
    w.add_argument("--low-memory", action="store_true", help="VAE slicing/tiling and CPU offload (CUDA)")
    w.add_argument("--offload", choices=("auto", "never", "model", "group"), default="auto",
                   help="run a model whose need exceeds the GPU offloaded: auto (only when it must: model CPU offload, "
                        "else group offload), never, or always model/group (docs/MODELS.md); CPU workers never offload")
    w.add_argument("--preview-decoder", action="append", default=[], metavar="CHANNELS=MODEL",
                   help="a real tiny autoencoder for live previews of latents with CHANNELS channels (4: TAESD or "
                        "TAESDXL, 16: TAESD3 or TAEF1), by path or id; default: the built-in random ones")
    w.add_argument("--debug-oom-pixels", type=int, default=None,
                   help="testing aid: raise MemoryError when a call's pixels*batch exceed N (4N in low-memory mode)")
    w.add_argument("--debug-fatal-after", type=int, default=None,
                   help="testing aid: raise a sticky CUDA-like device error after N pipeline calls")
    w.add_argument("--debug-memory-gb", type=float, default=None,
                   help="testing aid: report N GB of device memory (routing compares needs with it; a CPU worker "
                        "then offloads with its hooks pointed at the CPU)")
    w.add_argument("--no-safety-checker", dest="safety_checker", action="store_false",
                   help="drop the safety checker a model ships (its verdict is otherwise recorded per item)")
    w.add_argument("--upscale-batch", type=int, default=None,
                   help="most images per x4-upscaler call (default 1: its VAE decodes in fp32 at 4x the size)")
    w.add_argument("--loglevel", default="INFO")

    s = sub.add_parser("submit", help="submit a prompt file (.txt, .json, .jsonl, .csv; - for stdin)")
    s.add_argument("file")
    s.add_argument("--model", default=defaults.MODEL)
    s.add_argument("--pipeline", default=defaults.PIPELINE)
    s.add_argument("--steps", type=int)
    s.add_argument("--width", type=int)
    s.add_argument("--height", type=int)
    s.add_argument("--seed", type=int)
    s.add_argument("--n", type=int, help="images per prompt")
    s.add_argument("--negative-prompt", dest="negative_prompt")
    s.add_argument("--guidance", type=float)
    s.add_argument("--scheduler")
    s.add_argument("--init-image", dest="init_image")
    s.add_argument("--strength", type=float)
    cli_extras.add_arguments(s)
    s.add_argument("--priority", type=int, default=defaults.PRIORITY)
    s.add_argument("--device", default=None, help="require gpu, cpu or any")
    s.add_argument("--sweep", default=None, help='JSON object of values to sweep, e.g. \'{"guidance_scale": [5, 9]}\'')
    s.add_argument("--grid", action="store_true", help="write a labeled contact sheet (jobs/<id>/grid.png)")
    s.add_argument("--no-cache", dest="no_cache", action="store_true",
                   help="run every item fresh: no answer from, and no entry in, the result cache")
    s.add_argument("--webhook-url", dest="webhook_url", default=None, help="POSTed the job summary when it ends")
    s.add_argument("--wait", action="store_true")
    s.add_argument("--dry-run", action="store_true", help="print the server's quote (able workers, seconds, "
                   "expected finish, refusals) and submit nothing")
    s.add_argument("--out", default=None, help="with --wait: download results to OUT/<job>/")
    s.add_argument("--json", action="store_true")

    for name, helptext in (("status", "show a job"), ("wait", "wait for a job to end"),
                           ("cancel", "cancel a job"), ("retry", "re-queue failed/cancelled items")):
        c = sub.add_parser(name, help=helptext)
        c.add_argument("job")
        c.add_argument("--json", action="store_true")
        if name == "status":
            c.add_argument("--offset", type=int, default=0)
            c.add_argument("--limit", type=int, default=20)
    d = sub.add_parser("download", help="download a job's images and write index.html")
    d.add_argument("job")
    d.add_argument("dir")
    d.add_argument("--grid", action="store_true", help="also write DIR/grid.png, a labeled contact sheet")
    wk = sub.add_parser("workers", help="show live workers")
    wk.add_argument("--json", action="store_true")
    m = sub.add_parser("models", help="list the models workers may load; `models push` puts one in the bucket")
    m.add_argument("--json", action="store_true")
    msub = m.add_subparsers(dest="models_command")
    push = msub.add_parser("push", help="upload a diffusers folder, checkpoint file or adapter .safetensors to the bucket "
                                        "as store:NAME")
    push.add_argument("path")
    push.add_argument("--as", dest="name", required=True, help="the model's name (then allow store:NAME)")
    rc = sub.add_parser("cache", help="the result cache: `cache count` its entries, `cache clear` drops them")
    rc.add_argument("cache_command", nargs="?", choices=("count", "clear"), default="count")
    rc.add_argument("--json", action="store_true")
    ins = sub.add_parser("inspect", help="print a result PNG's parameters and whether it is watermarked")
    ins.add_argument("file")
    ins.add_argument("--json", action="store_true")
    return p


def cmd_inspect(args) -> int:
    """Print the infotext of an image and whether it carries the sdq invisible watermark."""
    from PIL import Image

    from sdq.infotext import parse_infotext, submit_body_from_infotext

    try:
        img = Image.open(args.file)
        img.load()
    except OSError as exc:
        raise SdqError(f"{args.file}: not a readable image ({exc.strerror or exc})") from None
    with img:
        text = img.info.get("parameters")
        try:
            from workers.running.watermark import detect

            marked, why = detect(img), None
        except RuntimeError as exc:  # the library is not installed here
            marked, why = None, str(exc)
    if marked is None and why is None:
        why = "image smaller than 256x256: too small to carry the watermark"
    if args.json:
        info = parse_infotext(text) if text else None
        print(json.dumps({"file": args.file, "parameters": text, "parsed": info, "watermark": marked,
                          "watermark_note": why, "resubmit": submit_body_from_infotext(info) if info else None}))
        return 0
    print(text if text else f"{args.file}: no `parameters` text chunk (not made by sdq or A1111?)")
    print(f"Watermark: {'present' if marked else 'absent' if marked is False else 'unknown'}"
          + (f" ({why})" if why else ""))
    return 0


def cmd_models_push(args) -> int:
    """Upload a model to the bucket (`models/NAME/`) so workers without internet can load it."""
    from pathlib import Path

    from sdq.config import Settings
    from storage import ResultStore
    from storage.models import push

    store = ResultStore.from_settings(Settings.from_env())
    store.ensure_bucket()
    manifest = push(store, Path(args.path), args.name)
    size = sum(f["size"] for f in manifest["files"])
    what = next((note for o in options.OPTIONS.values() if (note := o.push_note(manifest))), "a model")
    print(f"pushed {len(manifest['files'])} files ({size} bytes) as store:{args.name} ({what}); allow it with "
          f"SDQ_MODELS=store:{args.name}", file=sys.stderr)
    return 0


def cmd_models(args) -> int:
    """List allowed models with their family (where it can be read here) and, for local ones, their folder."""
    from sdq.config import Settings
    from sdq.families import UnknownFamily
    from sdq.modelinfo import model_info
    from sdq.models import BUILTIN_MODELS, allowed_models
    from sdq.sources import source_for

    if args.models_command == "push":
        return cmd_models_push(args)
    settings = Settings.from_env()
    rows = []
    for model in allowed_models(settings.models):
        source = source_for(model)
        row = {"id": model, "kind": source.kind, **source.listing(settings.models_dir)}
        if model in BUILTIN_MODELS:
            row["pipelines"] = list(BUILTIN_MODELS[model])
        try:
            family = model_info(model).family
            row["family"] = family.name if family else None  # None: read by the worker when it loads it
        except UnknownFamily as exc:
            row["family"], row["error"] = None, str(exc)
        rows.append(row)
    for option in options.OPTIONS.values():  # weights a request option names (e.g. LoRA adapters)
        rows += option.model_rows(settings.models, settings.models_dir, {r["id"]: r for r in rows})
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            print(f"{r['id']:40s} {r['kind']:8s} {r['family'] or '?':11s} {r.get('path', '')}"
                  + ("" if r.get("present", True) else "  (made on first use)") + "".join(o.row_note(r) for o in options.OPTIONS.values()))
    return 0


def cmd_worker(args) -> int:
    """Run a worker."""
    from sdq.config import Settings
    from workers.main import WorkerOptions, run_worker

    split = lambda v: [x.strip() for x in v.split(",") if x.strip()] if v else None  # noqa: E731
    opts = WorkerOptions(device=args.device, dtype=args.dtype, models=split(args.models), max_pixels=args.max_pixels,
                         max_batch=args.max_batch, threads=args.threads, name=args.name, low_memory=args.low_memory,
                         force_dtype=args.force_dtype, preload=split(args.preload), loglevel=args.loglevel,
                         debug_oom_pixels=args.debug_oom_pixels, debug_fatal_after=args.debug_fatal_after,
                         safety_checker=args.safety_checker, upscale_batch=args.upscale_batch)
    opts.cpu_path = args.cpu_path
    opts.offload, opts.debug_memory_gb = args.offload, args.debug_memory_gb
    opts.preview_decoders = _preview_decoders(args.preview_decoder)
    return run_worker(Settings.from_env(), opts)


def _preview_decoders(given: list[str]) -> dict[int, str]:
    """`--preview-decoder CHANNELS=MODEL` flags as {channels: model}; InvalidInput naming the flag when malformed."""
    out: dict[int, str] = {}
    for entry in given:
        channels, _, model = entry.partition("=")
        if not channels.strip().isdigit() or not model.strip():
            raise InvalidInput("--preview-decoder", f"--preview-decoder {entry!r}: give CHANNELS=MODEL, e.g. "
                               f"4=/models/taesd")
        out[int(channels)] = model.strip()
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the `sdq` command line."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from cli import cache, jobs, stack
    from cli.client import Client

    local = {"up": stack.cmd_up, "demo": stack.cmd_demo, "producer": stack.cmd_producer,
             "worker": cmd_worker, "models": cmd_models, "inspect": cmd_inspect,
             "cache": cache.cmd_cache}
    remote = {"submit": jobs.cmd_submit, "status": jobs.cmd_status, "wait": jobs.cmd_wait,
              "download": jobs.cmd_download, "cancel": jobs.cmd_cancel, "retry": jobs.cmd_retry,
              "workers": jobs.cmd_workers}
    try:
        if args.command in local:
            return local[args.command](args)
        return remote[args.command](args, Client(args.server, args.token))
    except SdqError as exc:
        print(f"sdq {args.command}: {exc}", file=sys.stderr)
        return 2
    except requests.RequestException as exc:  # downloads of result URLs (the API calls raise SdqError)
        print(f"sdq {args.command}: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
