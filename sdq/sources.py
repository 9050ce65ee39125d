"""Where a model's weights come from: one `ModelSource` subclass per kind of model id.

`source_for(model_id)` picks the first source whose `matches` accepts the id: a built-in
(`builtin:NAME`), a model pushed to the bucket (`store:NAME`), a single checkpoint file
(`.safetensors`/`.ckpt`, or a `.gguf` transformer), a local diffusers folder, else a Hugging Face hub
id. Each source `open`s the model to a local path a worker loads from (a diffusers folder, or a checkpoint file),
building, pulling or downloading it first as needed, and gives its weights' `digest` for the result
cache. Torch-free and light: the producer matches ids with it; what needs heavy libraries (building
a built-in, a hub download, a bucket pull, hashing files) is lent by the worker as a `Fetcher`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, ClassVar, Protocol

from sdq.exceptions import ModelError

log = logging.getLogger(__name__)

BUILTIN_PREFIX = "builtin:"
STORE_PREFIX = "store:"
"""Prefix of models pushed to the bucket (`sdq models push PATH --as NAME` -> `store:NAME`)."""
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt", ".gguf")
BUILTIN_FORMAT = "3"
"""Version of the built-in generators; a new one makes a new cache folder (3: the full-size built-ins'
VAE config has the model's image size, so VAE tiling uses full-size tiles)."""
FP16_VARIANT = "fp16"
"""The weight variant name published checkpoints use for half-precision files."""
STORE_MANIFEST = ".sdq-manifest.json"
"""The local manifest a complete pull of a pushed model leaves in its folder."""


def builtin_path(models_dir: Path, name: str) -> Path:
    """Folder of built-in model `name` (without `builtin:`) inside the model cache."""
    return Path(models_dir) / "builtin" / f"{name}-v{BUILTIN_FORMAT}"


def is_model_folder(folder: Path) -> bool:
    """A diffusers pipeline folder (`model_index.json`) or a single model's folder (`config.json`, e.g. a ControlNet)."""
    return (folder / "model_index.json").is_file() or (folder / "config.json").is_file()


def weights_digest(lines: list[str]) -> str:
    """The digest over a model's lines of `path:sha256` (or other identifying lines)."""
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


class Fetcher(Protocol):
    """What a worker lends the sources: its model cache, its precision, the bucket, and the tools
    that need heavy libraries."""

    models_dir: Path
    half: bool  # the worker computes in fp16/bf16: prefer fp16 weight variants
    has_store: bool  # a bucket is configured

    def build_builtin(self, name: str) -> Path:
        """The built-in's folder, generated on first use; KeyError for an unknown name."""

    def download(self, repo_id: str, variant: str | None, local_only: bool) -> Path:
        """A hub repo's snapshot folder (OSError/ValueError when not found)."""

    def pull(self, name: str) -> Path:
        """A pushed model's verified local copy: its folder, or its checkpoint file."""

    def remote_manifest(self, name: str) -> dict[str, Any]:
        """A pushed model's manifest in the bucket."""

    def file_sha256(self, path: Path) -> str:
        """SHA-256 of one file (remembered per path, size and mtime)."""


class ModelSource:
    """A kind of model id: which ids it takes, where their weights are, and their digest."""

    kind: ClassVar[str] = ""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id

    @classmethod
    def matches(cls, model_id: str) -> bool:
        """True when `model_id` is of this kind."""
        raise NotImplementedError

    def open(self, fetcher: Fetcher) -> Path:
        """The local path the worker loads from (a diffusers folder or a checkpoint file), fetched or
        built first as needed; ModelError when it cannot be had."""
        raise NotImplementedError

    def digest(self, fetcher: Fetcher) -> str | None:
        """A digest of the weights (and configs) that make the images, or None when it cannot be
        known here without loading or downloading."""
        raise NotImplementedError

    def listing(self, models_dir: Path) -> dict[str, Any]:
        """What `sdq models` shows besides the id and kind: where it is on this machine and whether it
        is there yet (nothing for kinds fetched on first use)."""
        return {}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.model_id!r})"


