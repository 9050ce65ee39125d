"""diffusers -> original Stable Diffusion (LDM) checkpoint layout, for UNet, VAE and CLIP text encoder.

diffusers ships only the other direction (`from_single_file` converts LDM keys to diffusers keys).
This is the small inverse needed to write a diffusers SD-v1 pipeline (e.g. `builtin:tiny-sd`) as
one `.safetensors` file laid out like `sd-v1-4.ckpt`: every UNet key under `model.diffusion_model.`,
VAE keys under `first_stage_model.`, CLIP keys under `cond_stage_model.transformer.text_model.`.
The tests load such a file back through the worker's real single-file path.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."

UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
    "class_embedding.": "label_emb.",
}
"""UNet modules outside the blocks: diffusers prefix -> LDM prefix."""

UNET_RESNET = (("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
               ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection"))
"""Names inside a UNet ResNet block: diffusers -> LDM."""

VAE_ATTENTION = (("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out"))
"""Names inside the VAE's mid-block attention: diffusers -> LDM (where they are 1x1 convolutions)."""


def _load(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors weights in {folder}")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    return state


def _rename(key: str, pairs) -> str:
    head, _, leaf = key.rpartition(".")
    for old, new in pairs:
        if head == old or head.startswith(old + "."):
            return new + head[len(old):] + "." + leaf
    return key


def unet_map(config: dict) -> dict[str, str]:
    """diffusers UNet2DConditionModel module prefix -> LDM prefix (blocks, mid block, top level)."""
    layers, n = config["layers_per_block"], len(config["block_out_channels"])
    out = dict(UNET_TOP)
    # 1. Down path: input_blocks.0 is conv_in; each level has `layers` (resnet, attention) blocks,
    #    then one downsampler block except the last level.
    i = 1
    for b in range(n):
        for j in range(layers):
            out[f"down_blocks.{b}.resnets.{j}."] = f"input_blocks.{i}.0."
            out[f"down_blocks.{b}.attentions.{j}."] = f"input_blocks.{i}.1."
            i += 1
        if b < n - 1:
            out[f"down_blocks.{b}.downsamplers.0.conv."] = f"input_blocks.{i}.0.op."
            i += 1
    # 2. Middle: resnet, attention, resnet.
    out.update({"mid_block.resnets.0.": "middle_block.0.", "mid_block.attentions.0.": "middle_block.1.",
                "mid_block.resnets.1.": "middle_block.2."})
    # 3. Up path: `layers + 1` blocks per level; the upsampler sits in the level's last block, after
    #    its attention when the level has one.
    i = 0
    for b in range(n):
        cross = "CrossAttn" in config["up_block_types"][b]
        for j in range(layers + 1):
            out[f"up_blocks.{b}.resnets.{j}."] = f"output_blocks.{i}.0."
            out[f"up_blocks.{b}.attentions.{j}."] = f"output_blocks.{i}.1."
            if j == layers and b < n - 1:
                out[f"up_blocks.{b}.upsamplers.0.conv."] = f"output_blocks.{i}.{2 if cross else 1}.conv."
            i += 1
    return out


def convert_unet(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """diffusers UNet weights -> LDM keys under `model.diffusion_model.`."""
    prefixes = sorted(unet_map(config).items(), key=lambda kv: -len(kv[0]))
    out = {}
    for key, value in state.items():
        for old, new in prefixes:
            if key.startswith(old):
                rest = key[len(old):]
                if ".resnets." in old:
                    rest = _rename(rest, UNET_RESNET)
                out[UNET_PREFIX + new + rest] = value
                break
        else:
            raise KeyError(f"UNet key {key!r} has no LDM counterpart")
    return out


def convert_vae(state: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    """diffusers AutoencoderKL weights -> LDM keys under `first_stage_model.`."""
    n = len(config["block_out_channels"])
    prefixes = {"encoder.conv_norm_out.": "encoder.norm_out.", "decoder.conv_norm_out.": "decoder.norm_out."}
    for part in ("encoder", "decoder"):
        prefixes[f"{part}.mid_block.resnets.0."] = f"{part}.mid.block_1."
        prefixes[f"{part}.mid_block.resnets.1."] = f"{part}.mid.block_2."
        prefixes[f"{part}.mid_block.attentions.0."] = f"{part}.mid.attn_1."
    for b in range(n):
        prefixes[f"encoder.down_blocks.{b}.resnets."] = f"encoder.down.{b}.block."
        prefixes[f"encoder.down_blocks.{b}.downsamplers.0."] = f"encoder.down.{b}.downsample."
        # LDM numbers decoder levels from the lowest resolution up, diffusers the other way.
        prefixes[f"decoder.up_blocks.{b}.resnets."] = f"decoder.up.{n - 1 - b}.block."
        prefixes[f"decoder.up_blocks.{b}.upsamplers.0."] = f"decoder.up.{n - 1 - b}.upsample."
    ordered = sorted(prefixes.items(), key=lambda kv: -len(kv[0]))
    out = {}
    for key, value in state.items():
        new_key = key
        for old, new in ordered:
            if key.startswith(old):
                rest = key[len(old):]
                if ".attentions." in old:
                    rest = _rename(rest, VAE_ATTENTION)
                    if value.ndim == 2:  # LDM keeps these as 1x1 convolutions
                        value = value[:, :, None, None]
                new_key = new + rest.replace("conv_shortcut", "nin_shortcut")
                break
        out[VAE_PREFIX + new_key] = value
    return out


def convert_clip(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIPTextModel weights -> LDM keys under `cond_stage_model.transformer.text_model.`."""
    return {CLIP_PREFIX + key.removeprefix("text_model."): value for key, value in state.items()}


def to_ldm(folder: Path) -> dict[str, torch.Tensor]:
    """The whole SD-v1 diffusers pipeline in `folder` as one LDM-layout state dict."""
    folder = Path(folder)

    def config(name: str) -> dict:
        return json.loads((folder / name / "config.json").read_text(encoding="utf-8"))

    out = convert_unet(_load(folder / "unet"), config("unet"))
    out.update(convert_vae(_load(folder / "vae"), config("vae")))
    out.update(convert_clip(_load(folder / "text_encoder")))
    return out


def write_single_file(folder: Path, target: Path) -> Path:
    """Write the pipeline in `folder` as one original-layout `.safetensors` file at `target`."""
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in to_ldm(folder).items()}
    save_file(state, str(target), metadata={"format": "pt"})
    return target
