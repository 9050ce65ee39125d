"""diffusers SDXL pipeline -> the original single-file (SGM) layout, as SDXL checkpoints are shared.

UNet and VAE as in SD (`tests.support.ldm`, plus SDXL's added embedding under `label_emb.0`), the
first text encoder (CLIP-L, transformers layout) under `conditioner.embedders.0.transformer.`, the
second (OpenCLIP bigG layout: fused q/k/v `in_proj`, `resblocks`, `ln_1`, `c_fc`, a transposed
`text_projection`) under `conditioner.embedders.1.model.`. The inverse of what diffusers'
`from_single_file` reads, written for the tests only.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.support.ldm import _load, convert_unet, convert_vae

CLIP_L_PREFIX = "conditioner.embedders.0.transformer.text_model."
OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."
ADD_EMBEDDING = {"add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2."}
"""SDXL's added (pooled text + size/crop) embedding: diffusers prefix -> SGM prefix."""
OPEN_CLIP_LAYER = (("self_attn.out_proj.", "attn.out_proj."), ("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."),
                   ("mlp.fc1.", "mlp.c_fc."), ("mlp.fc2.", "mlp.c_proj."))
"""Names inside one encoder layer: transformers CLIP -> OpenCLIP."""


def convert_sdxl_unet(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """The UNet, with the added embedding moved where SGM keeps it."""
    added = {k: v for k, v in state.items() if k.startswith(tuple(ADD_EMBEDDING))}
    out = convert_unet({k: v for k, v in state.items() if k not in added}, config)
    for key, value in added.items():
        old = next(p for p in ADD_EMBEDDING if key.startswith(p))
        out["model.diffusion_model." + ADD_EMBEDDING[old] + key[len(old):]] = value
    return out


def convert_open_clip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIPTextModelWithProjection weights -> OpenCLIP keys."""
    state = {k.removeprefix("text_model."): v for k, v in state.items()}
    out = {
        "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": state.pop("final_layer_norm.weight"),
        "ln_final.bias": state.pop("final_layer_norm.bias"),
        "text_projection": state.pop("text_projection.weight").T.contiguous(),
    }
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")})
    for n in layers:
        src, dst = f"encoder.layers.{n}.", f"transformer.resblocks.{n}."
        for kind in ("weight", "bias"):
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(
                [state.pop(f"{src}self_attn.{p}_proj.{kind}") for p in ("q", "k", "v")])
        for key in [k for k in state if k.startswith(src)]:
            rest = key[len(src):]
            for old, new in OPEN_CLIP_LAYER:
                if rest.startswith(old):
                    rest = new + rest[len(old):]
                    break
            out[dst + rest] = state.pop(key)
    state.pop("embeddings.position_ids", None)
    if state:
        raise KeyError(f"OpenCLIP has no counterpart for {sorted(state)}")
    return {OPEN_CLIP_PREFIX + k: v for k, v in out.items()}


def to_sgm(folder: Path) -> dict[str, torch.Tensor]:
    """The whole SDXL diffusers pipeline in `folder` as one single-file state dict."""
    folder = Path(folder)

    def config(name: str) -> dict:
        return json.loads((folder / name / "config.json").read_text(encoding="utf-8"))

    out = convert_sdxl_unet(_load(folder / "unet"), config("unet"))
    out.update(convert_vae(_load(folder / "vae"), config("vae")))
    out.update({CLIP_L_PREFIX + k.removeprefix("text_model."): v for k, v in _load(folder / "text_encoder").items()})
    out.update(convert_open_clip(_load(folder / "text_encoder_2")))
    return out


def write_sdxl_single_file(folder: Path, target: Path) -> Path:
    """Write the SDXL pipeline in `folder` as one `.safetensors` file at `target`."""
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in to_sgm(folder).items()}, str(target), metadata={"format": "pt"})
    return target
