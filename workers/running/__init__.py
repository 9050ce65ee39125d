"""Making a chunk's images: the runner and what it calls (generation, step hook, routing, backups, result cache,
infotext, watermark, previews, video encoding, uploads)."""
