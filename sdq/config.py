"""Settings read from the environment at the edges (app factory, CLI), then passed in."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from sdq import defaults


def _int(env: dict, name: str, default: int) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return int(raw)
    except ValueError:
        from sdq.exceptions import ConfigError

        raise ConfigError(f"{name}={raw!r} is not an integer") from None


def default_models_dir() -> Path:
    """Where built-in and downloaded models are cached when SDQ_MODELS_DIR is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sdq" / "models"


@dataclass(frozen=True)
class Settings:
    """Every setting of an sdq process."""

    redis_url: str = defaults.REDIS_URL
    s3_endpoint_url: str | None = None
    s3_public_endpoint_url: str | None = None
    s3_bucket: str = defaults.S3_BUCKET
    s3_region: str = "us-east-1"
    api_tokens: dict[str, str] = field(default_factory=dict)
    models: tuple[str, ...] = ()
    models_dir: Path = field(default_factory=default_models_dir)
    max_items: int = defaults.MAX_ITEMS
    max_pixels: int = defaults.MAX_PIXELS
    visibility_timeout: int = defaults.VISIBILITY_TIMEOUT
    url_ttl: int = defaults.URL_TTL
    webhook_allow_private: bool = False
    webhook_secret: str = ""
    allow_ckpt: bool = False
    watermark_default: bool = False

    @classmethod
    def from_env(cls, env: dict | None = None, **overrides) -> "Settings":
        """Build settings from `env` (default os.environ); keyword overrides win."""
        env = dict(os.environ if env is None else env)
        tokens: dict[str, str] = {}
        for entry in filter(None, (t.strip() for t in env.get("SDQ_API_TOKENS", "").split(","))):
            owner, _, token = entry.rpartition(":")
            tokens[token] = owner or token[:8]
        values = dict(
            redis_url=env.get("SDQ_REDIS_URL") or defaults.REDIS_URL,
            s3_endpoint_url=env.get("SDQ_S3_ENDPOINT_URL") or None,
            s3_public_endpoint_url=env.get("SDQ_S3_PUBLIC_ENDPOINT_URL") or None,
            s3_bucket=env.get("SDQ_S3_BUCKET") or defaults.S3_BUCKET,
            s3_region=env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or "us-east-1",
            api_tokens=tokens,
            models=tuple(m.strip() for m in env.get("SDQ_MODELS", "").split(",") if m.strip()),
            models_dir=Path(env["SDQ_MODELS_DIR"]) if env.get("SDQ_MODELS_DIR") else default_models_dir(),
            max_items=_int(env, "SDQ_MAX_ITEMS", defaults.MAX_ITEMS),
            max_pixels=_int(env, "SDQ_MAX_PIXELS", defaults.MAX_PIXELS),
            visibility_timeout=_int(env, "SDQ_VISIBILITY_TIMEOUT", defaults.VISIBILITY_TIMEOUT),
            url_ttl=_int(env, "SDQ_URL_TTL", defaults.URL_TTL),
            webhook_allow_private=env.get("SDQ_WEBHOOK_ALLOW_PRIVATE", "") in ("1", "true", "yes"),
            webhook_secret=env.get("SDQ_WEBHOOK_SECRET", ""),
            allow_ckpt=env.get("SDQ_ALLOW_CKPT", "") in ("1", "true", "yes"),
            watermark_default=env.get("SDQ_WATERMARK", "") in ("1", "true", "yes"),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
