"""How a CPU worker computes: dtype (fp32, or bf16 where the CPU has it natively) and backend (eager,
channels_last, torch.compile), chosen by a flag or by a short measurement on this CPU at start.

bf16 pays only on CPUs that compute it natively (`amx_bf16` / `avx512_bf16` on x86, `bf16` on Arm): elsewhere
torch emulates it and it is slower than fp32, so a worker there keeps fp32 and says why. `fastest` times a
small UNet-like block (GroupNorm, SiLU, 3x3 convolutions, attention) in each candidate path, in interleaved
rounds, and keeps the fastest one that beats eager fp32 by `MIN_GAIN`; `compile` is never picked by it
(compiling takes minutes on a few cores) and must be asked for; it compiles the denoiser's repeated blocks
(`apply_cpu_path`), and LoRA adapters on a compiled model are hot-swapped (`workers.options.loras`).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

CPUINFO = Path("/proc/cpuinfo")
"""Where the CPU's flags are read (tests pass other text)."""

BF16_FLAGS = ("amx_bf16", "avx512_bf16", "bf16")
"""CPU flags that mean native bfloat16 arithmetic (x86 AMX / AVX-512 BF16, Arm's BF16 extension)."""

SHOWN_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2", "bf16", "sve", "asimd")
"""The flags a capability record and the benchmark show (the ones that decide a path)."""

BACKENDS = ("eager", "channels_last", "compile")
"""Backends a CPU worker can run (`--cpu-path`); `fastest` chooses among eager and channels_last."""

CPU_PATHS = (*BACKENDS, "fastest")
"""Values of `--cpu-path`."""

MIN_GAIN = 1.5
"""`fastest` leaves eager fp32 only for a path at least this much faster in the probe. The probe (one
UNet level) flatters channels_last: on an avx2-only AMD EPYC it ran channels_last 1.3-1.5x faster while the
full-size SD 1.5 UNet ran it 0.97-1.1x (docs/MODELS.md), so a smaller gain is not taken as one."""

PROBE_ROUNDS = 3
"""`fastest` times its candidates in this many interleaved rounds and keeps each one's best: a burst of
load from other processes then slows one round of every candidate, not all of one candidate's."""

IMAGE_TOLERANCE = {"fp32": 0.5, "bf16": 1.5}
"""dtype -> the largest mean absolute pixel difference (0-255) from eager fp32 that a path computing in
it may make on the same inputs, whatever its backend (tests check every path on the tiny model, where
bf16 differs by ~0.6, channels_last and compile by ~0, and another prompt by ~2.3)."""


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The CPU's feature flags, from `cpuinfo` text (default: /proc/cpuinfo; empty when unreadable)."""
    if cpuinfo is None:
        try:
            cpuinfo = CPUINFO.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("flags", "features"):  # x86 / Arm
            return set(value.split())
    return set()


def cpu_model(cpuinfo: str | None = None) -> str:
    """The CPU's model name (x86 `model name`, else the machine type)."""
    import platform

    try:
        text = cpuinfo if cpuinfo is not None else CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in ("model name", "cpu model", "hardware"):
            return value.strip()
    return platform.processor() or platform.machine() or "cpu"


def bf16_native_cpu(flags: set[str]) -> bool:
    """True when a CPU with these flags computes bfloat16 natively."""
    return any(f in flags for f in BF16_FLAGS)


@dataclass(frozen=True)
class CpuPath:
    """The path a CPU worker runs and why (published in its capability record)."""

    dtype: str = "fp32"
    backend: str = "eager"
    reason: str = "default: eager fp32"
    bf16_native: bool = False
    flags: list[str] = field(default_factory=list)
    probe_ms: dict[str, float] = field(default_factory=dict)  # "dtype/backend" -> the probe's time

    def record(self) -> dict[str, Any]:
        """The capability record's `cpu_path`."""
        return asdict(self)


