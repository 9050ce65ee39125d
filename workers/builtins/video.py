"""Built-in tiny video models: `builtin:tiny-wan` (Wan 2.1 text-to-video), `builtin:tiny-wan-i2v` (Wan 2.1
image-to-video) and `builtin:tiny-ltx` (LTX-Video: its components run text- and image-to-video).

Like the other tiny built-ins (`workers.builtins.registry`): real diffusers pipelines with small random weights,
generated locally from fixed seeds and fixed configs (never downloaded), shaped like the published models
so that their code paths are taken. Wan: a UMT5 encoder (per-layer relative attention bias) and a locally
built T5 (Unigram) tokenizer, a causal 3D VAE with Wan's 16-channel latent mean/std and 4x temporal,
8x spatial compression, a `WanTransformer3DModel` with 1x2x2 patches, 3-axis rotary embeddings and
cross-attention over the text sequence, and the published UniPC flow-prediction scheduler; the I2V model
adds a CLIP vision encoder and 36 input channels (noise, image latents, first-frame mask). LTX: a T5
encoder and tokenizer, `AutoencoderKLLTXVideo` (8x temporal, 32x spatial compression) and
`LTXVideoTransformer3DModel` with the flow-matching scheduler LTX ships.
"""
from __future__ import annotations

from pathlib import Path

import torch

WAN_SCHEDULER = dict(
    num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear", solver_order=2,
    prediction_type="flow_prediction", predict_x0=True, solver_type="bh2", lower_order_final=True,
    use_flow_sigmas=True, flow_shift=3.0, timestep_spacing="linspace", steps_offset=0, final_sigmas_type="zero",
)
"""Wan 2.1 T2V 1.3B's UniPCMultistepScheduler config, as published (flow shift 3.0, the 480p value; the 720p
models use 5.0). The pipeline's type hint says FlowMatchEuler, but the released model runs UniPC: the
built-in takes the real model's path."""

TEXT_WIDTH = 32
"""`d_model` of the tiny UMT5/T5 encoders (4096 in UMT5-XXL and T5-XXL): the transformers' text width."""

WAN_MAX_LENGTH = 512
"""`model_max_length` of tiny-wan's tokenizer (Wan's `max_sequence_length` is 512)."""

LTX_MAX_LENGTH = 128
"""`model_max_length` of tiny-ltx's tokenizer (LTX-Video's `max_sequence_length` is 128)."""


def t5_style_tokenizer(max_length: int):
    """A T5 (Unigram) tokenizer over single characters, built locally (never downloaded): `<pad>`, `</s>`,
    `<unk>`, SentencePiece's word-start mark `▁`, then printable ASCII and Latin-1 letters, each alone and
    after `▁`. UMT5's tokenizer is the same class with a larger vocabulary; characters outside this one
    become `<unk>`."""
    from transformers import T5TokenizerFast

    chars = [chr(c) for c in range(ord("!"), ord("~") + 1)] + [chr(c) for c in range(0xC0, 0x100)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(c, -3.0) for c in chars] + [("▁" + c, -2.5) for c in chars]
    return T5TokenizerFast(vocab=vocab, extra_ids=0, model_max_length=max_length)


def _t5_config(config_class, vocab_size: int):
    """A 2-layer, 4-head encoder-only T5/UMT5 config of width `TEXT_WIDTH` (gated GELU, as T5 v1.1 and UMT5)."""
    return config_class(
        vocab_size=vocab_size, d_model=TEXT_WIDTH, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", is_encoder_decoder=False,
        use_cache=False, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0,
    )


def umt5_encoder(vocab_size: int, seed: int):
    """A tiny `UMT5EncoderModel` (random weights from `seed`), the class of Wan's text encoder."""
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    return UMT5EncoderModel(_t5_config(UMT5Config, vocab_size)).eval()


def t5_encoder(vocab_size: int, seed: int):
    """A tiny `T5EncoderModel` (random weights from `seed`), the class of LTX-Video's text encoder."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(_t5_config(T5Config, vocab_size)).eval()


def tiny_wan_vae(seed: int = 41):
    """An `AutoencoderKLWan`: base width 16, 4 levels (3 spatial halvings: 8x, as Wan's), temporal
    downsampling in the last two (4x: 4k+1 frames become k+1 latent frames), 16 latent channels with the
    published latent mean/std (the class defaults)."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(
        base_dim=16, z_dim=16, dim_mult=[1, 1, 2, 2], num_res_blocks=1, temperal_downsample=[False, True, True],
    ).eval()


def tiny_wan_transformer(seed: int = 42):
    """A 2-layer `WanTransformer3DModel`: 1x2x2 patches over 16 latent channels, 2 heads of 16 (rotary axes
    8+4+4 for time, height, width), cross-attention over the `TEXT_WIDTH` text sequence, RMS q/k norm
    across heads, as Wan 2.1's."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=16, out_channels=16,
        text_dim=TEXT_WIDTH, freq_dim=256, ffn_dim=64, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024,
    ).eval()


def build_tiny_wan(path: Path) -> None:
    """Write `builtin:tiny-wan`, a WanPipeline shaped like Wan 2.1 T2V, to `path`."""
    from diffusers import UniPCMultistepScheduler, WanPipeline

    tokenizer = t5_style_tokenizer(WAN_MAX_LENGTH)
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=umt5_encoder(len(tokenizer), seed=40), vae=tiny_wan_vae(),
        scheduler=UniPCMultistepScheduler(**WAN_SCHEDULER), transformer=tiny_wan_transformer(),
    )
    pipe.save_pretrained(path, safe_serialization=True)


CLIP_VISION_WIDTH = 32
"""Hidden size of tiny-wan-i2v's CLIP vision encoder (1280 in Wan 2.1 I2V's OpenCLIP ViT-H/14): the
transformer's `image_dim`."""


