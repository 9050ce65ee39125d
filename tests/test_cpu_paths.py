"""CPU paths on the tiny model: every path's image within its stated tolerance of eager fp32, the real
probe on this machine's CPU, and a worker whose CPU (as its cpuinfo says) has no native bf16 keeping fp32
and saying why, in its capability record, log, item records, infotext and manifest."""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from cli.client import Client
from sdq.infotext import parse_infotext
from workers.loading.cpu_paths import IMAGE_TOLERANCE, CpuPath, bf16_native_cpu, compiled_blocks, cpu_flags, resolve_cpu_path
from workers.loading.device import Device
from workers.running.generation import generate
from workers.loading.pipelines import PipelineCache
from tests.conftest import wait_job, wait_until
from tests.unit.test_cpu_paths import AVX2
from tests.support.threads import one_thread  # noqa: F401 - an autouse fixture

PARAMS = {"width": 64, "height": 64, "steps": 4, "guidance_scale": 7.5, "scheduler": "pndm", "strength": 0.75,
          "noise_level": 20}
SEEDS = [1, 2, 3]


def images(models_dir, dtype: str, backend: str, prompt: str = "a harbour at dusk"):
    """Three images of the tiny model made on this path, as a (3, 64, 64, 3) array, and the pipeline."""
    cache = PipelineCache(models_dir, Device("cpu", dtype, "cpu", CpuPath(dtype, backend)))
    pipe, entry = cache.get("builtin:tiny-sd", "txt2img")
    made = generate(cache, pipe, entry, "txt2img", PARAMS, [prompt] * len(SEEDS), [""] * len(SEEDS), SEEDS,
                    None, None, None)
    assert made.dtype == dtype
    return np.stack([np.asarray(im.convert("RGB"), dtype=float) for im in made.images]), pipe


@pytest.fixture(scope="module")
def fp32_images(models_dir):
    return images(models_dir, "fp32", "eager")[0]


def test_the_tolerance_tells_another_prompt_apart(models_dir, fp32_images):
    """The tolerance is tighter than what another prompt changes, so a path that lost the prompt fails."""
    other = images(models_dir, "fp32", "eager", prompt="a forest in snow")[0]
    assert np.abs(other - fp32_images).mean() > max(IMAGE_TOLERANCE.values())


@pytest.mark.parametrize("dtype,backend", [("fp32", "channels_last"), ("bf16", "eager"), ("bf16", "channels_last"),
                                           ("fp32", "compile")])
def test_each_cpu_path_stays_within_its_tolerance_of_eager_fp32(models_dir, fp32_images, dtype, backend):
    got, pipe = images(models_dir, dtype, backend)
    # The path really ran: weights in its dtype, its memory format, its compiled UNet.
    assert pipe.unet.dtype == (torch.bfloat16 if dtype == "bf16" else torch.float32)
    conv = pipe.unet.conv_in.weight
    assert conv.is_contiguous(memory_format=torch.channels_last) == (backend == "channels_last")
    assert (compiled_blocks(pipe.unet) > 0) == (backend == "compile")
    diff = np.abs(got - fp32_images).mean(axis=(1, 2, 3))
    assert diff.max() <= IMAGE_TOLERANCE[dtype], (dtype, backend, diff)


def test_fastest_measured_on_this_cpu_uses_bf16_only_where_native():
    """The real probe on this machine: whatever it picks, bf16 only if this CPU has it natively."""
    path = resolve_cpu_path("auto", "fastest")
    native = bf16_native_cpu(cpu_flags())
    assert path.bf16_native == native
    assert set(path.probe_ms) == ({"fp32/eager", "fp32/channels_last"} |
                                  ({"bf16/eager", "bf16/channels_last"} if native else set()))
    assert path.dtype == "fp32" or native, path
    assert path.probe_ms[f"{path.dtype}/{path.backend}"] <= path.probe_ms["fp32/eager"], path


@pytest.mark.slow
def test_a_worker_without_native_bf16_keeps_fp32_and_says_why(stack_factory, store, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(AVX2)
    st = stack_factory("cpu-avx2")
    st.worker("w-avx2", "--device", "cpu", "--threads", "1", "--dtype", "bf16", "--cpu-path", "channels_last",
              "--preload", "builtin:tiny-sd", env={"SDQ_CPUINFO": str(cpuinfo)})
    client = Client(st.env["SDQ_SERVER"])
    # 1. The capability record: fp32, the backend asked for, and why bf16 was not used.
    record = next(w for w in client.workers() if w["name"] == "w-avx2")
    assert (record["dtype"], record["backend"], record["device_name"]) == ("fp32", "channels_last", "AMD EPYC 7B12")
    path = record["cpu_path"]
    assert not path["bf16_native"] and "no native bfloat16" in path["reason"] and path["flags"] == ["avx2"], path
    # 2. Items, infotext and manifest record what ran.
    job = client.submit({"prompts": ["a lighthouse"], "params": {"width": 64, "height": 64, "steps": 2}})
    doc = wait_job(client, job["id"])
    item = doc["items"][0]
    assert (item["state"], item["dtype"], item["backend"]) == ("succeeded", "fp32", "channels_last"), item
    image = Image.open(io.BytesIO(store.get(item["key"])))
    info = parse_infotext(image.info["parameters"])
    assert (info["Dtype"], info["Backend"]) == ("fp32", "channels_last")
    manifest = json.loads(wait_until(lambda: _get(store, f"jobs/{job['id']}/manifest.json"), "manifest"))
    assert (manifest["items"][0]["dtype"], manifest["items"][0]["backend"]) == ("fp32", "channels_last")
    # 3. The worker's log says it too.
    assert "no native bfloat16" in (st.workdir / "worker-w-avx2.log").read_text(errors="replace")


def _get(store, key: str) -> bytes | None:
    try:
        return store.get(key)
    except Exception:  # noqa: BLE001 - not written yet
        return None
