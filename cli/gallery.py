"""The `index.html` gallery written next to downloaded results."""
from __future__ import annotations

import html
from pathlib import Path
from typing import Any


def write_gallery(out_dir: Path, job: dict[str, Any], items: list[dict[str, Any]]) -> Path:
    """Write `out_dir/index.html` showing every downloaded image with its prompt and seed."""
    cards = []
    for it in items:
        name = f"{it['index']:05d}.png"
        caption = html.escape(it.get("prompt") or "")
        meta = f"seed {it.get('seed')} · {it.get('state')}"
        img = f'<img src="{name}" alt="{caption}" loading="lazy">' if (out_dir / name).exists() else \
            f'<div class="missing">{html.escape(str(it.get("error") or it.get("state")))}</div>'
        if (out_dir / f"{it['index']:05d}.mp4").exists():  # a video item: played, its poster shown first
            img = f'<video src="{it["index"]:05d}.mp4" poster="{name}" controls muted loop></video>'
        cards.append(f"<figure>{img}<figcaption>{caption}<br><small>{html.escape(meta)}</small></figcaption></figure>")
    title = html.escape(f"sdq job {job['id']}")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;background:#fafafa}}
main{{display:grid;grid-template-columns:repeat(auto-fill,minmax(220px,1fr));gap:1em}}
figure{{margin:0;background:#fff;padding:.5em;border:1px solid #ddd}}img,video{{width:100%;image-rendering:auto}}
figcaption{{font-size:.9em}}.missing{{padding:2em;color:#a00}}</style></head>
<body><h1>{title}</h1><p>{html.escape(job.get('model') or '')} · {html.escape(job.get('pipeline') or '')} ·
{len(items)} items · state {html.escape(job.get('state') or '')}</p>
<main>{''.join(cards)}</main></body></html>
"""
    path = out_dir / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
