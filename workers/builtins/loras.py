"""Built-in tiny LoRA adapters for `builtin:tiny-sd`: small random low-rank updates of its UNet's
attention projections, generated deterministically (fixed seed) like the built-in models.

`builtin:tiny-lora` is written in the diffusers/peft layout (`unet.<module>.lora_A.weight` /
`lora_B.weight`), `builtin:tiny-lora-kohya` holds the same update in A1111/Kohya naming
(`lora_unet_<module_with_underscores>.lora_down.weight` / `lora_up.weight` / `alpha`), so the loader's
Kohya conversion is exercised: both make the same images.
"""
from __future__ import annotations

from pathlib import Path

import torch

from sdq.loras import ADAPTER_FILE

RANK = 4
"""Rank of the built-in adapters' updates."""

SEED = 11
"""Seed of the built-in adapters' weights."""

B_STD = 0.15
"""Spread of the up (B) matrices: enough to change a tiny-sd image clearly, not enough to wreck it."""

SDXL_ARCHITECTURE = "stable-diffusion-xl-v1-base/lora"
"""The `modelspec.architecture` an SDXL LoRA states."""

TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0",
           "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0")
"""Attention projections (module-name endings) the adapters change."""


def lora_weights(unet: torch.nn.Module | None = None) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """UNet module name -> (A: rank x in, B: out x rank) for every targeted Linear of `unet`
    (default: tiny-sd's UNet)."""
    if unet is None:
        from workers.builtins.parts import tiny_unet

        unet = tiny_unet()
    gen = torch.Generator().manual_seed(SEED)
    out = {}
    for name, module in unet.named_modules():
        if name.endswith(TARGETS) and isinstance(module, torch.nn.Linear):
            a = torch.randn(RANK, module.in_features, generator=gen) / module.in_features ** 0.5
            b = torch.randn(module.out_features, RANK, generator=gen) * B_STD
            out[name] = (a.contiguous(), b.contiguous())
    return out


def build_tiny_lora(path: Path, unet: torch.nn.Module | None = None, architecture: str | None = None) -> None:
    """Write `builtin:tiny-lora` (diffusers/peft layout) to `path/adapter.safetensors`; `architecture`
    is written as `modelspec.architecture` metadata, as trainers do (the tiny UNets' widths do not
    tell the families apart)."""
    from safetensors.torch import save_file

    tensors = {}
    for name, (a, b) in lora_weights(unet).items():
        tensors[f"unet.{name}.lora_A.weight"] = a
        tensors[f"unet.{name}.lora_B.weight"] = b
    path.mkdir(parents=True, exist_ok=True)
    # One metadata key only: safetensors writes several in a per-process random order (not byte-stable).
    meta = {"modelspec.architecture": architecture} if architecture else {"format": "pt"}
    save_file(tensors, str(path / ADAPTER_FILE), metadata=meta)


def build_tiny_lora_sdxl(path: Path) -> None:
    """Write `builtin:tiny-lora-sdxl`: the same kind of update over tiny-sdxl's UNet (diffusers layout)."""
    from workers.builtins.families import tiny_sdxl_unet

    build_tiny_lora(path, tiny_sdxl_unet(), SDXL_ARCHITECTURE)


def build_tiny_lora_kohya(path: Path) -> None:
    """Write `builtin:tiny-lora-kohya` (A1111/Kohya naming, alpha = rank so the scale is 1) to `path`."""
    from safetensors.torch import save_file

    tensors = {}
    for name, (a, b) in lora_weights().items():
        key = "lora_unet_" + name.replace(".", "_")
        tensors[f"{key}.lora_down.weight"] = a
        tensors[f"{key}.lora_up.weight"] = b
        tensors[f"{key}.alpha"] = torch.tensor(float(RANK))
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / ADAPTER_FILE), metadata={"format": "pt"})
