"""The worker's side of model sources (`sdq.sources`): the `Fetcher` it lends them to build,
download, pull and hash weights on this machine, and the digests of models' files."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

from sdq.sources import source_for



log = logging.getLogger(__name__)

READ_CHUNK = 8 * 1024 * 1024
"""Bytes read at a time while hashing a file."""

HASH_DIR = "hashes"
"""Folder under the models dir holding the per-file digest records."""


class WeightsHasher:
    """Digests of models' files for one worker (`models_dir` as in `PipelineCache`; `store` for
    `store:NAME` models), for the result cache: what the files say, without loading them.

    Each file's SHA-256 is kept on disk under ``<models_dir>/hashes/`` keyed by (path, size, mtime), so a
    multi-GB checkpoint is read once per machine (and per change), then only `stat`-ed; a model's digest is
    a SHA-256 over its files' relative paths and digests, configs included. Pushed models (`store:NAME`)
    reuse their manifest's checksums; Hugging Face ids use the cached snapshot's commit (each kind's rule
    is its source's `digest`, in `sdq.sources`). None means "unknown": the item is not cached."""

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
        return source_for(model_id).digest(WorkerFetcher(self.models_dir, self.store, hasher=self))

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


class WorkerFetcher:
    """Builds built-ins, downloads hub snapshots, pulls pushed models and hashes files for one
    worker (`models_dir` as in `PipelineCache`; `store` for `store:NAME` models)."""

    def __init__(self, models_dir: Path, store=None, half: bool = False, hasher: WeightsHasher | None = None) -> None:
        self.models_dir = Path(models_dir)
        self.store = store
        self.half = half
        self.hasher = hasher or WeightsHasher(self.models_dir, store)

    @property
    def has_store(self) -> bool:
        """A bucket is configured."""
        return self.store is not None

    def build_builtin(self, name: str) -> Path:
        """The built-in's folder, generated on first use; KeyError for an unknown name."""
        from workers.builtins import registry as builtin

        return builtin.ensure_builtin(self.models_dir, name)

    def download(self, repo_id: str, variant: str | None, local_only: bool) -> Path:
        """A hub repo's snapshot folder in `<models_dir>/hub`, with the files a diffusers pipeline needs."""
        import diffusers

        return Path(diffusers.DiffusionPipeline.download(
            repo_id, cache_dir=str(self.models_dir / "hub"), local_files_only=local_only, variant=variant))

    def pull(self, name: str) -> Path:
        """A pushed model's verified local copy: its folder, or its checkpoint file."""
        from storage.models import pull

        return pull(self.store, name, self.models_dir)

    def remote_manifest(self, name: str) -> dict[str, Any]:
        """A pushed model's manifest in the bucket."""
        from storage.models import remote_manifest

        return remote_manifest(self.store, name)

    def file_sha256(self, path: Path) -> str:
        """SHA-256 of one file, remembered per (path, size, mtime) on this machine."""
        return self.hasher.file_sha256(path)
