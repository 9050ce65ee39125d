"""12. Step caching: s/image and the image's difference from the uncached one per `params.step_cache` method,
and a compiled worker (`--cpu-path compile`: the repeated blocks) against eager, side by side in one process;
then the graphs compiled per job over a run of mixed LoRA jobs on a compiled tiny-sd (hot-swapped adapters).

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
import time
from pathlib import Path
from typing import Any

from bench.common import default_models_dir, main_for

SIZES = {"full": {"side": 256, "steps": 12, "heads": 6, "double": 2, "single": 4, "rounds": 2},
         "quick": {"side": 128, "steps": 8, "heads": 4, "double": 1, "single": 2, "rounds": 1}}
AGGRESSIVE = ({"method": "FirstBlockCache", "threshold": 0.5}, {"method": "MagCache", "threshold": 0.5})
"""Cases beyond the defaults: thresholds that let the adaptive methods skip on random weights."""
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


class _LinearCalls:
    """Counts the calls of the transformer blocks' linear layers: the share of the blocks' work a cache left
    to run, free of timing noise (a skipped block or attention calls none of its layers)."""

    def __init__(self, transformer) -> None:
        from torch import nn

        self.n = 0
        self.handles = [m.register_forward_hook(self._count) for name, m in transformer.named_modules()
                        if isinstance(m, nn.Linear) and "transformer_blocks." in name]

    def _count(self, *_: Any) -> None:
        self.n += 1

    def close(self) -> None:
        for h in self.handles:
            h.remove()


def _make(cache, model: str, params: dict[str, Any], count: bool = True) -> tuple[Any, float, int]:
    """One image through the worker's path (options on, the call, options off), its seconds and the blocks'
    linear-layer calls (`count`: False on a compiled model, where the counting hooks would change the graphs)."""
    import numpy as np
    import torch

    from workers import options as worker_options
    from workers.running.generation import Batch, generate

    pipe, entry = cache.get(model, "txt2img")
    calls = _LinearCalls(pipe.transformer if count else torch.nn.Module())
    t0 = time.perf_counter()
    worker_options.apply(cache, pipe, entry, params)
    try:
        made = generate(cache, pipe, entry, "txt2img", params, [PROMPT], [""], [SEED], None, None,
                        batch=Batch("bench", [0]))
    finally:
        worker_options.undo(cache, pipe, entry, params)
        calls.close()
    return np.asarray(made.images[0].convert("RGB")), time.perf_counter() - t0, calls.n


ADAPTER_RUN = (("builtin:tiny-lora", 1.0), ("reversed", 0.7), ("builtin:tiny-lora", 0.4), (None, 0.0),
               ("reversed", 1.0), ("builtin:tiny-lora", 1.0))
"""The mixed adapter jobs of the recompile count (None: a job without adapters)."""


def _adapter_run(models: Path) -> dict[str, Any]:
    """Graphs torch compiles per job over a run of mixed LoRA jobs on a compiled tiny-sd (hot-swapped adapters)."""
    from safetensors import safe_open
    from safetensors.torch import save_file
    from torch._dynamo.utils import counters

    from sdq.loras import ADAPTER_FILE
    from sdq.sources import builtin_path
    from workers.builtins.registry import ensure_builtin
    from workers.loading.cpu_paths import CpuPath
    from workers.loading.device import Device
    from workers.loading.pipelines import PipelineCache

    ensure_builtin(models, "tiny-lora")
    reversed_file = models / "tiny-lora-reversed.safetensors"  # another adapter of the same rank
    if not reversed_file.exists():
        with safe_open(str(builtin_path(models, "tiny-lora") / ADAPTER_FILE), "pt") as f:
            tensors = {k: f.get_tensor(k) * (-2.0 if "lora_B" in k else 1.0) for k in f.keys()}
            save_file(tensors, str(reversed_file), metadata=f.metadata())
    cache = PipelineCache(models, Device("cpu", "fp32", "cpu", CpuPath("fp32", "compile")))
    params = {"width": 64, "height": 64, "steps": 3, "guidance_scale": 7.5, "scheduler": "pndm"}
    rows = [["job", "adapter", "scale", "graphs compiled", "s"]]
    for i, (name, scale) in enumerate(ADAPTER_RUN, 1):
        adapter = str(reversed_file) if name == "reversed" else name
        before = counters["stats"]["unique_graphs"]
        _, s, _ = _make(cache, "builtin:tiny-sd", {**params, **({"loras": [{"name": adapter, "scale": scale}]}
                                                               if adapter else {})}, count=False)
        rows.append([i, name or "none", scale if name else "-", counters["stats"]["unique_graphs"] - before,
                     round(s, 1)])
    return {"title": "Recompiles over a run of mixed adapter jobs (compiled builtin:tiny-sd, hot-swapped LoRA)",
            "note": "`reversed`: builtin:tiny-lora's update reversed and doubled (another adapter of the same rank). "
                    "The first job compiles the blocks with the LoRA layers in them, the first job without "
                    "adapters once more (adapters switched off: another graph, kept); after that no job compiles, "
                    "whatever the adapter or scale.", "table": rows}


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
    # 1. Step caching, eager: every method beside the uncached image, in one process, `rounds` interleaved
    #    rounds (each case's fastest counts: other load on the cores slows a round of every case alike).
    eager = PipelineCache(models, Device("cpu", "fp32", "cpu", CpuPath()))
    pipe, _ = eager.get(model, "txt2img")
    size = sum(p.numel() for p in pipe.transformer.parameters())
    _make(eager, model, {**params, "steps": 2})  # warm-up: oneDNN picks its kernels
    cases = {"uncached": None, **{f"{m} (defaults)": checked({"method": m}, "flux") for m in FAMILIES["flux"].methods},
             **{f"{v['method']} {k}={v[k]}": checked(v, "flux") for v in AGGRESSIVE for k in v if k != "method"}}
    images: dict[str, Any] = {}
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    work: dict[str, int] = {}
    for _ in range(cfg["rounds"]):
        for name, value in cases.items():
            img, s, n = _make(eager, model, {**params, **({"step_cache": value} if value else {})})
            images.setdefault(name, img)
            seconds[name].append(s)
            work[name] = n
    again = _make(eager, model, params)[0]
    same = bool((again == images["uncached"]).all())
    plain_s = min(seconds["uncached"])
    rows, figures = [], {}
    for name in cases:
        d, s = _diff(images[name], images["uncached"]), min(seconds[name])
        share = work[name] / work["uncached"]
        figures[name] = {"s": [round(x, 2) for x in seconds[name]], "block_work": round(share, 3), **d}
        rows.append([name, round(s, 2), round(plain_s / s, 2), f"{100 * share:.0f}%", d["max"], d["mean"], d["psnr"]])
    out: dict[str, Any] = {"model": f"flux-mid: {cfg['heads']} heads x 128, {cfg['double']} double + {cfg['single']} "
                                    f"single blocks, {size / 1e6:.0f} M transformer parameters",
                           "params": params, "cases": figures, "uncached_equal_after": same}
    out["table"] = [["method", "s/image (best of rounds)", "speed-up", "block work run", "max abs diff",
                     "mean abs diff", "PSNR dB"], *rows]
    del eager, pipe
    # 2. Compiled (repeated blocks) against eager: compile time and s/step.
    import torch._inductor.config as inductor

    inductor.force_disable_caches = True  # a cold compile, as a fresh worker host's (no earlier run's kernels)
    compiled = PipelineCache(models, Device("cpu", "fp32", "cpu", CpuPath("fp32", "compile")))
    first_s = _make(compiled, model, params, count=False)[1]
    later = [_make(compiled, model, params, count=False)[1] for _ in range(cfg["rounds"])]
    eager_step, comp_step = plain_s / cfg["steps"], min(later) / cfg["steps"]
    out["compile"] = {"first_call_s": round(first_s, 1), "compile_s": round(first_s - min(later), 1),
                      "s_per_step": {"eager": round(eager_step, 3), "compiled": round(comp_step, 3)}}
    out["extra"] = [{"title": "Compiled worker (`--cpu-path compile`, repeated blocks) vs eager", "note": "",
                     "table": [["path", "first call s", "compile s (first - best later)", "s/step (image s / steps)",
                                "vs eager"],
                               ["eager", round(plain_s, 2), "-", round(eager_step, 3), 1.0],
                               ["compiled", round(first_s, 1), out["compile"]["compile_s"], round(comp_step, 3),
                                round(eager_step / comp_step, 2)]]}]
    out["extra"].append(_adapter_run(models))
    cached = [n for n in cases if n != "uncached"]
    best = max(cached, key=lambda n: plain_s / min(seconds[n]))
    least = min(cached, key=lambda n: figures[n]["block_work"])
    out["findings"] = [
        f"{out['model']}, {cfg['side']}x{cfg['side']}, {cfg['steps']} steps, one CPU thread, {cfg['rounds']} rounds: "
        f"fastest {best} ({plain_s / min(seconds[best]):.2f}x, PSNR {figures[best]['psnr']} dB against the "
        f"uncached image); least block work {least} ({100 * figures[least]['block_work']:.0f}%)",
        "random weights: a block's output changes from step to step more than a trained model's, so the "
        "adaptive methods (FirstBlockCache, MagCache) skip less than they would on FLUX.1; the block-work column "
        "counts what each skipped, the seconds include the text encoders and the VAE",
        f"the uncached image made again after every method is {'identical' if same else 'DIFFERENT'} to the first",
        "seconds move with other load on the cores (see the load average above); the block work does not",
        f"compiled repeated blocks: {out['compile']['compile_s']} s to compile, {eager_step / comp_step:.2f}x eager "
        "per step"]
    return out


if __name__ == "__main__":
    raise SystemExit(main_for("step_cache", run, __doc__.splitlines()[0]))
