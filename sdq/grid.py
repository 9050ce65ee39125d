"""Labeled contact sheets ("grids") of a job's images, like the X/Y plots of the SD web UIs.

Layout: items are in submit order (prompt, then sweep combination with the last sweep key varying
fastest, then sample), so they fill the grid row by row.

- columns: the values of the **last** sweep key (times `images_per_prompt` samples); without a
  sweep, the samples of one prompt;
- rows: each prompt combined with the values of the other sweep keys.

The sheet is ``LABEL_W + cols * cell_w`` wide and ``LABEL_H + rows * cell_h`` high, where the cell
is the largest image, scaled down (aspect kept) so the sheet stays within `GRID_MAX_PIXELS`; row
labels sit in a left column, column labels in a top band. A grid whose cells would have to shrink
below `GRID_MIN_CELL` pixels is refused at submit (`check_fits`).
"""
from __future__ import annotations

import math
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from sdq import defaults
from sdq.records import Item, Job

LABEL_W = 160
"""Width of the row-label column, pixels."""

LABEL_H = 32
"""Height of the column-label band, pixels."""

GRID_MAX_ITEMS = 1024
"""Most items a job may have when it asks for a grid (`params.grid`)."""

BACKGROUND = (255, 255, 255)
MISSING = (200, 200, 200)


def grid_key(job_id: str) -> str:
    """S3 key of a job's contact sheet."""
    return f"jobs/{job_id}/grid.png"


def layout(job: Job, n_items: int) -> tuple[int, int]:
    """(rows, columns) of the grid of a job with `n_items` items."""
    sweep = job.sweep or {}
    per = int(job.params.get("images_per_prompt") or 1)
    cols = per * (len(list(sweep.values())[-1]) if sweep else 1)
    cols = max(1, min(cols, n_items))
    return math.ceil(n_items / cols), cols


def grid_size(rows: int, cols: int, cell: tuple[int, int]) -> tuple[int, int]:
    """Pixel size of a sheet of `rows` x `cols` cells of size `cell`."""
    return LABEL_W + cols * cell[0], LABEL_H + rows * cell[1]


def fit_cell(rows: int, cols: int, cell: tuple[int, int],
             max_pixels: int = defaults.GRID_MAX_PIXELS) -> tuple[int, int]:
    """The cell size, scaled down (aspect kept) so a sheet of `rows` x `cols` cells fits `max_pixels`."""
    w, h = cell
    if math.prod(grid_size(rows, cols, cell)) <= max_pixels:
        return cell
    # (LABEL_W + cols*w*s) * (LABEL_H + rows*h*s) <= max_pixels, solved for the scale s
    a, b, c = rows * cols * w * h, LABEL_W * rows * h + LABEL_H * cols * w, LABEL_W * LABEL_H - max_pixels
    scale = (-b + math.sqrt(b * b - 4 * a * c)) / (2 * a) if c < 0 else 0.0
    return int(w * scale), int(h * scale)


def cell_for(job: Job, items: list[Item],
             max_pixels: int = defaults.GRID_MAX_PIXELS) -> tuple[int, int]:
    """The cell size of a job's sheet from its items' output sizes, so images can be shrunk as they load."""
    from sdq.contract import output_size

    sizes = [output_size(job.pipeline, int(it.params["width"]), int(it.params["height"]))
             for it in items if it.params] or [(64, 64)]
    rows, cols = layout(job, len(items))
    return fit_cell(rows, cols, (max(w for w, _ in sizes), max(h for _, h in sizes)), max_pixels)


def check_fits(job: Job, n_items: int, cell: tuple[int, int],
               max_pixels: int = defaults.GRID_MAX_PIXELS) -> None:
    """Raise ValueError when the grid of `n_items` cells of `cell` would need cells under `GRID_MIN_CELL`."""
    rows, cols = layout(job, n_items)
    w, h = fit_cell(rows, cols, cell, max_pixels)
    if min(w, h) < min(defaults.GRID_MIN_CELL, *cell):
        raise ValueError(f"a grid of {rows}x{cols} images of {cell[0]}x{cell[1]} cannot fit {max_pixels} pixels "
                         f"with cells of at least {defaults.GRID_MIN_CELL} pixels (they would be {w}x{h})")


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