class _Probe(nn.Module):
    """A small block shaped like one level of SD's UNet at 256x256: a ResNet block and self-attention."""

    def __init__(self, channels: int = 320, heads: int = 8) -> None:
        super().__init__()
        self.heads = heads
        self.res = nn.Sequential(nn.GroupNorm(32, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1),
                                 nn.GroupNorm(32, channels), nn.SiLU(), nn.Conv2d(channels, channels, 3, padding=1))
        self.qkv, self.out = nn.Linear(channels, 3 * channels), nn.Linear(channels, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x + self.res(x)
        b, c, hh, ww = h.shape
        t = h.flatten(2).transpose(1, 2)
        q, k, v = (p.reshape(b, -1, self.heads, c // self.heads).transpose(1, 2) for p in self.qkv(t).chunk(3, -1))
        a = torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, -1, c)
        return h + self.out(a).transpose(1, 2).reshape(b, c, hh, ww)


def probe_ms(dtype: str, backend: str, size: int = 16, reps: int = 2) -> float:
    """Best-of-`reps` milliseconds of one probe block call in this path (batch 2, as with CFG)."""
    torch.manual_seed(0)
    tdtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    block = _Probe().eval().to(tdtype)
    x = torch.randn(2, 320, size, size, dtype=tdtype)
    if backend == "channels_last":
        block, x = block.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    best = float("inf")
    with torch.inference_mode():
        block(x)  # warm-up: oneDNN picks and caches its kernels
        for _ in range(reps):
            t0 = time.perf_counter()
            block(x)
            best = min(best, time.perf_counter() - t0)
    return round(best * 1000, 2)


def resolve_cpu_path(dtype: str, backend: str, force: bool = False, cpuinfo: str | None = None,
                     probe=probe_ms) -> CpuPath:
    """The path for `--dtype` (auto, fp32, bf16) and `--cpu-path` (eager, channels_last, compile,
    fastest) on this CPU. bf16 without native support keeps fp32 (unless `force`), with the reason."""
    # 1. Check inputs and read the CPU.
    if backend not in CPU_PATHS:
        raise ValueError(f"--cpu-path {backend!r}: expected one of {', '.join(CPU_PATHS)}")
    if dtype not in ("auto", "fp32", "bf16"):
        raise ValueError(f"--dtype {dtype!r} for a CPU path: expected auto, fp32 or bf16")
    flags = cpu_flags(cpuinfo)
    native = bf16_native_cpu(flags)
    shown = sorted(f for f in flags if f in SHOWN_FLAGS)
    no_bf16 = (f"this CPU has no native bfloat16 (none of {', '.join(BF16_FLAGS)} in its flags), so bf16 "
               f"would be emulated and slower than fp32")
    # 2. An explicit dtype.
    if dtype == "bf16" and not native and not force:
        return _chosen("fp32", "eager" if backend == "fastest" else backend,
                       f"--dtype bf16 asked, fp32 kept: {no_bf16} (--force-dtype runs it anyway)", native, shown)
    if backend != "fastest":
        dt = "fp32" if dtype == "auto" else dtype
        return _chosen(dt, backend, f"--dtype {dtype} --cpu-path {backend}", native, shown)
    # 3. `fastest`: time each candidate; bf16 only where native, and only when it pays.
    dtypes = ["fp32", "bf16"] if dtype == "auto" else [dtype]
    if dtype == "auto" and not native:
        dtypes = ["fp32"]
    times: dict[str, float] = {}
    for _ in range(PROBE_ROUNDS):
        for dt in dtypes:
            for be in ("eager", "channels_last"):
                key = f"{dt}/{be}"
                times[key] = min(times.get(key, float("inf")), probe(dt, be))
    base = times.get("fp32/eager") or min(times.values())
    best = min(times, key=times.get)
    why = f"--cpu-path fastest: {best} measured fastest ({times[best]} ms vs fp32/eager {base} ms)"
    if times[best] * MIN_GAIN > base and "fp32/eager" in times and best != "fp32/eager":
        why += f", less than {MIN_GAIN}x: fp32/eager stays"
        best = "fp32/eager"
    dt, be = best.split("/")
    if dtype == "auto" and not native:
        why += f"; bf16 not tried: {no_bf16}"
    return _chosen(dt, be, why, native, shown, times)


def _chosen(dtype: str, backend: str, reason: str, native: bool, flags: list[str],
            times: dict[str, float] | None = None) -> CpuPath:
    path = CpuPath(dtype, backend, reason, native, flags, times or {})
    (log.warning if "kept" in reason else log.info)("CPU path %s/%s: %s", dtype, backend, reason)
    return path


def apply_cpu_path(pipe, backend: str) -> None:
    """Put a loaded pipeline on its CPU backend: channels_last memory format for the UNet and VAE, or
    the denoiser's repeated blocks compiled in place (`compile_repeated_blocks`: one block is compiled and
    its graph serves every block of its class, several times faster to compile than the whole model; a model
    that declares no repeated blocks is compiled whole). The first calls at each new size compile."""
    if backend == "channels_last":
        for name in ("unet", "vae"):
            module = getattr(pipe, name, None)
            if module is not None:
                module.to(memory_format=torch.channels_last)
    elif backend == "compile":
        net = getattr(pipe, "transformer", None) or getattr(pipe, "unet", None)
        if net is None:
            return
        if getattr(net, "_repeated_blocks", None) and hasattr(net, "compile_repeated_blocks"):
            net.compile_repeated_blocks()
        else:
            net.compile()


def compiled_blocks(net: nn.Module) -> int:
    """How many of `net`'s modules (itself included) run compiled."""
    return sum(getattr(m, "_compiled_call_impl", None) is not None for m in net.modules())
