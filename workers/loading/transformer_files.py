"""Models whose transformer comes as its own file: a Flux or Z-Image transformer checkpoint (what model sites
publish: the transformer alone, `.safetensors` or quantized `.gguf`) with the base model's other components from a
local diffusers config folder, or a diffusers folder whose `transformer/` holds a GGUF file.

The transformer is opened with its class's `from_single_file` (diffusers converts the original BFL key
names; a GGUF file loads with diffusers' GGUF quantizer, dequantizing each layer as it computes), and the
pipeline with `from_pretrained` over the config folder with that transformer passed in.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from sdq import families
from sdq.sources import single_file_config

GGUF_SUFFIX = ".gguf"

TRANSFORMER_FILE_FAMILIES = (families.FLUX, families.FLUX2, families.FLUX2_KLEIN, families.QWEN_IMAGE,
                             families.QWEN_IMAGE_EDIT, families.Z_IMAGE)
"""Families whose `.safetensors` single file beside a config folder is the transformer alone (as published)."""


def transformer_file(path: Path) -> tuple[Path, Path] | None:
    """(config folder, transformer file) when the model at `path` is opened that way: a `.gguf` file or a
    Flux or Qwen-Image single file with its config folder beside it, or a folder with a `transformer/*.gguf`; else None."""
    path = Path(path)
    if path.is_dir():
        found = sorted((path / "transformer").glob(f"*{GGUF_SUFFIX}"))
        return (path, found[0]) if found else None
    config = single_file_config(path)
    suffix = path.suffix.lower()
    if config is None or suffix not in (GGUF_SUFFIX, ".safetensors"):  # never a .ckpt pickle this way
        return None
    try:
        return (config, path) if suffix == GGUF_SUFFIX or families.from_folder(config) in TRANSFORMER_FILE_FAMILIES \
            else None
    except families.UnknownFamily:
        return None


def load(config: Path, file: Path, dtype: torch.dtype):
    """The pipeline of `config` with its transformer read from `file` (GGUF: quantized, computing in `dtype`)."""
    import diffusers

    index = json.loads((config / "model_index.json").read_text(encoding="utf-8"))
    transformer_class = getattr(diffusers, index["transformer"][1])
    quantized = file.suffix.lower() == GGUF_SUFFIX
    extra = {"quantization_config": diffusers.GGUFQuantizationConfig(compute_dtype=dtype)} if quantized else {}
    transformer = transformer_class.from_single_file(str(file), config=str(config), subfolder="transformer",
                                                     dtype=dtype, local_files_only=True, **extra)
    return diffusers.DiffusionPipeline.from_pretrained(config, transformer=transformer, dtype=dtype)


def quantization(net) -> str | None:
    """How the denoiser's weights are stored when a diffusers quantizer loaded them (`gguf Q8_0`), else None."""
    quantizer = getattr(net, "hf_quantizer", None)
    if quantizer is None:
        return None
    method = getattr(quantizer.quantization_config, "quant_method", "quantized")
    types = sorted({p.quant_type.name for p in net.parameters() if getattr(p, "quant_type", None) is not None}
                   - {"F32", "F16", "BF16"})
    return " ".join([str(getattr(method, "value", method)), *([",".join(types)] if types else [])])


def dtype_label(dtype: str, net) -> str:
    """The dtype a result records: the denoiser's compute dtype, with how its weights are stored when they are
    quantized (`fp32 (gguf Q8_0)`): the infotext, the item record and the worker's log say so."""
    stored = quantization(net)
    return f"{dtype} ({stored})" if stored else dtype


def write_gguf(state_dict: dict, path: Path, arch: str = "flux", keep: tuple[str, ...] = ()) -> None:
    """Write a transformer's state dict as a GGUF file with its key names: Q8_0 for 2-D weights whose
    rows are a multiple of 32 (its block size), F32 for the rest and for names holding one of `keep`."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch=arch)
    for name in sorted(state_dict):
        array = state_dict[name].float().numpy()
        if array.ndim == 2 and array.shape[1] % 32 == 0 and not any(k in name for k in keep):
            q8 = gguf.GGMLQuantizationType.Q8_0
            writer.add_tensor(name, gguf.quants.quantize(array, q8), raw_dtype=q8)
        else:
            writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
