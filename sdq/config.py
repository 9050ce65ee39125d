"""Settings read from the environment at the edges (app factory, CLI), then passed in."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from sdq import defaults


def _int(env: dict, name: str, default: int) -> int:
    """`env[name]` as an integer; `default` when unset or empty; ConfigError naming the variable."""
    return _number(env, name, default, int, "an integer")


def _float(env: dict, name: str, default: float) -> float:
    """`env[name]` as a number of seconds (or any float); `default` when unset or empty."""
    return _number(env, name, default, float, "a number")


def _number(env: dict, name: str, default, kind: type, what: str):
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        return kind(raw)
    except ValueError:
        from sdq.exceptions import ConfigError

        raise ConfigError(f"{name}={raw!r} is not {what}") from None


OWNER_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
"""What a tenant (owner) name may look like."""

TOKEN_PATTERN = re.compile(r"[\x21-\x2b\x2d-\x7e]{1,512}")
"""What an API token may look like: 1 to 512 printable ASCII characters, no spaces or commas."""


def parse_tokens(text: str, source: str) -> dict[str, str]:
    """`owner:token` entries (comma- or newline-separated, `#` comments) into {token: owner}.

    Raises ConfigError naming the entry for an empty or malformed owner or token, or a token listed twice."""
    from sdq.exceptions import ConfigError

    tokens: dict[str, str] = {}
    lines = (line.split("#", 1)[0] if source.endswith("_FILE") else line for line in text.splitlines())
    for n, entry in enumerate(e.strip() for line in lines for e in line.split(",")):
        if not entry:
            continue
        owner, sep, token = entry.partition(":")
        shown = f"{owner}:{token[:2]}..." if sep else f"{entry[:4]}..."
        if not sep or not OWNER_PATTERN.fullmatch(owner):
            raise ConfigError(f"{source}: entry {n + 1} ({shown!r}) must be 'owner:token' with an owner of letters, "
                              "digits, '_', '.', '@' or '-'")
        if not TOKEN_PATTERN.fullmatch(token):
            raise ConfigError(f"{source}: the token of {owner!r} (entry {n + 1}) must be 1 to 512 printable "
                              "characters without spaces or commas")
        if token in tokens:
            raise ConfigError(f"{source}: the token of {owner!r} (entry {n + 1}) is also {tokens[token]!r}'s")
        tokens[token] = owner
    return tokens


def _tokens(env: dict) -> dict[str, str]:
    """Tokens from SDQ_API_TOKENS and the file named by SDQ_API_TOKENS_FILE (both may be used)."""
    from sdq.exceptions import ConfigError

    tokens = parse_tokens(env.get("SDQ_API_TOKENS", ""), "SDQ_API_TOKENS")
    path = env.get("SDQ_API_TOKENS_FILE")
    if path:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"SDQ_API_TOKENS_FILE={path!r} cannot be read: {exc}") from None
        for token, owner in parse_tokens(text, "SDQ_API_TOKENS_FILE").items():
            if tokens.setdefault(token, owner) != owner:
                raise ConfigError(f"SDQ_API_TOKENS_FILE: the token of {owner!r} is also {tokens[token]!r}'s")
        if not tokens:
            raise ConfigError(f"SDQ_API_TOKENS_FILE={path!r} lists no token; remove the setting or add "
                              "'owner:token' lines")
    return tokens


def default_models_dir() -> Path:
    """Where built-in and downloaded models are cached when SDQ_MODELS_DIR is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sdq" / "models"


