"""Request schemas of the HTTP API (pydantic), with limits and messages that name the value."""
from __future__ import annotations

from typing import Annotated, Any

from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, ValidationInfo, create_model, field_validator,
                      model_validator)

from producer.bodies import field_path
from sdq import contract, defaults, pipelines
from sdq.exceptions import InvalidInput
from sdq.options import OPTIONS, OptionSpec
from sdq.params import Param, Text
from sdq.webhooks import URL_MAX_CHARS

SEED_MAX = 2**32 - 1
PROMPT_MAX_CHARS = 4000
MODEL_MAX_CHARS = 1000
"""Longest model id (repo id, path or built-in name)."""
KEY_MAX_CHARS = 200
"""Longest upload key (`init_image`)."""
SWEEP_MAX_VALUES = 64
"""Most values for one sweep key."""


def _check_side(name: str, value: int | None) -> int | None:
    if value is None:
        return value
    if value % 8:
        raise ValueError(f"{name} must be a multiple of 8, got {value}")
    if not 8 <= value <= defaults.MAX_SIDE:
        raise ValueError(f"{name} must be between 8 and {defaults.MAX_SIDE}, got {value}")
    return value


def _check_one_of(name: str, value: str | None, choices: tuple[str, ...]) -> str | None:
    """`value` when it is None or one of `choices`; a ValueError naming `name`, the choices and the value otherwise."""
    if value is not None and value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _check_scheduler(value: str | None) -> str | None:
    if value is not None and value not in contract.SCHEDULERS:
        raise ValueError(f"unknown scheduler {value!r}; known: {', '.join(contract.SCHEDULERS)}")
    return value


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=False)


class _Common(_Strict):
    """Parameters every pipeline takes; a job sets them for all items and an item may override them."""

    steps: int | None = Field(None, ge=1, le=defaults.MAX_STEPS)
    guidance_scale: float | None = Field(None, ge=0, le=50)
    width: int | None = None
    height: int | None = None
    scheduler: str | None = None

    @field_validator("width", "height")
    @classmethod
    def _side(cls, v: int | None, info: ValidationInfo) -> int | None:
        return _check_side(info.field_name, v)

    @field_validator("scheduler")
    @classmethod
    def _sched(cls, v: str | None) -> str | None:
        return _check_scheduler(v)


Overrides = create_model(  # the common parameters plus each pipeline's own, with the spec's ranges
    "Overrides", __base__=_Common, __doc__="Parameters that a job sets for all items and an item may override.",
    **{p.name: (p.kind | None, Field(None, ge=p.low, le=p.high, description=p.doc))
       for p in pipelines.all_params().values()})

ITEM_PARAM_KEYS = tuple(Overrides.model_fields)
"""Parameters of an item: set for the whole job, overridden per item or by a sweep."""

Images = create_model(  # one upload key per image input some pipeline takes (init_image, ...)
    "Images", __base__=_Strict, __doc__="Upload keys of the images a pipeline starts from.",
    **{field: (str | None, Field(None, max_length=KEY_MAX_CHARS)) for field in pipelines.all_images()})

IMAGE_KEYS = tuple(Images.model_fields)
"""Request fields naming uploaded images (in `params`, or per item)."""


def _field(f: Param | Text, defaults: bool) -> tuple[Any, Any]:
    """The pydantic field of one field of an option's object: a number in its range, or a string."""
    if isinstance(f, Text):
        if f.required:
            return str, Field(..., min_length=1, max_length=f.max_chars, description=f.doc or None)
        return str | None, Field(None, min_length=1, max_length=f.max_chars, description=f.doc or None)
    default = f.default if defaults else None
    return (f.kind if defaults else f.kind | None), Field(default, ge=f.low, le=f.high, description=f.doc or None)


def _option_schema(option: OptionSpec) -> tuple[Any, Any]:
    """The pydantic field of one request option: its object (or a list of them), strict, with the table's ranges."""
    doc = f"One entry of `params.{option.name}`." if option.many else option.doc
    model = create_model(option.schema_name, __base__=_Strict, __doc__=doc,
                         **{f.name: _field(f, option.schema_defaults) for f in option.fields})
    if option.many:
        return list[model] | None, Field(None, max_length=option.many, description=option.doc)
    if option.flag:  # `true`: the object with its defaults, `false`: not asked for
        flag = BeforeValidator(lambda v: {} if v is True else None if v is False else v)
        return Annotated[model | None, flag], Field(None, description=option.doc)
    return model | None, None


