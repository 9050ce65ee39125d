"""Models delivered through the bucket: new machines load weights from the fleet's own S3 store.

`push` uploads a diffusers folder or a single checkpoint file to ``models/<NAME>/`` and writes
``models/<NAME>/manifest.json`` last, listing every file with its size and SHA-256. `pull` copies
a pushed model into a local cache folder: files already there and intact are kept, an interrupted
download resumes where it stopped (ranged GETs into a ``.part`` file), every file is verified
against the manifest, and the local manifest is written last, so a folder with one is complete.
One process per machine pulls a model at a time (a file lock beside its folder). An S3 outage is
ridden out with the store's backoff (`storage.s3`); beyond its limit the pull raises ModelUnavailable
(the worker gives the items back), while a model that is wrong raises ModelError (they fail).
Callers allow such a model as ``store:<NAME>`` in SDQ_MODELS.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from sdq.exceptions import ModelError, ModelUnavailable
from sdq.sources import STORE_MANIFEST, is_model_folder
from storage.s3 import ResultStore, missing, transient

log = logging.getLogger(__name__)

PREFIX = "models/"
MANIFEST = "manifest.json"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
"""Names a pushed model may have (they become S3 keys and folder names)."""

CHUNK = 8 * 1024 * 1024
"""Bytes read or written at a time."""

PROGRESS_EVERY_S = 5.0
"""Seconds between progress lines while a model downloads."""

LOCK_POLL_S = 0.5
"""Seconds between tries at the pull lock of a model another process on this machine is pulling."""


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
    """Upload a diffusers folder (a pipeline's, or a single model's such as a ControlNet) or a checkpoint file
    as `models/<name>/`; returns the manifest."""
    check_name(name)
    path = Path(path).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))
        kind, entry = "folder", None
    elif path.is_file():
        files, kind, entry = [path], "file", path.name
    else:
        raise ModelError(f"{path}: no such file or folder")
    if kind == "folder" and not is_model_folder(path):  # a pipeline's, or a single model's (a ControlNet)
        raise ModelError(f"{path}: not a diffusers folder (no model_index.json, nor a single model's config.json)")
    base = path if kind == "folder" else path.parent
    listed = []
    for file in files:
        rel = file.relative_to(base).as_posix()
        store.put_file(f"{PREFIX}{name}/files/{rel}", file)
        listed.append({"path": rel, "size": file.stat().st_size, "sha256": _sha256(file)})
        log.info("pushed %s (%d bytes)", rel, listed[-1]["size"])
    manifest = {"name": name, "kind": kind, "entry": entry, "files": listed, "pushed_at": time.time()}
    lora = _lora_info(path) if kind == "file" else None
    if lora is not None:
        manifest["lora"] = lora
    store.put(f"{PREFIX}{name}/{MANIFEST}", json.dumps(manifest, indent=1).encode(), content_type="application/json")
    return manifest


def _lora_info(file: Path) -> dict[str, Any] | None:
    """What a pushed single file says about itself when it is a LoRA adapter (its tensor names hold
    `lora_`): the family it is for (`sdq.loras`); None for any other file. Refuses a `.safetensors`
    file whose header cannot be read."""
    from sdq.loras import family_from_header, is_lora_header, read_header

    if file.suffix.lower() != ".safetensors":
        return None
    try:
        header = read_header(file)
    except (OSError, ValueError, struct.error) as exc:
        raise ModelError(f"{file}: not a readable .safetensors file ({exc})") from None
    if not is_lora_header(header):
        return None
    return {"family": family_from_header(header), "tensors": len(header) - ("__metadata__" in header)}


def pushed_adapter_family(manifest: dict[str, Any]) -> tuple[bool, str | None]:
    """(whether a pushed model's manifest is an adapter's, the family it says the adapter is for)."""
    adapter = manifest.get("lora")
    return adapter is not None, (adapter or {}).get("family")


def remote_manifest(store: ResultStore, name: str) -> dict[str, Any]:
    """The manifest of pushed model `name`: ModelError when there is none, ModelUnavailable when the
    bucket stays unreachable beyond the store's outage limit (the items then go back to the queue)."""
    key = f"{PREFIX}{check_name(name)}/{MANIFEST}"
    try:
        return json.loads(store.get(key))
    except Exception as exc:  # noqa: BLE001 - botocore raises several kinds for a missing key
        if transient(exc):
            raise ModelUnavailable(f"store:{name}: the bucket cannot be reached to read its manifest "
                                   f"({type(exc).__name__}: {exc})") from exc
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


