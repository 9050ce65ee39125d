"""The worker's side of model sources (`sdq.sources`): the `Fetcher` it lends them to build,
download, pull and hash weights on this machine."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from workers.weights import WeightsHasher


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
        from workers import builtin

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
