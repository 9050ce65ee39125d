"""A compiled CPU worker (`--cpu-path compile`) in the worker's own code path: the denoiser's repeated blocks are
compiled, not the whole model; LoRA jobs hot-swap their adapters, so a second adapter (and another scale) runs
without a recompile — counted with torch's compile counters — and makes the image an eager worker makes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from sdq.loras import ADAPTER_FILE
from sdq.sources import builtin_path
from workers import options as worker_options
from workers.loading.cpu_paths import IMAGE_TOLERANCE, CpuPath, compiled_blocks
from workers.loading.device import Device
from workers.loading.pipelines import PipelineCache
from workers.running.generation import generate
from tests.support.threads import one_thread  # noqa: F401 - an autouse fixture

PARAMS = {"width": 64, "height": 64, "steps": 3, "guidance_scale": 7.5, "scheduler": "pndm"}


@pytest.fixture(scope="module")
def other_adapter(models_dir, tmp_path_factory) -> str:
    """A second SD adapter of the same rank: `builtin:tiny-lora`'s update reversed and doubled (another image)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    src = builtin_path(models_dir, "tiny-lora") / ADAPTER_FILE
    with safe_open(str(src), "pt") as f:
        tensors = {k: (f.get_tensor(k) * -2.0 if "lora_B" in k else f.get_tensor(k)) for k in f.keys()}
        metadata = f.metadata()
    out = tmp_path_factory.mktemp("adapter") / "reversed.safetensors"
    save_file(tensors, str(out), metadata=metadata)
    return str(out)


def _job(cache: PipelineCache, loras: list[dict]) -> np.ndarray:
    """One LoRA chunk as the runner makes it: the options on, a call, the options off."""
    pipe, entry = cache.get("builtin:tiny-sd", "txt2img")
    params = {**PARAMS, "loras": loras}
    applied = worker_options.apply(cache, pipe, entry, params)
    try:
        made = generate(cache, pipe, entry, "txt2img", params, ["a harbour at dusk"], [""], [5], None, None)
    finally:
        worker_options.undo(cache, pipe, entry, params)
    assert set(applied["loras"]) == {lo["name"] for lo in loras}
    return np.asarray(made.images[0].convert("RGB"), dtype=float)


def _graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def test_two_adapters_on_a_compiled_worker_do_not_recompile(models_dir, other_adapter):
    compiled = PipelineCache(models_dir, Device("cpu", "fp32", "cpu", CpuPath("fp32", "compile")))
    pipe, _ = compiled.get("builtin:tiny-sd", "txt2img")
    # 1. Regional compilation: the UNet's transformer blocks are compiled, the UNet itself is not.
    assert getattr(pipe.unet, "_compiled_call_impl", None) is None
    assert compiled_blocks(pipe.unet) == sum(type(m).__name__ == "BasicTransformerBlock" for m in pipe.unet.modules()) > 0
    # 2. The first adapter job compiles (the LoRA layers are new to the blocks).
    first = _job(compiled, [{"name": "builtin:tiny-lora", "scale": 1.0}])
    assert _graphs() > 0
    # 3. Another adapter, at another scale, swaps in: no graph is compiled.
    before = _graphs()
    second = _job(compiled, [{"name": other_adapter, "scale": 0.7}])
    back = _job(compiled, [{"name": "builtin:tiny-lora", "scale": 1.0}])
    assert _graphs() == before, "a recompile between adapter jobs"
    # 4. The swapped-in adapter really ran: its image is an eager worker's, and not the first adapter's.
    eager = PipelineCache(models_dir, Device("cpu", "fp32", "cpu", CpuPath("fp32", "eager")))
    want = _job(eager, [{"name": other_adapter, "scale": 0.7}])
    assert np.abs(second - want).mean() <= IMAGE_TOLERANCE["fp32"]
    assert np.abs(second - first).mean() > 5 * IMAGE_TOLERANCE["fp32"]
    assert np.abs(back - first).mean() <= IMAGE_TOLERANCE["fp32"]
