"""Device memory a model needs: its weights and per-pixel working memory per dtype, and what a worker
needs to run an item. Torch-free (the producer writes a job's need, the worker compares it with its own)."""
from __future__ import annotations

from dataclasses import dataclass, replace


OFFLOAD_SETTINGS = ("auto", "never", "model", "group")
"""`sdq worker --offload`: offload only when the whole model does not fit (`auto`), never, or always with
diffusers' model CPU offload (`model`) or group offload (`group`)."""

OFFLOAD_MODES = ("model", "group")
"""How a model runs offloaded: one whole component on the device at a time (`model`: diffusers'
`enable_model_cpu_offload`), or one block group at a time (`group`: `enable_group_offload`)."""

GROUP_SHARE = 0.1
"""The share of a model's weights group offload holds on the device at a time: one block group of its
largest component, its top-level layers and the next group prefetched, with room to spare (an estimate,
not measured on a GPU: docs/MODELS.md)."""

HALF_BYTES = {"fp16": 1.0, "bf16": 1.0, "fp32": 2.0}
"""Memory of a dtype relative to half precision."""


@dataclass(frozen=True)
class Memory:
    """Device memory a model needs, in half precision: its weights plus working memory that grows
    with the output's pixel count (activations, the VAE decode). fp32 doubles both. A worker that casts
    its weight files to another dtype while loading, on a device whose memory also holds those files'
    pages (a CPU), peaks at load: every cast copy plus the largest component's files."""

    weights_gb: float
    gb_per_mpx: float
    largest_share: float = 1.0
    """The largest component's share of `weights_gb`: its files are what a cast load holds beside the
    copies (components load one after another). The UNet's share of the parameters plus ~0.05 (SD: 0.67-0.81
    by parameters, 0.75 fits the measured peaks, docs/MODELS.md)."""

    def need_gb(self, dtype: str, pixels: int, cast_from: str | None = None, offload: str | None = None) -> float:
        """GiB of device memory to make one `pixels`-pixel image in `dtype` (`fp16`, `bf16`, `fp32`);
        `cast_from`: the dtype of the weight files the worker casts at load (`load_cast`), if any;
        `offload`: run offloaded (`OFFLOAD_MODES`): the device then holds the largest component (`model`)
        or `GROUP_SHARE` of the weights (`group`) beside the working memory (the cast is in host RAM)."""
        for name in (dtype, cast_from or dtype):
            if name not in HALF_BYTES:
                raise ValueError(f"unknown dtype {name!r}; known: {', '.join(HALF_BYTES)}")
        work = self.gb_per_mpx * pixels / 2**20
        if offload is not None:
            if offload not in OFFLOAD_MODES:
                raise ValueError(f"unknown offload mode {offload!r}; known: {', '.join(OFFLOAD_MODES)}")
            held = self.weights_gb * (self.largest_share if offload == "model" else GROUP_SHARE)
            return round(HALF_BYTES[dtype] * (held + work), 2)
        run = HALF_BYTES[dtype] * (self.weights_gb + work)
        if cast_from is None or cast_from == dtype:
            return round(run, 2)
        load = (HALF_BYTES[dtype] + HALF_BYTES[cast_from] * self.largest_share) * self.weights_gb
        return round(max(run, load), 2)

    def record(self) -> dict[str, float]:
        """The JSON form a job's `requires.memory` holds."""
        return {"weights_gb": self.weights_gb, "gb_per_mpx": self.gb_per_mpx, "largest_share": self.largest_share}

    @classmethod
    def from_record(cls, record: dict) -> Memory:
        """Back from `record()` (a record without `largest_share`, from before it, counts all the weights)."""
        return cls(float(record["weights_gb"]), float(record["gb_per_mpx"]), float(record.get("largest_share", 1.0)))


def load_cast(device: str, dtype: str) -> str | None:
    """The dtype of the weight files a worker on `device` computing in `dtype` casts at load, where the
    cast counts against its memory: a CPU (its RAM holds the files' pages too) in bf16 or fp16 reads fp32
    files (the usual published form, and the built-ins'); None on a GPU or in fp32 (the cast, if any, is
    in host RAM, or there is none)."""
    return "fp32" if device.startswith("cpu") and dtype != "fp32" else None


SHARE_MARGIN = 0.05
"""What `Memory.largest_share` adds to the largest component's share of the parameters."""


def quantized(memory: Memory, file_gb: float) -> Memory:
    """The need of a model whose denoiser (its largest component) is a quantized file of `file_gb` GiB: the
    other components as before, plus the file as stored (a GGUF transformer is dequantized a layer at a
    time). Counted at the half-precision rate, so an fp32 worker's need is overstated."""
    rest = memory.weights_gb * (1 - (memory.largest_share - SHARE_MARGIN))
    weights = round(rest + file_gb, 2)
    return replace(memory, weights_gb=weights, largest_share=round(min(1.0, file_gb / weights + SHARE_MARGIN), 2))


def required_gb(requires: dict, dtype: str, pixels: int, cast_from: str | None = None,
                offload: str | None = None) -> float | None:
    """Device memory (GiB) an item of `pixels` output pixels needs on a `dtype` worker (that casts
    `cast_from` weight files at load: `load_cast`; that runs the model offloaded, `offload`): the larger of
    the caller's `min_memory_gb` and the model family's need (`requires.memory`); None: no need stated."""
    needs = [float(requires["min_memory_gb"])] if requires.get("min_memory_gb") else []
    if requires.get("memory"):
        needs.append(Memory.from_record(requires["memory"]).need_gb(dtype, pixels, cast_from, offload))
    return max(needs) if needs else None


def modes(offload: str) -> tuple[str | None, ...]:
    """The memory modes a worker started with `--offload offload` may run a model in, preferred first
    (None: the whole model on the device)."""
    if offload not in OFFLOAD_SETTINGS:
        raise ValueError(f"unknown offload setting {offload!r}; known: {', '.join(OFFLOAD_SETTINGS)}")
    return {"never": (None,), "auto": (None, *OFFLOAD_MODES), "model": ("model",), "group": ("group",)}[offload]


@dataclass(frozen=True)
class Fit:
    """How a worker runs an item: `mode` (None: the whole model on its device; else an `OFFLOAD_MODES`
    one), the need in that mode (None: no need stated), and whether its memory holds it (when it does not:
    the last mode tried, the least memory-hungry one)."""

    mode: str | None
    need_gb: float | None
    fits: bool


def fit(requires: dict, dtype: str, pixels: int, memory_gb: float | None, cast_from: str | None = None,
        offload: str = "never") -> Fit:
    """The first of the worker's memory modes (`modes(offload)`) in which an item of `pixels` pixels fits
    a device of `memory_gb` GiB (None: unknown, so anything fits): a worker holds a model whole when it can,
    offloads it only when it must (`auto`), and never takes an item that does not fit even offloaded."""
    tried = Fit(None, None, True)
    for mode in modes(offload):
        need = required_gb(requires, dtype, pixels, cast_from, mode)
        tried = Fit(mode, need, need is None or memory_gb is None or need <= memory_gb)
        if tried.fits:
            return tried
    return tried
