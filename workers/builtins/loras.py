"""Built-in tiny LoRA adapters for `builtin:tiny-sd` (and `tiny-sdxl`, `tiny-flux`): small random low-rank
updates of the denoiser's attention projections, generated deterministically (fixed seed) like the built-in
models.

`builtin:tiny-lora` is written in the diffusers/peft layout (`unet.<module>.lora_A.weight` /
`lora_B.weight`), `builtin:tiny-lora-kohya` holds the same update in A1111/Kohya naming
(`lora_unet_<module_with_underscores>.lora_down.weight` / `lora_up.weight` / `alpha`), so the loader's
Kohya conversion is exercised: both make the same images. `builtin:tiny-lora-flux` updates `builtin:tiny-flux`'s
transformer in diffusers' Flux layout (`transformer.<module>.lora_A.weight` / `lora_B.weight`: the double
blocks' image and text attention, the single blocks' attention and MLP projections), as diffusers'
`save_lora_weights` and AI-Toolkit write them.
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

FLUX_ARCHITECTURE = "flux-1-dev/lora"
"""The `modelspec.architecture` a Flux.1 dev LoRA states."""

FLUX_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                "attn.add_v_proj", "attn.to_add_out", "proj_mlp", "proj_out")
"""The Flux transformer's block modules (name endings) `builtin:tiny-lora-flux` changes."""

FLUX_B_STD = 0.5
"""Spread of the Flux adapter's up matrices: its transformer is narrower (32 wide) than tiny-sd's UNet, so a
larger update is needed for the image to change as visibly."""


def lora_weights(unet: torch.nn.Module | None = None, targets: tuple[str, ...] = TARGETS,
                 b_std: float = B_STD) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Module name -> (A: rank x in, B: out x rank) for every Linear of `unet` (default: tiny-sd's UNet)
    inside a block whose name ends with one of `targets`."""
    if unet is None:
        from workers.builtins.parts import tiny_unet

        unet = tiny_unet()
    gen = torch.Generator().manual_seed(SEED)
    out = {}
    for name, module in unet.named_modules():
        if name.endswith(targets) and "blocks." in name and isinstance(module, torch.nn.Linear):
            a = torch.randn(RANK, module.in_features, generator=gen) / module.in_features ** 0.5
            b = torch.randn(module.out_features, RANK, generator=gen) * b_std
            out[name] = (a.contiguous(), b.contiguous())
    return out


def build_tiny_lora(path: Path, unet: torch.nn.Module | None = None, architecture: str | None = None,
                    prefix: str = "unet", weights: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
    """Write `builtin:tiny-lora` (diffusers/peft layout) to `path/adapter.safetensors`; `architecture`
    is written as `modelspec.architecture` metadata, as trainers do (the tiny UNets' widths do not
    tell the families apart); `prefix` is the denoiser's component name, `weights` the update (default:
    `lora_weights(unet)`)."""
    from safetensors.torch import save_file

    tensors = {}
    for name, (a, b) in (weights if weights is not None else lora_weights(unet)).items():
        tensors[f"{prefix}.{name}.lora_A.weight"] = a
        tensors[f"{prefix}.{name}.lora_B.weight"] = b
    path.mkdir(parents=True, exist_ok=True)
    # One metadata key only: safetensors writes several in a per-process random order (not byte-stable).
    meta = {"modelspec.architecture": architecture} if architecture else {"format": "pt"}
    save_file(tensors, str(path / ADAPTER_FILE), metadata=meta)


def build_tiny_lora_sdxl(path: Path) -> None:
    """Write `builtin:tiny-lora-sdxl`: the same kind of update over tiny-sdxl's UNet (diffusers layout)."""
    from workers.builtins.families import tiny_sdxl_unet

    build_tiny_lora(path, tiny_sdxl_unet(), SDXL_ARCHITECTURE)


def build_tiny_lora_flux(path: Path) -> None:
    """Write `builtin:tiny-lora-flux`: an update of tiny-flux's transformer blocks (diffusers' Flux layout)."""
    from workers.builtins.flux import tiny_flux_transformer

    weights = lora_weights(tiny_flux_transformer(), FLUX_TARGETS, FLUX_B_STD)
    build_tiny_lora(path, architecture=FLUX_ARCHITECTURE, prefix="transformer", weights=weights)


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
