"""Flask responses encoded by orjson when it is installed (a status page of 100 items encodes ~5x
faster). Request bodies are still parsed by the standard library: it accepts every JSON number, so
an out-of-range seed gets a field error instead of "not JSON"."""
from __future__ import annotations

from typing import Any

from flask.json.provider import DefaultJSONProvider

try:
    import orjson
except ImportError:  # pragma: no cover - Flask's own encoder is used instead
    orjson = None


class FastJSONProvider(DefaultJSONProvider):
    """Flask's JSON provider with orjson encoding plain data; anything orjson refuses goes the default way."""

    sort_keys = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        option = _orjson_option(kwargs)
        if option is not None:
            try:
                return orjson.dumps(obj, option=option).decode()
            except TypeError:  # a type or an integer orjson does not encode
                pass
        return super().dumps(obj, **kwargs)


def _orjson_option(kwargs: dict[str, Any]) -> int | None:
    """orjson's options for the arguments Flask passes (compact or indented), or None."""
    if orjson is None:
        return None
    compact = kwargs.get("separators") == (",", ":")
    indent = kwargs.get("indent") == 2
    if set(kwargs) - {"separators", "indent"} or not (compact or indent or not kwargs):
        return None
    return orjson.OPT_NON_STR_KEYS | (orjson.OPT_INDENT_2 if indent else 0)