def folder_digest(fetcher: Fetcher, folder: Path) -> str | None:
    """Over every file of a diffusers folder (hidden files aside); None when it is not one."""
    if not is_model_folder(folder):
        return None
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(folder).parts))
    return weights_digest([f"{p.relative_to(folder).as_posix()}:{fetcher.file_sha256(p)}" for p in files])


def single_file_config(file: Path) -> Path | None:
    """The local diffusers config folder of a single checkpoint file: a folder beside it named like
    the file without its suffix (`sd-v1-4.safetensors` -> `sd-v1-4/`) holding `model_index.json` and
    each component's config (weights are not needed). None when there is none."""
    folder = file.with_suffix("")
    return folder if (folder / "model_index.json").is_file() else None


class BuiltinSource(ModelSource):
    """`builtin:NAME`: a tiny random-weight model generated on this machine on first use."""

    kind = "builtin"

    @classmethod
    def matches(cls, model_id: str) -> bool:
        return model_id.startswith(BUILTIN_PREFIX)

    @property
    def name(self) -> str:
        """The built-in's name without the prefix."""
        return self.model_id.removeprefix(BUILTIN_PREFIX)

    def open(self, fetcher: Fetcher) -> Path:
        try:
            return fetcher.build_builtin(self.name)
        except KeyError:
            raise ModelError(f"unknown built-in model {self.model_id!r}") from None

    def digest(self, fetcher: Fetcher) -> str | None:
        try:
            return folder_digest(fetcher, fetcher.build_builtin(self.name))
        except KeyError:
            return None

    def listing(self, models_dir: Path) -> dict[str, Any]:
        path = builtin_path(models_dir, self.name)
        return {"path": str(path), "present": is_model_folder(path)}


class StoreSource(ModelSource):
    """`store:NAME`: a model pushed to the fleet's bucket, pulled into the cache and verified."""

    kind = "store"

    @classmethod
    def matches(cls, model_id: str) -> bool:
        return model_id.startswith(STORE_PREFIX)

    @property
    def name(self) -> str:
        """The pushed model's name without the prefix."""
        return self.model_id.removeprefix(STORE_PREFIX)

    def open(self, fetcher: Fetcher) -> Path:
        if not fetcher.has_store:
            raise ModelError(f"{self.model_id}: this worker has no bucket to pull models from")
        return fetcher.pull(self.name)

    def digest(self, fetcher: Fetcher) -> str | None:
        """The checksums of its manifest: the local pulled copy's when there is one (what this
        machine loads), else the bucket's."""
        local = Path(fetcher.models_dir) / "store" / self.name / STORE_MANIFEST
        if local.is_file():
            manifest = json.loads(local.read_text(encoding="utf-8"))
        elif fetcher.has_store:
            manifest = fetcher.remote_manifest(self.name)
        else:
            return None
        return weights_digest([manifest.get("kind", ""), str(manifest.get("entry"))]
                              + sorted(f"{f['path']}:{f['sha256']}" for f in manifest["files"]))



class FileSource(ModelSource):
    """A single checkpoint file in the original (LDM) layout (the loader refuses a `.ckpt` pickle
    unless the operator allows it, whatever source the file came from)."""

    kind = "file"

    @classmethod
    def matches(cls, model_id: str) -> bool:
        return model_id.lower().endswith(SINGLE_FILE_SUFFIXES)

    @property
    def path(self) -> Path:
        """The checkpoint file."""
        return Path(self.model_id).expanduser()

    def open(self, fetcher: Fetcher) -> Path:
        if not self.path.is_file():
            raise ModelError(f"single-file model {self.model_id!r}: no such file on worker")
        return self.path

    def digest(self, fetcher: Fetcher) -> str | None:
        """The checkpoint and the local config folder that gives its architecture."""
        if not self.path.is_file():
            return None
        lines = [f"file:{fetcher.file_sha256(self.path)}"]
        config = single_file_config(self.path)
        if config is not None:
            lines += [f"{p.relative_to(config).as_posix()}:{fetcher.file_sha256(p)}"
                      for p in sorted(config.rglob("*")) if p.is_file()]
        return weights_digest(lines)

    def listing(self, models_dir: Path) -> dict[str, Any]:
        return {"path": os.path.abspath(self.path), "present": self.path.exists()}


