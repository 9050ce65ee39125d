"""The geometry of labeled contact sheets ("grids") of a job's images, like the X/Y plots of the SD web UIs.

Layout: items are in submit order (prompt, then sweep combination with the last sweep key varying
fastest, then sample), so they fill the grid row by row.

- columns: the values of the **last** sweep key (times `images_per_prompt` samples); without a
  sweep, the samples of one prompt;
- rows: each prompt combined with the values of the other sweep keys.

The sheet is ``LABEL_W + cols * cell_w`` wide and ``LABEL_H + rows * cell_h`` high, where the cell
is the largest image, scaled down (aspect kept) so the sheet stays within `GRID_MAX_PIXELS`; row
labels sit in a left column, column labels in a top band. A grid whose cells would have to shrink
below `GRID_MIN_CELL` pixels is refused at submit (`check_fits`).

This module is the layout only (torch- and PIL-free), so the producer can refuse a grid at submit;
the worker draws the sheet (`workers.finishing.grid`).
"""
from __future__ import annotations

import math

from sdq import defaults
from sdq.records import Item, Job

LABEL_W = 160
"""Width of the row-label column, pixels."""

LABEL_H = 32
"""Height of the column-label band, pixels."""

GRID_MAX_ITEMS = 1024
"""Most items a job may have when it asks for a grid (`params.grid`)."""


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
    from sdq.contract import item_size

    sizes = [item_size(job.pipeline, it.params) for it in items if it.params] or [(64, 64)]
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
