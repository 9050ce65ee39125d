"""The worker's warm adapter set (`workers.options.loras.WarmAdapters`) against a recording pipeline:
which diffusers calls switch adapters on and off, and which are unloaded when the set is full."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from sdq.exceptions import ModelError
from tests.unit.test_loras import write_safetensors
from workers.options.loras import WarmAdapters


class RecordingPipe:
    """The part of a diffusers pipeline's LoRA API the worker uses, recording each call."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []
        self.adapters: list[str] = []

    def load_lora_weights(self, state, adapter_name: str) -> None:
        self.calls.append(("load", adapter_name))
        self.adapters.append(adapter_name)

    def delete_adapters(self, name: str) -> None:
        self.calls.append(("delete", name))
        self.adapters.remove(name)

    def get_list_adapters(self) -> dict[str, list[str]]:
        return {"unet": list(self.adapters)}

    def enable_lora(self) -> None:
        self.calls.append(("enable",))

    def disable_lora(self) -> None:
        self.calls.append(("disable",))

    def set_adapters(self, names: list[str], adapter_weights: list[float]) -> None:
        self.calls.append(("set", tuple(names), tuple(adapter_weights)))


class FileFetcher:
    """A fetcher for local adapter files only."""

    models_dir = Path("/nonexistent")
    half = False
    has_store = False

    def file_sha256(self, path: Path) -> str:
        return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def files(tmp_path) -> dict[str, str]:
    return {n: str(write_safetensors(tmp_path / f"{n}.safetensors", [f"unet.{n}.to_q.lora_A.weight"]))
            for n in ("a", "b", "c")}


def test_adapters_switch_per_chunk_and_the_least_recently_used_is_unloaded(files):
    pipe, warm, fetch = RecordingPipe(), WarmAdapters("sd", keep=2), FileFetcher()
    warm.use(pipe, [{"name": files["a"], "scale": 0.5}], fetch)
    name_a = pipe.adapters[0]
    assert pipe.calls == [("load", name_a), ("enable",), ("set", (name_a,), (0.5,))]
    pipe.calls.clear()
    assert warm.use(pipe, [], fetch) == {} and pipe.calls == [("disable",)]  # a job without: all off
    warm.use(pipe, [{"name": files["b"], "scale": 1.0}], fetch)
    warm.use(pipe, [{"name": files["a"], "scale": 1.0}], fetch)  # a again: warm, not loaded twice
    assert [c for c in pipe.calls if c[0] == "load"] == [("load", pipe.adapters[1])]
    warm.use(pipe, [{"name": files["c"], "scale": 1.0}], fetch)  # full: b (least recently used) goes
    assert warm.ids() == [files["a"], files["c"]] and len(pipe.adapters) == 2
    assert ("delete", next(c[1] for c in pipe.calls if c[0] == "load")) in pipe.calls


def test_a_job_may_use_more_adapters_than_the_warm_set_keeps(files):
    pipe, warm = RecordingPipe(), WarmAdapters("sd", keep=1)
    hashes = warm.use(pipe, [{"name": files[n], "scale": 1.0} for n in "abc"], FileFetcher())
    assert len(hashes) == 3 and len(pipe.adapters) == 3 and pipe.calls[-1][0] == "set"


def test_an_adapter_for_another_family_is_refused_before_loading(tmp_path):
    xl = write_safetensors(tmp_path / "xl.safetensors", ["lora_te2_text_model_encoder_layers_0_mlp_fc1.alpha"])
    pipe = RecordingPipe()
    with pytest.raises(ModelError, match="params.loras: LoRA .* is for the sdxl family; this model is sd"):
        WarmAdapters("sd").use(pipe, [{"name": str(xl), "scale": 1.0}], FileFetcher())
    assert pipe.calls == []


def test_the_hook_switches_the_adapters_on_for_a_chunk_and_off_after_it(files):
    """`workers.options.loras.LorasHook`: `apply` loads and activates (the hashes for infotext), `undo`
    disables (they stay loaded, listed by `warm`); a failing `apply` leaves them off."""
    import threading
    from types import SimpleNamespace

    from workers.options.loras import LorasHook

    hook, pipe = LorasHook(), RecordingPipe()
    cache = SimpleNamespace(lock=threading.RLock(), warm_adapters=8, fetcher=FileFetcher())
    entry = SimpleNamespace(family="sd", parts={})
    hashes = hook.apply(cache, pipe, entry, [{"name": files["a"], "scale": 0.5}])
    assert list(hashes) == [files["a"]] and pipe.calls[-1][0] == "set"
    hook.undo(cache, pipe, entry, [{"name": files["a"], "scale": 0.5}])
    assert pipe.calls[-1] == ("disable",) and hook.warm(entry) == [files["a"]]
    with pytest.raises(ModelError):
        hook.apply(cache, pipe, entry, [{"name": files["b"] + ".missing.safetensors", "scale": 1.0}])
    assert pipe.calls[-1] == ("disable",)  # nothing switched back on
