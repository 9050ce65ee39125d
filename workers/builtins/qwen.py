"""Built-in tiny Qwen-Image: `builtin:tiny-qwen-image` (QwenImagePipeline) and `builtin:tiny-qwen-image-edit`
(QwenImageEditPipeline), real diffusers pipelines with small random weights.

Generated locally from fixed seeds and fixed configs, never downloaded, shaped like the published models so that
their code paths are taken: a Qwen2.5-VL text encoder (the multimodal model, vision tower included, as
Qwen-Image ships it; its last hidden state is the prompt embedding) with the byte-level Qwen tokenizer of
`workers.builtins.textparts`, the Qwen-Image VAE (a 16-channel causal 3-D VAE with 8x spatial downsampling and the
published latent statistics, its defaults), an MMDiT transformer over 2x2-packed latents (64 input channels) with
3-axis rotary embeddings and no guidance input, and the published dynamically shifted flow-matching scheduler.
The Edit model adds the Qwen2-VL processor (image processor + the same tokenizer) its text encoder sees the init
image through.
"""
from __future__ import annotations

from pathlib import Path

import torch

from workers.builtins.textparts import qwen_tokenizer

QWEN_SCHEDULER = dict(
    num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=0.9,
    base_image_seq_len=256, max_image_seq_len=8192, shift_terminal=0.02, time_shift_type="exponential",
)
"""Qwen-Image's FlowMatchEulerDiscreteScheduler config, as published."""

TEXT_WIDTH = 32
"""Hidden size of the tiny Qwen2.5-VL language model (3584 in Qwen2.5-VL-7B): the transformer's
`joint_attention_dim`."""

VISION_PIXELS = (28 * 28 * 4, 28 * 28 * 16)
"""(min, max) pixels the tiny Edit processor resizes the init image to for the vision tower (the published
processor allows up to ~12.8 Mpx): 4 to 16 merged vision tokens keep the tiny encoder fast."""


