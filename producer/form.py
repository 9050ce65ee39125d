"""The web page's fieldsets of the request options, rendered from the option table (`sdq.options`): each
row's legend, its checkbox and its inputs (`OptionSpec.form`), shown by `producer/static/extras.js` for
the pipelines the row names. Generic: it names no option."""
from __future__ import annotations

from html import escape

from sdq import options
from sdq.options.base import FormField, OptionSpec

PLACEHOLDER = "<!-- request options -->"
"""Where the page (`producer/static/index.html`) takes the fieldsets."""

_INPUT_TYPES = {"number": "number", "file": "file", "text": "text", "list": "text"}


def _input(option: OptionSpec, f: FormField) -> str:
    """One labelled input with its error line, named by the request field it fills."""
    ident = f"{option.name}-{f.key}" if f.key else option.name
    field = f"params.{option.name}" + (f".{f.key}" if f.key else "")
    attrs = "".join(f' {k}="{escape(v)}"' for k, v in f.attrs)
    data = f' data-list="{escape(",".join(x.name for x in option.fields))}"' if f.kind == "list" else \
        f' data-key="{escape(f.key)}" data-kind="{escape(f.kind)}"'
    return (f'<div class="field" data-field="{escape(field)}"><label for="{escape(ident)}">{escape(f.label)}</label>'
            f'<input id="{escape(ident)}" type="{_INPUT_TYPES[f.kind]}"{data}{attrs}>'
            f'<p class="error" role="alert"></p></div>')


def fieldset(option: OptionSpec) -> str:
    """The option's fieldset: a checkbox and its inputs, or a typed-in list."""
    inputs = "".join(_input(option, f) for f in option.form)
    head = f'<fieldset id="{escape(option.name)}-set" data-option="{escape(option.name)}" ' \
           f'data-pipelines="{escape(" ".join(option.pipelines))}" hidden><legend>{escape(option.legend)}</legend>'
    if not option.toggle:
        return f"{head}{inputs}</fieldset>"
    return (f'{head}<div class="field" data-field="params.{escape(option.name)}"><label class="check">'
            f'<input id="{escape(option.name)}-on" type="checkbox" data-toggle> {escape(option.toggle)}</label>'
            f'<p class="error" role="alert"></p></div><div class="grid-fields" data-fields hidden>{inputs}</div>'
            f"</fieldset>")


def render(page: str) -> str:
    """The page with every option's fieldset in place of `PLACEHOLDER`."""
    return page.replace(PLACEHOLDER, "\n".join(fieldset(o) for o in options.OPTIONS.values() if o.form))
