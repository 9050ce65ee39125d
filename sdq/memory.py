"""Device memory a model needs: its weights and per-pixel working memory per dtype, and what a worker
needs to run an item. Torch-free (the producer writes a job's need, the worker compares it with its own)."""
from __future__ import annotations

from dataclasses import dataclass, replace


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

    def need_gb(self, dtype: str, pixels: int, cast_from: str | None = None) -> float:
        """GiB of device memory to make one `pixels`-pixel image in `dtype` (`fp16`, `bf16`, `fp32`);
        `cast_from`: the dtype of the weight files the worker casts at load (`load_cast`), if any."""
        for name in (dtype, cast_from or dtype):
            if name not in HALF_BYTES:
                raise ValueError(f"unknown dtype {name!r}; known: {', '.join(HALF_BYTES)}")
        run = HALF_BYTES[dtype] * (self.weights_gb + self.gb_per_mpx * pixels / 2**20)
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


def required_gb(requires: dict, dtype: str, pixels: int, cast_from: str | None = None) -> float | None:
    """Device memory (GiB) an item of `pixels` output pixels needs on a `dtype` worker (that casts
    `cast_from` weight files at load: `load_cast`): the larger of the caller's `min_memory_gb` and the
    model family's need (`requires.memory`); None: no need stated."""
    needs = [float(requires["min_memory_gb"])] if requires.get("min_memory_gb") else []
    if requires.get("memory"):
        needs.append(Memory.from_record(requires["memory"]).need_gb(dtype, pixels, cast_from))
    return max(needs) if needs else None
