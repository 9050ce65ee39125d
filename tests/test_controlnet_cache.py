"""Loaded ControlNets are bounded per model like adapters (least recently used dropped, with the pipelines
made over them), published with their size, and an out-of-memory error moving one to the device is a model
error (issue 39, defect 5). In-process on the built-in tiny models (real diffusers pipelines)."""
from __future__ import annotations

import gc
import shutil
import weakref

import pytest
import torch

from sdq.exceptions import ModelError
from sdq.sources import builtin_path
from workers import options as worker_options
from workers.loading.device import Device
from workers.loading.pipelines import PipelineCache
from workers.options import controlnet as hook

MODEL = "builtin:tiny-sd"
NET = "builtin:tiny-controlnet"
PARAMS = {"width": 64, "height": 64, "steps": 2, "guidance_scale": 7.5, "scheduler": "pndm"}


def _params(net: str) -> dict:
    return {**PARAMS, "controlnet": {"model": net, "image": "uploads/x.png", "scale": 1.0}}


@pytest.fixture
def nets(models_dir, tmp_path) -> list[str]:
    """Three ControlNets: the built-in and two copies of it in local folders."""
    out = [NET]
    for name in ("cn-b", "cn-c"):
        shutil.copytree(builtin_path(models_dir, "tiny-controlnet"), tmp_path / name)
        # today's folder source wants a model_index.json (a folder with only config.json: issue 39, item 10)
        (tmp_path / name / "model_index.json").write_text('{"_class_name": "ControlNetModel"}')
        out.append(str(tmp_path / name))
    return out


def test_loaded_controlnets_are_bounded_least_recently_used_first(models_dir, nets):
    cache = PipelineCache(models_dir, Device("cpu", "fp32", "cpu"), 2)
    first, entry = cache.get(MODEL, "txt2img", _params(nets[0]))
    net0 = weakref.ref(first.controlnet)
    first = None
    cache.get(MODEL, "txt2img", _params(nets[1]))
    # nets[0] used again: nets[1] is now the least recently used one
    pipe, _ = cache.get(MODEL, "txt2img", _params(nets[0]))
    worker_options.apply(cache, pipe, entry, _params(nets[0]))
    pipe = None
    assert worker_options.warm(entry) == [nets[1], nets[0]]
    held = worker_options.held_gb(cache.entries())[MODEL]
    assert held > 0
    cache.get(MODEL, "txt2img", _params(nets[2]))  # a third one: nets[1] goes, with its pipeline
    assert len(entry.parts[hook.ControlNetHook.name]) == hook.WARM_CONTROLNETS
    assert worker_options.warm(entry) == [nets[0], nets[2]]
    assert not any(k.endswith(f"+{nets[1]}") for k in entry.tasks)
    assert worker_options.held_gb(cache.entries())[MODEL] == pytest.approx(held)
    assert net0() is not None  # the one kept is the very module loaded first
    gc.collect()
    assert cache.loaded_adapters()[MODEL] == [nets[0], nets[2]]


def test_a_dropped_controlnet_is_freed(models_dir, nets):
    cache = PipelineCache(models_dir, Device("cpu", "fp32", "cpu"), 2)
    pipe, entry = cache.get(MODEL, "txt2img", _params(nets[1]))
    gone = weakref.ref(pipe.controlnet)
    pipe = None
    cache.get(MODEL, "txt2img", _params(nets[0]))
    cache.get(MODEL, "txt2img", _params(nets[2]))
    assert gone() is None  # nothing the cache keeps references it


def test_out_of_memory_moving_a_controlnet_to_the_device_fails_the_items_as_a_model_error(models_dir, nets, monkeypatch):
    """The move raises the allocator's error (a device too small for the ControlNet beside the model): a
    ModelError, which the runner fails the items with, instead of an error that gives them back."""
    import diffusers

    cache = PipelineCache(models_dir, Device("cpu", "fp32", "cpu"), 2)
    cache.get(MODEL, "txt2img", PARAMS)
    real_to = diffusers.ControlNetModel.to

    def full(self, *args, **kwargs):
        if args and str(args[0]) == "cpu":
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.35 GiB (simulated)")
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(diffusers.ControlNetModel, "to", full)
    with pytest.raises(ModelError, match=r"ControlNet .* does not fit .*out of memory"):
        cache.get(MODEL, "txt2img", _params(nets[1]))
    entry = cache.get(MODEL, "txt2img", PARAMS)[1]
    assert worker_options.warm(entry) == [] and not any("+" in k for k in entry.tasks)
    monkeypatch.setattr(diffusers.ControlNetModel, "to", real_to)
    assert cache.get(MODEL, "txt2img", _params(nets[1]))[0].controlnet is not None  # fits again later