Options = create_model(  # one field per request option (`sdq.options`), job-wide
    "Options", __base__=_Strict, __doc__="Request options applied to every item of the job.",
    **{name: _option_schema(option) for name, option in OPTIONS.items()})

OPTION_KEYS = tuple(Options.model_fields)
"""Job-wide request options (`sdq.options.OPTIONS`)."""


class Params(Options, Images, Overrides):
    """Job-wide generation parameters."""

    negative_prompt: str = Field("", max_length=PROMPT_MAX_CHARS)
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    images_per_prompt: int = Field(1, ge=1, le=64)
    watermark: bool | None = None
    grid: bool = False
    cache: bool = True
    """False: always run fresh, neither answered from nor recorded in the result cache."""


class ItemIn(Images, Overrides):
    """One entry of `items`."""

    prompt: str = Field(..., min_length=1, max_length=PROMPT_MAX_CHARS)
    negative_prompt: str | None = Field(None, max_length=PROMPT_MAX_CHARS)
    seed: int | None = Field(None, ge=0, le=SEED_MAX)
    cache: bool | None = None
    """Overrides `params.cache` for this item."""


REQUIRES_CHOICES = {"device": contract.DEVICES, "dtype": contract.DTYPES}
"""The values a worker requirement may take, by field."""


class Requires(_Strict):
    """What kind of worker an item needs."""

    device: str = Field("any", max_length=32)
    dtype: str | None = Field(None, max_length=32)
    min_memory_gb: float | None = Field(None, ge=0, le=defaults.MAX_DEVICE_MEMORY_GB)

    @field_validator("device", "dtype")
    @classmethod
    def _known(cls, v: str | None, info: ValidationInfo) -> str | None:
        return _check_one_of(info.field_name, v, REQUIRES_CHOICES[info.field_name])


class SubmitRequest(_Strict):
    """Body of POST /v1/jobs."""

    prompts: list[str] | None = Field(None, max_length=defaults.MAX_LIST_LENGTH)
    items: list[ItemIn] | None = Field(None, max_length=defaults.MAX_LIST_LENGTH)
    model: str = Field(defaults.MODEL, min_length=1, max_length=MODEL_MAX_CHARS)
    pipeline: str = defaults.PIPELINE
    params: Params = Field(default_factory=Params)
    requires: Requires = Field(default_factory=Requires)
    priority: int = Field(defaults.PRIORITY, ge=0, le=9)
    webhook_url: str | None = Field(None, max_length=URL_MAX_CHARS)
    sweep: dict[str, Annotated[list[Any], Field(max_length=SWEEP_MAX_VALUES)]] | None = Field(None, max_length=16)
    dry_run: bool = Field(False, description="Answer a quote (200) and create nothing: the planned items, the live "
                                             "workers able to take them and why the others cannot, seconds per item, "
                                             "expected start and finish, and any refusal the submit would meet.")

    @field_validator("pipeline")
    @classmethod
    def _pipeline(cls, v: str) -> str:
        return pipelines.spec(v).name

    @field_validator("prompts")
    @classmethod
    def _prompts(cls, v: list[str] | None) -> list[str] | None:
        if v is None:
            return v
        for i, p in enumerate(v):
            if not p.strip():
                raise ValueError(f"prompt {i} is empty")
            if len(p) > PROMPT_MAX_CHARS:
                raise ValueError(f"prompt {i} is longer than {PROMPT_MAX_CHARS} characters")
        return v

    @model_validator(mode="after")
    def _one_source(self) -> "SubmitRequest":
        if self.prompts is not None and self.items is not None:
            raise InvalidInput("prompts", "give either prompts or items, not both")
        if not self.prompts and not self.items:
            field = "items" if self.items is not None else "prompts"
            raise InvalidInput(field, f"{field} must be a non-empty list")
        return self


def parse_submit(body: Any) -> SubmitRequest:
    """Validate a submit body; raise InvalidInput naming the first bad field and its value."""
    if not isinstance(body, dict):
        raise InvalidInput("body", f"the body must be a JSON object, got {type(body).__name__}",
                           code="invalid_body", status=400)
    try:
        return SubmitRequest.model_validate(body)
    except InvalidInput:
        raise
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = field_path(err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = f"unknown field {field!r}"
        elif "got" not in msg and err["type"] != "missing":
            msg = f"{msg} (got {err.get('input')!r})"
        raise InvalidInput(field, f"{field}: {msg}") from None
