"""A model's weights digest, for the result cache: what the files say, without loading them.

Each file's SHA-256 is kept on disk under ``<models_dir>/hashes/`` keyed by (path, size, mtime), so
a multi-GB checkpoint is read once per machine (and per change), then only `stat`-ed; a model's
digest is a SHA-256 over its files' relative paths and digests, configs included (a scheduler
config changes the image too). Pushed models (`store:NAME`) reuse their manifest's checksums;
Hugging Face ids use the cached snapshot's commit. None means "unknown": the item is not cached.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

from sdq.models import STORE_PREFIX, model_kind

log = logging.getLogger(__name__)

READ_CHUNK = 8 * 1024 * 1024
"""Bytes read at a time while hashing a file."""

HASH_DIR = "hashes"
"""Folder under the models dir holding the per-file digest records."""


def _digest(lines: list[str]) -> str:
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


class WeightsHasher:
    """Digests of models' files for one worker (`models_dir` as in `PipelineCache`; `store` for
    `store:NAME` models)."""

    def __init__(self, models_dir: Path, store=None) -> None:
        self.models_dir = Path(models_dir)
        self.store = store
        self._files: dict[str, tuple[int, int, str]] = {}  # path -> (size, mtime_ns, sha256)

    def digest(self, model_id: str) -> str | None:
        """The digest of `model_id`'s files, or None when it cannot be known here without loading or
        downloading (never raises: the item then simply runs)."""
        try:
            return self._model_digest(model_id)
        except Exception:  # noqa: BLE001 - unknown weights only turn the cache off for this model
            log.warning("weights digest of %s unknown; its items are not cached", model_id, exc_info=True)
            return None

    def _model_digest(self, model_id: str) -> str | None:
        kind = model_kind(model_id)
        if kind == "builtin":
            from workers import builtin

            name = model_id.removeprefix(builtin.BUILTIN_PREFIX)
            if name not in builtin.BUILDERS:
                return None
            return self.folder_digest(builtin.ensure_builtin(self.models_dir, name))
        if kind == "folder":
            return self.folder_digest(Path(model_id).expanduser())
        if kind == "file":
            return self.file_model_digest(Path(model_id).expanduser())
        if kind == "store":
            return self.store_digest(model_id.removeprefix(STORE_PREFIX))
        return self.hub_digest(model_id)

    def folder_digest(self, folder: Path) -> str | None:
        """Over every file of a diffusers folder (hidden files aside)."""
        if not (folder / "model_index.json").is_file():
            return None
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not any(
            part.startswith(".") for part in p.relative_to(folder).parts))
        return _digest([f"{p.relative_to(folder).as_posix()}:{self.file_sha256(p)}" for p in files])

    def file_model_digest(self, file: Path) -> str | None:
        """A single checkpoint and the local config folder that gives its architecture."""
        if not file.is_file():
            return None
        lines = [f"file:{self.file_sha256(file)}"]
        from workers.pipelines import single_file_config

        config = single_file_config(file)
        if config is not None:
            lines += [f"{p.relative_to(config).as_posix()}:{self.file_sha256(p)}"
                      for p in sorted(config.rglob("*")) if p.is_file()]
        return _digest(lines)

    def store_digest(self, name: str) -> str | None:
        """A pushed model: the checksums of its manifest, the local pulled copy's when there is one
        (what this machine loads), else the bucket's."""
        from storage.models import remote_manifest

        local = self.models_dir / "store" / name / ".sdq-manifest.json"
        if local.is_file():
            manifest = json.loads(local.read_text(encoding="utf-8"))
        elif self.store is not None:
            manifest = remote_manifest(self.store, name)
        else:
            return None
        return _digest([manifest.get("kind", ""), str(manifest.get("entry"))]
                       + sorted(f"{f['path']}:{f['sha256']}" for f in manifest["files"]))

    def hub_digest(self, repo_id: str) -> str | None:
        """A Hugging Face repo id: the commit of the snapshot in the local cache (`refs/main`), or
        None when it is not cached (not resolvable offline)."""
        ref = self.models_dir / "hub" / f"models--{repo_id.replace('/', '--')}" / "refs" / "main"
        if not ref.is_file():
            return None
        commit = ref.read_text(encoding="utf-8").strip()
        if not (ref.parent.parent / "snapshots" / commit).is_dir():
            return None
        return _digest([f"hub:{repo_id}@{commit}"])

    def file_sha256(self, path: Path) -> str:
        """SHA-256 of one file, read once per (path, size, mtime) per machine."""
        path = path.resolve()
        st = path.stat()
        memo = self._files.get(str(path))
        if memo is not None and memo[:2] == (st.st_size, st.st_mtime_ns):
            return memo[2]
        record_path = self.models_dir / HASH_DIR / f"{hashlib.sha256(str(path).encode()).hexdigest()}.json"
        sha = None
        try:
            rec = json.loads(record_path.read_text(encoding="utf-8"))
            if (rec["path"], rec["size"], rec["mtime_ns"]) == (str(path), st.st_size, st.st_mtime_ns):
                sha = rec["sha256"]
        except (OSError, ValueError, KeyError):
            pass
        if sha is None:
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                while block := f.read(READ_CHUNK):
                    digest.update(block)
            sha = digest.hexdigest()
            self._save(record_path, {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns,
                                     "sha256": sha})
        self._files[str(path)] = (st.st_size, st.st_mtime_ns, sha)
        return sha

    def _save(self, record_path: Path, record: dict) -> None:
        """Write a digest record atomically (other workers on the machine may read it meanwhile)."""
        try:
            record_path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".rec-", dir=record_path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f)
            os.replace(tmp, record_path)
        except OSError:  # a read-only models dir: the digest is only kept in memory
            log.warning("cannot keep the digest of %s in %s", record["path"], record_path.parent, exc_info=True)