class FolderSource(ModelSource):
    """A local diffusers folder (an absolute or `./`, `../`, `~` path, or an existing folder)."""

    kind = "folder"

    @classmethod
    def matches(cls, model_id: str) -> bool:
        return os.path.isabs(model_id) or model_id.startswith(("./", "../", "~")) or Path(model_id).is_dir()

    @property
    def path(self) -> Path:
        """The folder."""
        return Path(self.model_id).expanduser()

    def open(self, fetcher: Fetcher) -> Path:
        if not (self.path / "model_index.json").is_file():
            raise ModelError(f"{self.path}: not a diffusers model folder (no model_index.json)")
        return self.path

    def digest(self, fetcher: Fetcher) -> str | None:
        return folder_digest(fetcher, self.path)

    def listing(self, models_dir: Path) -> dict[str, Any]:
        return {"path": os.path.abspath(self.path), "present": self.path.exists()}


class HubSource(ModelSource):
    """A Hugging Face repo id: its snapshot in the local cache (`<models_dir>/hub`), downloaded
    when missing unless HF_HUB_OFFLINE is set."""

    kind = "hub"

    @classmethod
    def matches(cls, model_id: str) -> bool:
        return True  # whatever no other source takes

    def cache_dir(self, models_dir: Path) -> Path:
        """The hub cache folder of this repo."""
        return Path(models_dir) / "hub" / f"models--{self.model_id.replace('/', '--')}"

    def open(self, fetcher: Fetcher) -> Path:
        """The snapshot folder, from the local cache when it is there (no network); the fp16 weights
        where the repo has them and the worker computes in half precision, else the full weights."""
        cache = Path(fetcher.models_dir) / "hub"
        variants = [FP16_VARIANT, None] if fetcher.half else [None]
        for local_only in (True, False):
            if not local_only:
                if _hub_offline():
                    raise ModelError(f"model {self.model_id!r} is not in the local cache {cache} and HF_HUB_OFFLINE "
                                     f"is set, so it cannot be downloaded")
                log.info("model %s is not cached in %s: downloading it from the hub", self.model_id, cache)
            for variant in variants:
                try:
                    return Path(fetcher.download(self.model_id, variant, local_only))
                except (OSError, ValueError) as exc:  # not cached, or no such variant
                    log.debug("%s (variant %s, local only %s): %s", self.model_id, variant, local_only, exc)
        raise ModelError(f"model {self.model_id!r} could not be found in {cache} or on the hub")

    def digest(self, fetcher: Fetcher) -> str | None:
        """The commit of the snapshot in the local cache (`refs/main`), or None when it is not cached."""
        ref = self.cache_dir(fetcher.models_dir) / "refs" / "main"
        if not ref.is_file():
            return None
        commit = ref.read_text(encoding="utf-8").strip()
        if not (ref.parent.parent / "snapshots" / commit).is_dir():
            return None
        return weights_digest([f"hub:{self.model_id}@{commit}"])


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it (set to 1/true/yes/on)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


SOURCES: tuple[type[ModelSource], ...] = (BuiltinSource, StoreSource, FileSource, FolderSource, HubSource)
"""Every kind of model id, in the order they are tried (the hub takes whatever is left)."""


def source_for(model_id: str) -> ModelSource:
    """The source of `model_id`: the first kind whose `matches` accepts it."""
    return next(cls for cls in SOURCES if cls.matches(model_id))(model_id)
