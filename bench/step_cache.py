"""12. Step caching: s/image and the image's difference from the uncached one per `params.step_cache` method,
and a compiled worker (`--cpu-path compile`: the repeated blocks) against eager, side by side in one process.

The model is `flux-mid`, made here once into the models dir (not a built-in): `builtin:tiny-flux`'s text
encoders, tokenizers, VAE and scheduler with a transformer of FLUX.1's shape per head — heads of 128, rotary
axes (16, 56, 56), 64 input channels — but 6 heads (768 wide; FLUX.1 dev: 24, 3072) and 2 double- plus 4
single-stream blocks (dev: 19 + 38), 82 M parameters with random weights (`--quick`: 4 heads, 1 + 2 blocks). Every case runs through the
worker's own code (`PipelineCache`, the option hooks' apply/undo, `generate`) on one torch thread, the same
prompt and seed; the uncached image is made first and last (the two must be equal: the cache leaves nothing
behind). Figures on random weights say what each method skips and costs on this CPU, not how a trained
model's image looks with it.
"""
from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

from bench.common import default_models_dir, main_for

SIZES = {"full": {"side": 256, "steps": 12, "heads": 6, "double": 2, "single": 4},
         "quick": {"side": 128, "steps": 8, "heads": 4, "double": 1, "single": 2}}
PROMPT = "a lighthouse on a cliff at dusk, oil painting"
SEED = 1234


def build(path: Path, heads: int, double: int, single: int) -> None:
    """Write the flux-mid pipeline (tiny-flux's other components, the wider transformer) to `path`."""
    import torch
    from diffusers import FluxPipeline, FluxTransformer2DModel

    from workers.builtins.families import CLIP_L_HIDDEN
    from workers.builtins.flux import T5_WIDTH, flux_components

    parts = flux_components()
    torch.manual_seed(77)
    parts["transformer"] = FluxTransformer2DModel(
        patch_size=1, in_channels=64, num_layers=double, num_single_layers=single, attention_head_dim=128,
        num_attention_heads=heads, joint_attention_dim=T5_WIDTH, pooled_projection_dim=CLIP_L_HIDDEN,
        guidance_embeds=True, axes_dims_rope=(16, 56, 56)).eval()
    FluxPipeline(**parts).save_pretrained(path, safe_serialization=True)


def _diff(a, b) -> dict[str, float]:
    """Max and mean absolute difference (0-255) and PSNR (dB; inf when equal) of two uint8 images."""
    import numpy as np

    d = np.abs(a.astype(float) - b.astype(float))
    mse = float((d ** 2).mean())
    return {"max": float(d.max()), "mean": round(float(d.mean()), 3),
            "psnr": math.inf if mse == 0 else round(10 * math.log10(255 ** 2 / mse), 2)}


def _make(cache, model: str, params: dict[str, Any]) -> tuple[Any, float]:
    """One image through the worker's path (options on, the call, options off) and its seconds."""
    import numpy as np

    from workers import options as worker_options
    from workers.running.generation import Batch, generate

    pipe, entry = cache.get(model, "txt2img")
    t0 = time.perf_counter()
    worker_options.apply(cache, pipe, entry, params)
    try:
        made = generate(cache, pipe, entry, "txt2img", params, [PROMPT], [""], [SEED], None, None,
                        batch=Batch("bench", [0]))
    finally:
        worker_options.undo(cache, pipe, entry, params)
    return np.asarray(made.images[0].convert("RGB")), time.perf_counter() - t0


