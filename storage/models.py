"""Models delivered through the bucket: new machines load weights from the fleet's own S3 store.

`push` uploads a diffusers folder or a single checkpoint file to ``models/<NAME>/`` and writes
``models/<NAME>/manifest.json`` last, listing every file with its size and SHA-256. `pull` copies
a pushed model into a local cache folder: files already there and intact are kept, an interrupted
download resumes where it stopped (ranged GETs into a ``.part`` file), every file is verified
against the manifest, and the local manifest is written last, so a folder with one is complete.
Callers allow such a model as ``store:<NAME>`` in SDQ_MODELS.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from pathlib import Path
from typing import Any

from sdq.exceptions import ModelError
from storage.s3 import ResultStore

log = logging.getLogger(__name__)

PREFIX = "models/"
MANIFEST = "manifest.json"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""Names a pushed model may have (they become S3 keys and folder names)."""

CHUNK = 8 * 1024 * 1024
"""Bytes read or written at a time."""

PROGRESS_EVERY_S = 5.0
"""Seconds between progress lines while a model downloads."""


def check_name(name: str) -> str:
    """`name` if it may name a pushed model; ModelError otherwise."""
    if not NAME_RE.match(name or ""):
        raise ModelError(f"model name {name!r}: use 1-64 letters, digits, '.', '_' or '-' (starting with a "
                         "letter or digit)")
    return name


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def push(store: ResultStore, path: Path, name: str) -> dict[str, Any]:
    """Upload a diffusers folder or a checkpoint file as `models/<name>/`; returns the manifest."""
    check_name(name)
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        kind, entry = "folder", None
    elif path.is_file():
        files, kind, entry = [path], "file", path.name
    else:
        raise ModelError(f"{path}: no such file or folder")
    if kind == "folder" and not (path / "model_index.json").is_file():
        raise ModelError(f"{path}: not a diffusers folder (no model_index.json)")
    base = path if kind == "folder" else path.parent
    listed = []
    for file in files:
        rel = file.relative_to(base).as_posix()
        store.put_file(f"{PREFIX}{name}/files/{rel}", file)
        listed.append({"path": rel, "size": file.stat().st_size, "sha256": _sha256(file)})
        log.info("pushed %s (%d bytes)", rel, listed[-1]["size"])
    manifest = {"name": name, "kind": kind, "entry": entry, "files": listed, "pushed_at": time.time()}
    store.put(f"{PREFIX}{name}/{MANIFEST}", json.dumps(manifest, indent=1).encode(), content_type="application/json")
    return manifest


def remote_manifest(store: ResultStore, name: str) -> dict[str, Any]:
    """The manifest of pushed model `name`; ModelError when there is none."""
    try:
        return json.loads(store.get(f"{PREFIX}{check_name(name)}/{MANIFEST}"))
    except ModelError:
        raise
    except Exception as exc:  # noqa: BLE001 - botocore raises several kinds for a missing key
        raise ModelError(f"store:{name}: no pushed model {name!r} in bucket {store.bucket} "
                         f"(push it with `sdq models push PATH --as {name}`): {exc}") from exc


def _safe_target(folder: Path, rel: str) -> Path:
    target = (folder / rel).resolve()
    if folder.resolve() not in target.parents:
        raise ModelError(f"manifest lists a file outside the model folder: {rel!r}")
    return target


def loadable_path(folder: Path, manifest: dict[str, Any]) -> Path:
    """What to load from a pulled model: the folder, or for a checkpoint file its `entry`, which must be one
    of the manifest's own files inside the folder (a pushed manifest is not trusted to point elsewhere)."""
    kind, entry = manifest.get("kind"), manifest.get("entry")
    if kind == "folder":
        return folder
    listed = {f.get("path") for f in manifest.get("files") or [] if isinstance(f, dict)}
    if kind != "file" or not isinstance(entry, str) or entry not in listed:
        raise ModelError(f"manifest of kind {kind!r} names entry {entry!r}, which is not one of its files")
    return _safe_target(folder, entry)


def _download(store: ResultStore, key: str, target: Path, size: int, name: str) -> None:
    """Fetch `key` into `target`, resuming a `.part` file left by an interrupted download."""
    part = target.with_name(target.name + ".part")
    target.parent.mkdir(parents=True, exist_ok=True)
    done = part.stat().st_size if part.exists() else 0
    if done > size:
        part.unlink()
        done = 0
    if done:
        log.info("store:%s: resuming %s at %d of %d bytes", name, target.name, done, size)
    last = time.monotonic()
    if done < size:
        _, pieces = store.stream(key, CHUNK, start=done)
        with open(part, "ab") as f:
            for chunk in pieces:
                f.write(chunk)
                done += len(chunk)
                if time.monotonic() - last >= PROGRESS_EVERY_S:
                    last = time.monotonic()
                    log.info("store:%s: %s %d%% (%d of %d bytes)", name, target.name, 100 * done // max(1, size),
                             done, size)
    elif not part.exists():
        part.touch()
    part.replace(target)


def pull(store: ResultStore, name: str, cache: Path) -> Path:
    """A local copy of pushed model `name` under `cache/store/<name>/`, verified; returns the folder
    to load (`from_pretrained`) or, for a checkpoint file, the file."""
    manifest = remote_manifest(store, name)
    folder = Path(cache) / "store" / name
    local = folder / ".sdq-manifest.json"
    if local.is_file() and json.loads(local.read_text(encoding="utf-8")) == manifest:
        return loadable_path(folder, manifest)
    loadable_path(folder, manifest)  # refuse a bad entry before fetching anything
    log.info("store:%s: pulling %d files (%d bytes) from the bucket", name, len(manifest["files"]),
             sum(f["size"] for f in manifest["files"]))
    for entry in manifest["files"]:
        target = _safe_target(folder, entry["path"])
        if target.is_file() and target.stat().st_size == entry["size"] and _sha256(target) == entry["sha256"]:
            continue
        _download(store, f"{PREFIX}{name}/files/{entry['path']}", target, entry["size"], name)
        if _sha256(target) != entry["sha256"]:
            target.unlink()
            raise ModelError(f"store:{name}: {entry['path']} does not match its SHA-256 in the manifest "
                             "(changed or corrupted in the bucket?); removed, it is fetched again on the next try")
    local.write_text(json.dumps(manifest), encoding="utf-8")
    log.info("store:%s: ready in %s", name, folder)
    return loadable_path(folder, manifest)
