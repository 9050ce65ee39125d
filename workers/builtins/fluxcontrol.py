"""Built-in tiny Flux ControlNet: `builtin:tiny-controlnet-flux`, a `FluxControlNetModel` for `builtin:tiny-flux`.

Generated locally from a fixed seed (never downloaded), like the SD ControlNets in `workers.builtins.registry`:
diffusers' own `FluxControlNetModel.from_transformer` over `builtin:tiny-flux`'s transformer (its embedders and
first blocks copied), with seeded random weights in the layers a fresh ControlNet starts at zero (the control
image's embedder and the per-block output projections), so that the control image changes the picture.
"""
from __future__ import annotations

from pathlib import Path

import torch

from workers.builtins.flux import tiny_flux_transformer

FLUX_CONTROLNET_INIT_STD = 0.3
"""Std of the random weights of the zero-initialised layers (at 0 the ControlNet would change nothing; at 0.3 two
control images give images ~10/255 apart in mean at 64x64 and 4 steps)."""


def tiny_flux_controlnet(seed: int = 36):
    """A FluxControlNetModel shaped to `builtin:tiny-flux`'s transformer: 1 double- and 1 single-stream block,
    the control image VAE-encoded and packed like the latents (no conditioning embedding: Flux.1 dev's ControlNets'
    layout), not a union model."""
    from diffusers import FluxControlNetModel

    net = FluxControlNetModel.from_transformer(tiny_flux_transformer(), num_layers=1, num_single_layers=1,
                                               attention_head_dim=16, num_attention_heads=2).eval()
    torch.manual_seed(seed)
    with torch.no_grad():
        for layer in [net.controlnet_x_embedder, *net.controlnet_blocks, *net.controlnet_single_blocks]:
            layer.weight.normal_(0, FLUX_CONTROLNET_INIT_STD)
            layer.bias.zero_()
    return net


def build_tiny_controlnet_flux(path: Path) -> None:
    """Write `builtin:tiny-controlnet-flux` to `path` (`config.json` and its safetensors weights)."""
    tiny_flux_controlnet().save_pretrained(path, safe_serialization=True)


BUILDERS = {"tiny-controlnet-flux": build_tiny_controlnet_flux}
"""Built-in model name (after `builtin:`) to its generator (joined into `workers.builtins.registry.BUILDERS`)."""