def _choice(env: dict, name: str, choices: tuple[str, ...], default: str) -> str:
    """`env[name]`, one of `choices`; `default` when unset or empty; ConfigError naming the variable."""
    value = env.get(name) or default
    if value not in choices:
        from sdq.exceptions import ConfigError

        raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}")
    return value


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
    max_queued_items: int = defaults.MAX_QUEUED_ITEMS_PER_TENANT
    stream_max_seconds: int = defaults.STREAM_MAX_SECONDS
    max_streams: int = defaults.MAX_STREAMS_PER_TENANT
    max_upload_decodes: int = defaults.UPLOAD_DECODES_PER_TENANT
    upload_quota_bytes: int = defaults.UPLOAD_QUOTA_BYTES
    max_pixels: int = defaults.MAX_PIXELS
    visibility_timeout: int = defaults.VISIBILITY_TIMEOUT
    url_ttl: int = defaults.URL_TTL
    webhook_allow_private: bool = False
    webhook_secret: str = ""
    allow_ckpt: bool = False
    watermark_default: bool = False
    # the worker's recovery timings: production keeps the defaults, fault tests shorten them
    heartbeat_interval: float = defaults.HEARTBEAT_INTERVAL
    heartbeat_ttl: int = defaults.HEARTBEAT_TTL
    reaper_interval: float = defaults.REAPER_INTERVAL
    finalize_resend: float = defaults.FINALIZE_RESEND
    outbox_lease: float = defaults.OUTBOX_LEASE
    stall_timeout: float = defaults.STALL_TIMEOUT
    s3_backoff_cap: float = defaults.S3_BACKOFF_CAP
    s3_outage_limit: float = defaults.S3_OUTAGE_LIMIT
    max_attempts: int = defaults.MAX_ATTEMPTS
    scheduling: str = "speed"
    """`speed`: chunks, claims and straggler backups follow measured speeds; `count`: chunks from the
    number of workers, every worker takes whole chunks, no backups (sdq before mixed-fleet awareness)."""

    @classmethod
    def from_env(cls, env: dict | None = None, **overrides) -> "Settings":
        """Build settings from `env` (default os.environ); keyword overrides win."""
        env = dict(os.environ if env is None else env)
        tokens = _tokens(env)
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
            max_queued_items=_int(env, "SDQ_MAX_QUEUED_ITEMS", defaults.MAX_QUEUED_ITEMS_PER_TENANT),
            stream_max_seconds=_int(env, "SDQ_STREAM_MAX_SECONDS", defaults.STREAM_MAX_SECONDS),
            max_streams=_int(env, "SDQ_MAX_STREAMS", defaults.MAX_STREAMS_PER_TENANT),
            max_upload_decodes=_int(env, "SDQ_MAX_UPLOAD_DECODES", defaults.UPLOAD_DECODES_PER_TENANT),
            upload_quota_bytes=_int(env, "SDQ_UPLOAD_QUOTA_BYTES", defaults.UPLOAD_QUOTA_BYTES),
            max_pixels=_int(env, "SDQ_MAX_PIXELS", defaults.MAX_PIXELS),
            visibility_timeout=_int(env, "SDQ_VISIBILITY_TIMEOUT", defaults.VISIBILITY_TIMEOUT),
            url_ttl=_int(env, "SDQ_URL_TTL", defaults.URL_TTL),
            webhook_allow_private=env.get("SDQ_WEBHOOK_ALLOW_PRIVATE", "") in ("1", "true", "yes"),
            webhook_secret=env.get("SDQ_WEBHOOK_SECRET", ""),
            allow_ckpt=env.get("SDQ_ALLOW_CKPT", "") in ("1", "true", "yes"),
            watermark_default=env.get("SDQ_WATERMARK", "") in ("1", "true", "yes"),
            heartbeat_interval=_float(env, "SDQ_HEARTBEAT_INTERVAL", defaults.HEARTBEAT_INTERVAL),
            heartbeat_ttl=_int(env, "SDQ_HEARTBEAT_TTL", defaults.HEARTBEAT_TTL),
            reaper_interval=_float(env, "SDQ_REAPER_INTERVAL", defaults.REAPER_INTERVAL),
            finalize_resend=_float(env, "SDQ_FINALIZE_RESEND", defaults.FINALIZE_RESEND),
            outbox_lease=_float(env, "SDQ_OUTBOX_LEASE", defaults.OUTBOX_LEASE),
            stall_timeout=_float(env, "SDQ_STALL_TIMEOUT", defaults.STALL_TIMEOUT),
            s3_backoff_cap=_float(env, "SDQ_S3_BACKOFF_CAP", defaults.S3_BACKOFF_CAP),
            s3_outage_limit=_float(env, "SDQ_S3_OUTAGE_LIMIT", defaults.S3_OUTAGE_LIMIT),
            max_attempts=_int(env, "SDQ_MAX_ATTEMPTS", defaults.MAX_ATTEMPTS),
            scheduling=_choice(env, "SDQ_SCHEDULING", ("speed", "count"), "speed"),
        )
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)
