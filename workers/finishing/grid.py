"""Drawing a job's labeled contact sheet ("grid"): the labels and the sheet itself, with PIL.

The geometry (rows, columns, cell size, the pixel cap) is `sdq.gridlayout`.
"""
from __future__ import annotations

from typing import Any

from PIL import Image, ImageDraw, ImageFont

from sdq import defaults
from sdq.gridlayout import LABEL_H, LABEL_W, fit_cell, grid_size, layout
from sdq.records import Item, Job

BACKGROUND = (255, 255, 255)
MISSING = (200, 200, 200)


def _fmt(key: str, value: Any) -> str:
    return f"{key}={value}"


def column_label(job: Job, item: Item) -> str:
    """Label of the column an item starts: the last sweep value and/or the sample number."""
    sweep = job.sweep or {}
    per = int(job.params.get("images_per_prompt") or 1)
    parts = []
    if sweep:
        last = list(sweep)[-1]
        parts.append(_fmt(last, (item.sweep or {}).get(last)))
    if per > 1:
        parts.append(f"#{item.index % per + 1}")
    return " ".join(parts)


def row_label(job: Job, item: Item) -> str:
    """Label of the row an item starts: its prompt and the other sweep values."""
    keys = list(job.sweep or {})[:-1]
    values = item.sweep or {}
    return "\n".join([item.prompt or "", *(_fmt(k, values.get(k)) for k in keys)])


def _wrap(draw: ImageDraw.ImageDraw, text: str, font, width: int, max_lines: int) -> list[str]:
    lines: list[str] = []
    for para in text.split("\n"):
        line = ""
        for word in para.split(" "):
            candidate = f"{line} {word}".strip()
            if draw.textlength(candidate, font=font) <= width or not line:
                line = candidate
            else:
                lines.append(line)
                line = word
        lines.append(line)
    lines = lines[:max_lines]
    for i, line in enumerate(lines):  # cut single words that are still too long
        while line and draw.textlength(line, font=font) > width:
            line = line[:-1]
        lines[i] = line
    return lines


def make_grid(job: Job, items: list[Item], images: dict[int, Image.Image],
              max_pixels: int = defaults.GRID_MAX_PIXELS) -> Image.Image:
    """The labeled sheet of `items` (index order), at most `max_pixels`; `images` maps item index to its image."""
    items = sorted(items, key=lambda it: it.index)
    rows, cols = layout(job, len(items))
    sizes = [im.size for im in images.values()] or [(64, 64)]
    full = (max(w for w, _ in sizes), max(h for _, h in sizes))
    cell = fit_cell(rows, cols, full, max_pixels)
    sheet = Image.new("RGB", grid_size(rows, cols, cell), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    line_h = 12
    for pos, item in enumerate(items):
        r, c = divmod(pos, cols)
        x, y = LABEL_W + c * cell[0], LABEL_H + r * cell[1]
        image = images.get(item.index)
        if image is not None:
            if cell != full:  # scaled down to fit the sheet's pixel cap
                image = image.resize((max(1, image.width * cell[0] // full[0]),
                                      max(1, image.height * cell[1] // full[1])))
            sheet.paste(image.convert("RGB"), (x, y))
        else:
            draw.rectangle([x, y, x + cell[0] - 1, y + cell[1] - 1], fill=MISSING)
            draw.text((x + 2, y + 2), str(item.state or "missing"), fill=(120, 0, 0), font=font)
        if r == 0:
            lines = _wrap(draw, column_label(job, item), font, cell[0] - 4, LABEL_H // line_h)
            for i, line in enumerate(lines):
                draw.text((x + 2, 2 + i * line_h), line, fill=(0, 0, 0), font=font)
        if c == 0:
            lines = _wrap(draw, row_label(job, item), font, LABEL_W - 6, max(1, cell[1] // line_h))
            for i, line in enumerate(lines):
                draw.text((3, y + 2 + i * line_h), line, fill=(0, 0, 0), font=font)
    return sheet