def tiny_clip_vision(seed: int = 44):
    """A 2-layer `CLIPVisionModel` (width 32, 32x32 input in 8x8 patches) and its PIL image processor: the
    shape of Wan 2.1 I2V's image encoder, whose second-to-last hidden states condition the transformer."""
    from transformers import CLIPImageProcessorPil, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(seed)
    config = CLIPVisionConfig(hidden_size=CLIP_VISION_WIDTH, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=4, image_size=32, patch_size=8, projection_dim=32)
    # The PIL processor, pinned: the default class changes with whether torchvision is installed.
    processor = CLIPImageProcessorPil(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return CLIPVisionModel(config).eval(), processor


def tiny_wan_i2v_transformer(seed: int = 45):
    """tiny-wan's transformer shaped for Wan 2.1 image-to-video: 36 input channels (16 noise latents, 16
    latents of the image followed by zeros, 4 of the first-frame mask) and cross-attention keys/values
    added for the CLIP image embedding (`image_dim`, `added_kv_proj_dim`: the inner width, as Wan's)."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=16, in_channels=36, out_channels=16,
        text_dim=TEXT_WIDTH, freq_dim=256, ffn_dim=64, num_layers=2, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024, image_dim=CLIP_VISION_WIDTH,
        added_kv_proj_dim=32,
    ).eval()


def build_tiny_wan_i2v(path: Path) -> None:
    """Write `builtin:tiny-wan-i2v`, a WanImageToVideoPipeline shaped like Wan 2.1 I2V 480p, to `path`."""
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline

    tokenizer = t5_style_tokenizer(WAN_MAX_LENGTH)
    image_encoder, image_processor = tiny_clip_vision()
    pipe = WanImageToVideoPipeline(
        tokenizer=tokenizer, text_encoder=umt5_encoder(len(tokenizer), seed=43), vae=tiny_wan_vae(seed=46),
        scheduler=UniPCMultistepScheduler(**WAN_SCHEDULER), image_processor=image_processor,
        image_encoder=image_encoder, transformer=tiny_wan_i2v_transformer(),
    )
    pipe.save_pretrained(path, safe_serialization=True)


LTX_SCHEDULER = dict(
    num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
    base_image_seq_len=1024, max_image_seq_len=4096, shift_terminal=0.1,
)
"""LTX-Video 0.9's FlowMatchEulerDiscreteScheduler config, as published (resolution-dependent shift,
stretched so that the last sigma is 0.1)."""

LTX_LATENT_CHANNELS = 32
"""Latent channels of the tiny LTX VAE (128 in LTX-Video): the transformer's input width."""


def tiny_ltx_vae(seed: int = 51):
    """An `AutoencoderKLLTXVideo` compressing like LTX-Video's: 4x4 pixel patches, then 3 of 4 levels that
    halve time and space (32x spatial, 8x temporal: 8k+1 frames become k+1 latent frames), a causal
    encoder and a non-causal decoder; widths 16-32 instead of 128-512, one layer per block."""
    from diffusers import AutoencoderKLLTXVideo

    torch.manual_seed(seed)
    return AutoencoderKLLTXVideo(
        latent_channels=LTX_LATENT_CHANNELS, block_out_channels=(16, 16, 32, 32),
        decoder_block_out_channels=(16, 16, 32, 32), layers_per_block=(1, 1, 1, 1, 1),
        decoder_layers_per_block=(1, 1, 1, 1, 1), spatio_temporal_scaling=(True, True, True, False),
        decoder_spatio_temporal_scaling=(True, True, True, False), patch_size=4, patch_size_t=1,
        encoder_causal=True, decoder_causal=False,
    ).eval()


def tiny_ltx_transformer(seed: int = 52):
    """A 2-layer `LTXVideoTransformer3DModel`: 1x1x1 patches over the latent channels, 2 heads of 16,
    cross-attention over the `TEXT_WIDTH` T5 sequence (caption projection), as LTX-Video's."""
    from diffusers import LTXVideoTransformer3DModel

    torch.manual_seed(seed)
    return LTXVideoTransformer3DModel(
        in_channels=LTX_LATENT_CHANNELS, out_channels=LTX_LATENT_CHANNELS, patch_size=1, patch_size_t=1,
        num_attention_heads=2, attention_head_dim=16, cross_attention_dim=32, num_layers=2,
        caption_channels=TEXT_WIDTH,
    ).eval()


def build_tiny_ltx(path: Path) -> None:
    """Write `builtin:tiny-ltx`, an LTXPipeline shaped like LTX-Video 0.9, to `path`."""
    from diffusers import FlowMatchEulerDiscreteScheduler, LTXPipeline

    tokenizer = t5_style_tokenizer(LTX_MAX_LENGTH)
    pipe = LTXPipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**LTX_SCHEDULER), vae=tiny_ltx_vae(),
        text_encoder=t5_encoder(len(tokenizer), seed=50), tokenizer=tokenizer, transformer=tiny_ltx_transformer(),
    )
    pipe.save_pretrained(path, safe_serialization=True)


BUILDERS = {"tiny-wan": build_tiny_wan, "tiny-wan-i2v": build_tiny_wan_i2v, "tiny-ltx": build_tiny_ltx}
"""Built-in model name (after `builtin:`) to its generator (joined into `workers.builtins.registry.BUILDERS`)."""