def qwen_text_encoder(tokenizer, seed: int = 41):
    """A Qwen2_5_VLForConditionalGeneration with a 2-layer language model of width `TEXT_WIDTH` and a 2-block
    vision tower projecting into it, its special-token ids taken from `tokenizer` (random weights from `seed`)."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    ids = dict(zip(("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id"),
                   tokenizer.convert_tokens_to_ids(["<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                                                    "<|vision_end|>"])))
    torch.manual_seed(seed)
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=2 * TEXT_WIDTH,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         rope_parameters={"rope_type": "default", "rope_theta": 1000000.0,
                                          "mrope_section": [2, 3, 3]},
                         bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id),
        vision_config=dict(depth=2, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=TEXT_WIDTH,
                           fullatt_block_indexes=[1]),
        **ids,
    )
    return Qwen2_5_VLForConditionalGeneration(config).eval()


def qwen_vae(seed: int = 42):
    """An AutoencoderKLQwenImage shaped like the published one (16 latent channels, 4 stages: 8x spatial and 4x
    temporal downsampling, its latent mean and std) with base width 16 and one residual block per stage."""
    from diffusers import AutoencoderKLQwenImage

    torch.manual_seed(seed)
    return AutoencoderKLQwenImage(base_dim=16, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=1,
                                  temperal_downsample=[False, True, True]).eval()


TRANSFORMER_INIT_STD = 0.2
"""Std of the tiny transformer's matrix weights. With diffusers' default init its output is so small that the
image is the decoded starting noise: another prompt then moved pixels by ~0.03/255 on average (a negative prompt
with true CFG 4 ~0.06); at 0.2, ~0.4 and ~1.4, and another seed still ~13 (64x64, 3 steps)."""


def qwen_transformer(seed: int = 43):
    """A QwenImageTransformer2DModel with 2 blocks of 2 heads of 16 (rotary axes 4+6+6), 64 input channels (16
    latent channels packed 2x2), joint attention over the text encoder's hidden states, no guidance input; its
    matrices drawn with `TRANSFORMER_INIT_STD`."""
    from diffusers import QwenImageTransformer2DModel

    torch.manual_seed(seed)
    model = QwenImageTransformer2DModel(
        patch_size=2, in_channels=64, out_channels=16, num_layers=2, attention_head_dim=16, num_attention_heads=2,
        joint_attention_dim=TEXT_WIDTH, guidance_embeds=False, axes_dims_rope=(4, 6, 6),
    ).eval()
    with torch.no_grad():
        for weight in model.parameters():
            if weight.dim() == 2:
                weight.normal_(0, TRANSFORMER_INIT_STD)
    return model


def qwen_processor(tokenizer):
    """A Qwen2VLProcessor: Qwen2-VL's image processor (PIL backend, pinned; `VISION_PIXELS`) and `tokenizer`.

    transformers 5 builds (and loads) it only with its video processor, which needs torchvision, even for
    image-only use (huggingface/transformers#48558): without torchvision this raises ImportError saying so."""
    from transformers import Qwen2VLImageProcessorPil, Qwen2VLProcessor
    from transformers.utils import is_torchvision_available

    if not is_torchvision_available():
        raise ImportError("Qwen-Image-Edit's processor (transformers' Qwen2VLProcessor) needs torchvision for its "
                          "video processor, even for images: pip install torchvision (the build matching torch)")

    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor

    low, high = VISION_PIXELS
    return Qwen2VLProcessor(image_processor=Qwen2VLImageProcessorPil(min_pixels=low, max_pixels=high),
                            tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor())


def qwen_components(edit: bool = False) -> dict:
    """The components of `builtin:tiny-qwen-image`, or with `edit` of `builtin:tiny-qwen-image-edit` (other
    seeds, and the processor), by the pipelines' argument names."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    tokenizer = qwen_tokenizer()
    shift = 10 if edit else 0
    out = dict(scheduler=FlowMatchEulerDiscreteScheduler(**QWEN_SCHEDULER), vae=qwen_vae(42 + shift),
               text_encoder=qwen_text_encoder(tokenizer, 41 + shift), tokenizer=tokenizer,
               transformer=qwen_transformer(43 + shift))
    if edit:
        out["processor"] = qwen_processor(tokenizer)
    return out


def build_tiny_qwen_image(path: Path) -> None:
    """Write `builtin:tiny-qwen-image`, a QwenImagePipeline shaped like Qwen-Image, to `path`."""
    from diffusers import QwenImagePipeline

    QwenImagePipeline(**qwen_components()).save_pretrained(path, safe_serialization=True)


def build_tiny_qwen_image_edit(path: Path) -> None:
    """Write `builtin:tiny-qwen-image-edit`, a QwenImageEditPipeline shaped like Qwen-Image-Edit, to `path`."""
    from diffusers import QwenImageEditPipeline

    QwenImageEditPipeline(**qwen_components(edit=True)).save_pretrained(path, safe_serialization=True)


LORA_TARGETS = ("attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
                "attn.add_v_proj", "attn.to_add_out", "img_mlp.net.2", "txt_mlp.net.2")
"""The Qwen-Image transformer's block modules (name endings) `builtin:tiny-lora-qwen-image` changes."""

LORA_B_STD = 0.5
"""Spread of the Qwen-Image adapter's up matrices (as the Flux adapter's: a narrow, 32-wide transformer)."""


def build_tiny_lora_qwen_image(path: Path) -> None:
    """Write `builtin:tiny-lora-qwen-image`: a rank-4 update of tiny-qwen-image's transformer blocks (attention and
    MLPs) in diffusers' layout (`transformer.<module>.lora_A.weight` / `lora_B.weight`), with no metadata: its
    family is read from its tensor names."""
    from workers.builtins.loras import build_tiny_lora, lora_weights

    build_tiny_lora(path, prefix="transformer", weights=lora_weights(qwen_transformer(), LORA_TARGETS, LORA_B_STD))


BUILDERS = {"tiny-qwen-image": build_tiny_qwen_image, "tiny-lora-qwen-image": build_tiny_lora_qwen_image}
"""Built-in model name (after `builtin:`) to its generator (joined into `workers.builtins.registry.BUILDERS`).
`build_tiny_qwen_image_edit` is not a built-in yet: it needs torchvision (see `qwen_processor`), which sdq's
environment does not install, and every built-in is generated where the tests run."""
