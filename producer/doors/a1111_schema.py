"""Request bodies of the A1111 door (`/sdapi/v1`), as pydantic models with AUTOMATIC1111's field names and defaults.

Every field A1111's API (and the `webuiapi` client) sends is declared, so a known field is never refused as
unknown; which values sdq honours is decided in `producer.doors.a1111_translate`. Fields A1111 does not have
are refused (422 naming them) rather than ignored.
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from producer.schemas import PROMPT_MAX_CHARS

NAME_MAX_CHARS = 1000
"""Longest sampler, scheduler, model or script name."""

IMAGE_MAX_CHARS = 24 * 1024 * 1024
"""Longest base64 image (a 16 MiB upload, base64-encoded, with a data-URL prefix)."""

MAX_BATCH = 64
"""Most images of one request (`batch_size` x `n_iter`), as sdq's `images_per_prompt`."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Generate(_Body):
    """Fields txt2img and img2img share (A1111's `StableDiffusionProcessing`)."""

    prompt: str = Field("", max_length=PROMPT_MAX_CHARS)
    negative_prompt: str = Field("", max_length=PROMPT_MAX_CHARS)
    styles: list[str] | None = Field(None, max_length=64)
    seed: int = Field(-1, ge=-1, le=2**32 - 1)
    subseed: int = Field(-1, ge=-1, le=2**32 - 1)
    subseed_strength: float = 0.0
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = Field(None, max_length=NAME_MAX_CHARS)
    sampler_index: str | None = Field(None, max_length=NAME_MAX_CHARS)
    scheduler: str | None = Field(None, max_length=NAME_MAX_CHARS)
    batch_size: int = Field(1, ge=1, le=MAX_BATCH)
    n_iter: int = Field(1, ge=1, le=MAX_BATCH)
    steps: int = Field(50, ge=1)
    cfg_scale: float = 7.0
    distilled_cfg_scale: float | None = None  # Forge's field: Flux's distilled guidance (its `guidance_scale`)
    width: int = Field(512, ge=1)
    height: int = Field(512, ge=1)
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float | None = None
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = Field(None, max_length=64)
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = Field(None, max_length=NAME_MAX_CHARS)
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    firstpass_image: str | None = Field(None, max_length=IMAGE_MAX_CHARS)
    comments: dict[str, Any] | None = None
    script_name: str | None = Field(None, max_length=NAME_MAX_CHARS)
    script_args: list[Any] = Field(default_factory=list, max_length=256)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict, max_length=64)
    infotext: str | None = Field(None, max_length=PROMPT_MAX_CHARS * 3)
    force_task_id: str | None = Field(None, max_length=NAME_MAX_CHARS)


class Txt2ImgIn(_Generate):
    """Body of POST /sdapi/v1/txt2img."""

    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = 2.0
    hr_upscaler: str | None = Field(None, max_length=NAME_MAX_CHARS)
    hr_second_pass_steps: int = 0
    hr_resize_x: int = 0
    hr_resize_y: int = 0
    hr_checkpoint_name: str | None = Field(None, max_length=NAME_MAX_CHARS)
    hr_sampler_name: str | None = Field(None, max_length=NAME_MAX_CHARS)
    hr_scheduler: str | None = Field(None, max_length=NAME_MAX_CHARS)
    hr_prompt: str = Field("", max_length=PROMPT_MAX_CHARS)
    hr_negative_prompt: str = Field("", max_length=PROMPT_MAX_CHARS)


class Img2ImgIn(_Generate):
    """Body of POST /sdapi/v1/img2img (with `mask`: an inpaint)."""

    init_images: list[str] | None = Field(None, max_length=16)
    resize_mode: int = 0
    image_cfg_scale: float | None = None
    mask: str | None = Field(None, max_length=IMAGE_MAX_CHARS)
    mask_blur_x: int = 4
    mask_blur_y: int = 4
    mask_blur: int | None = None
    mask_round: bool = True
    inpainting_fill: int = 0
    inpaint_full_res: bool | int = True
    inpaint_full_res_padding: int = 0
    inpainting_mask_invert: int = 0
    initial_noise_multiplier: float | None = None
    latent_mask: str | None = Field(None, max_length=IMAGE_MAX_CHARS)
    include_init_images: bool = False


class PngInfoIn(_Body):
    """Body of POST /sdapi/v1/png-info."""

    image: str = Field("", max_length=IMAGE_MAX_CHARS)


SCHEMAS: tuple[type[BaseModel], ...] = (Txt2ImgIn, Img2ImgIn, PngInfoIn)
"""Models published in the OpenAPI document."""

BODIES: dict[str, type[BaseModel]] = {"a1111.txt2img": Txt2ImgIn, "a1111.img2img": Img2ImgIn,
                                      "a1111.png_info": PngInfoIn}
"""Endpoint -> the model its JSON body is parsed with."""