def run(opts) -> dict[str, Any]:
    """Uncached, each method, uncached again; then a compiled worker's first and later calls."""
    import torch

    from sdq.options.step_cache import FAMILIES, checked
    from workers.loading.cpu_paths import CpuPath
    from workers.loading.device import Device
    from workers.loading.pipelines import PipelineCache

    cfg = SIZES["quick" if opts.quick else "full"]
    torch.set_num_threads(1)
    models = Path(opts.models_dir) if getattr(opts, "models_dir", None) else default_models_dir()
    folder = models / f"flux-mid-{cfg['heads']}x{cfg['double']}+{cfg['single']}"
    if not (folder / "model_index.json").exists():
        build(folder, cfg["heads"], cfg["double"], cfg["single"])
    model = str(folder)
    params = {"width": cfg["side"], "height": cfg["side"], "steps": cfg["steps"], "guidance_scale": 3.5,
              "scheduler": "flow_euler", "max_sequence_length": 64}
    # 1. Step caching, eager: every method beside the uncached image, in one process.
    eager = PipelineCache(models, Device("cpu", "fp32", "cpu", CpuPath()))
    pipe, _ = eager.get(model, "txt2img")
    size = sum(p.numel() for p in pipe.transformer.parameters())
    _make(eager, model, {**params, "steps": 2})  # warm-up: oneDNN picks its kernels
    plain, plain_s = _make(eager, model, params)
    rows = [["uncached", round(plain_s, 2), 1.0, 0.0, 0.0, "inf"]]
    cases: dict[str, Any] = {"uncached": {"s": round(plain_s, 2)}}
    for method in FAMILIES["flux"].methods:
        img, s = _make(eager, model, {**params, "step_cache": checked({"method": method}, "flux")})
        d = _diff(img, plain)
        cases[method] = {"s": round(s, 2), **d}
        rows.append([method, round(s, 2), round(plain_s / s, 2), d["max"], d["mean"], d["psnr"]])
    again, again_s = _make(eager, model, params)
    same = bool((again == plain).all())
    rows.append(["uncached again", round(again_s, 2), round(plain_s / again_s, 2), *_diff(again, plain).values()])
    out: dict[str, Any] = {"model": f"flux-mid: {cfg['heads']} heads x 128, {cfg['double']} double + {cfg['single']} "
                                    f"single blocks, {size / 1e6:.0f} M transformer parameters",
                           "params": params, "cases": cases, "uncached_equal_after": same}
    out["table"] = [["method (defaults)", "s/image", "speed-up", "max abs diff", "mean abs diff", "PSNR dB"], *rows]
    del eager, pipe
    # 2. Compiled (repeated blocks) against eager: compile time and s/step.
    compiled = PipelineCache(models, Device("cpu", "fp32", "cpu", CpuPath("fp32", "compile")))
    _, first_s = _make(compiled, model, params)
    later = [_make(compiled, model, params)[1]]
    eager_step, comp_step = plain_s / cfg["steps"], statistics.median(later) / cfg["steps"]
    out["compile"] = {"first_call_s": round(first_s, 1), "compile_s": round(first_s - statistics.median(later), 1),
                      "s_per_step": {"eager": round(eager_step, 3), "compiled": round(comp_step, 3)}}
    out["extra"] = [{"title": "Compiled worker (`--cpu-path compile`, repeated blocks) vs eager", "note": "",
                     "table": [["path", "first call s", "compile s (first - later)", "s/step", "vs eager"],
                               ["eager", round(plain_s, 2), "-", round(eager_step, 3), 1.0],
                               ["compiled", round(first_s, 1), out["compile"]["compile_s"], round(comp_step, 3),
                                round(eager_step / comp_step, 2)]]}]
    best = max((m for m in cases if m != "uncached"), key=lambda m: plain_s / cases[m]["s"])
    out["findings"] = [
        f"{out['model']}, {cfg['side']}x{cfg['side']}, {cfg['steps']} steps, one CPU thread: fastest method {best} "
        f"({plain_s / cases[best]['s']:.2f}x, PSNR {cases[best]['psnr']} dB against the uncached image)",
        f"the uncached image made again after every method is {'identical' if same else 'DIFFERENT'} to the first",
        f"compiled repeated blocks: {out['compile']['compile_s']} s to compile, {eager_step / comp_step:.2f}x eager "
        "per step"]
    return out


if __name__ == "__main__":
    raise SystemExit(main_for("step_cache", run, __doc__.splitlines()[0]))