def _size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _append(store: ResultStore, key: str, part: Path, size: int, name: str) -> None:
    """One ranged GET of `key` from the end of `part` on, appended to `part`. Each piece received
    calls the store's `on_retry` hook (a worker's lease progress): a long pull is progress, not a stall."""
    done = _size(part)
    if done >= size:
        return
    last = time.monotonic()
    _, pieces = store.stream(key, CHUNK, start=done)
    with open(part, "ab") as f:
        for chunk in pieces:
            f.write(chunk)
            done += len(chunk)
            if store.on_retry is not None:
                store.on_retry()
            if time.monotonic() - last >= PROGRESS_EVERY_S:
                last = time.monotonic()
                log.info("store:%s: %s %d%% (%d of %d bytes)", name, part.name.removesuffix(".part"),
                         100 * done // max(1, size), done, size)


def part_path(target: Path, sha256: str) -> Path:
    """Where the download of `target` in the version with this SHA-256 collects (`<name>.<sha>.part`):
    a re-push under the same name never resumes a part of the old bytes."""
    return target.with_name(f"{target.name}.{sha256[:16]}.part")


def _prune(folder: Path, manifest: dict[str, Any]) -> int:
    """Delete what `folder` holds besides the manifest's files and their own parts (files of an earlier
    push: an old weights variant would be loaded beside the new files); returns how many files went."""
    files = manifest["files"]
    keep = {f["path"] for f in files} | {part_path(Path(f["path"]), f["sha256"]).as_posix() for f in files}
    gone = 0
    for path in sorted(folder.rglob("*"), reverse=True):  # children before their folders
        if path.is_dir() and not path.is_symlink():
            if not any(path.iterdir()):
                path.rmdir()
        elif path.relative_to(folder).as_posix() not in keep:
            path.unlink()
            gone += 1
    return gone


def _download(store: ResultStore, key: str, target: Path, size: int, name: str, sha256: str) -> None:
    """Fetch `key` into `target` through its part file (`part_path`), resuming what an interrupted
    download of the same version left. Errors that may pass (S3 down, a body cut short) are retried,
    resuming, with the store's backoff for its outage limit, counted afresh after each stretch that made
    progress; then ModelUnavailable (the part file stays for the next try)."""
    part = part_path(target, sha256)
    target.parent.mkdir(parents=True, exist_ok=True)
    if _size(part) > size:
        part.unlink()
    if _size(part):
        log.info("store:%s: resuming %s at %d of %d bytes", name, target.name, _size(part), size)
    while True:
        before = _size(part)
        try:
            store.retried(f"GET {key}", lambda: _append(store, key, part, size, name))
            break
        except Exception as exc:  # noqa: BLE001 - classified just below
            if missing(exc):
                raise ModelError(f"store:{name}: {key} is listed in the manifest but not in the bucket") from exc
            if not transient(exc):
                raise
            if _size(part) > before:
                continue  # it made progress before this outage: the outage limit starts again
            raise ModelUnavailable(f"store:{name}: the bucket cannot be reached to fetch {target.name} "
                                   f"({type(exc).__name__}: {exc}); the download resumes on the next try") from exc
    part.touch()
    part.replace(target)


def _complete(folder: Path, manifest: dict[str, Any]) -> bool:
    """Whether `folder` holds a complete, verified pull of `manifest` (its local manifest is written last)."""
    try:
        return json.loads((folder / STORE_MANIFEST).read_text(encoding="utf-8")) == manifest
    except (OSError, ValueError):
        return False


@contextmanager
def _pull_lock(folder: Path, name: str, on_wait: Callable[[], None] | None) -> Iterator[None]:
    """Hold `<folder>.lock` (`fcntl.flock`, released by the kernel if the holder dies): one process
    per machine pulls a model at a time. The others wait, calling `on_wait` (the worker's lease
    counts waiting on a live pull as progress)."""
    import fcntl

    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "a") as lock:
        told = False
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not told:
                    log.info("store:%s: another process on this machine is pulling it; waiting", name)
                    told = True
                if on_wait is not None:
                    on_wait()
                time.sleep(LOCK_POLL_S)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def pull(store: ResultStore, name: str, cache: Path) -> Path:
    """A local copy of pushed model `name` under `cache/store/<name>/`, verified; returns the folder
    to load (`from_pretrained`) or, for a checkpoint file, the file. One process per machine pulls a
    model at a time (a file lock); one that waited finds it complete. ModelError for a model that is
    wrong (no manifest, a file that does not match it); ModelUnavailable when the bucket stays
    unreachable."""
    manifest = remote_manifest(store, name)
    folder = Path(cache) / "store" / name
    loadable_path(folder, manifest)  # refuse a bad entry before fetching anything
    if not _complete(folder, manifest):
        with _pull_lock(folder, name, store.on_retry):
            if not _complete(folder, manifest):  # not pulled meanwhile by another process
                _fetch(store, name, folder, manifest)
    return loadable_path(folder, manifest)


def _fetch(store: ResultStore, name: str, folder: Path, manifest: dict[str, Any]) -> None:
    """Fetch and verify every file of `manifest` into `folder` (intact ones kept), local manifest last."""
    log.info("store:%s: pulling %d files (%d bytes) from the bucket", name, len(manifest["files"]),
             sum(f["size"] for f in manifest["files"]))
    if folder.is_dir():  # an earlier pull: exactly this manifest's files stay (intact ones are kept)
        (folder / STORE_MANIFEST).unlink(missing_ok=True)
        if gone := _prune(folder, manifest):
            log.info("store:%s: removed %d file(s) the pushed manifest does not list", name, gone)
    for entry in manifest["files"]:
        target = _safe_target(folder, entry["path"])
        if target.is_file() and target.stat().st_size == entry["size"] and _sha256(target) == entry["sha256"]:
            continue
        _download(store, f"{PREFIX}{name}/files/{entry['path']}", target, entry["size"], name, entry["sha256"])
        if _sha256(target) != entry["sha256"]:
            target.unlink()
            raise ModelError(f"store:{name}: {entry['path']} does not match its SHA-256 in the manifest "
                             "(changed or corrupted in the bucket?); removed, it is fetched again on the next try")
    fd, tmp = tempfile.mkstemp(prefix=".manifest-", dir=folder)  # written whole or not at all
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(manifest, f)
    os.replace(tmp, folder / STORE_MANIFEST)
    log.info("store:%s: ready in %s", name, folder)
