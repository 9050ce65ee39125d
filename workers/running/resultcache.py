"""The worker's side of the result cache: answer claimed items from stored objects before any model
is loaded, and record every result it stores.

A hit is served by a server-side S3 copy of the cached PNG (and its thumbnail) to the item's own
keys, then recorded `succeeded` with `cached: true` and `cached_from: {job, index}`. An entry whose
object is gone is dropped and the item runs; any other trouble with the cache also just runs the
item: the cache never fails an item.

The weights in a key are the digest of the model as this worker holds it: the one recorded when its
pipeline was loaded (`PipelineCache.weights_digest`), for both lookup and registration, so a model
changed on disk under a loaded pipeline never files the old weights' images under the new digest.

Low-memory mode decodes in VAE tiles, which changes the image: its results have keys of their own (the
item's parameters plus `LOW_MEMORY`), looked up when the worker would run the item in low-memory mode
(`PipelineCache.low_memory_for`) and registered by the mode that made them (the item's `low_memory`)."""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

from sdq import contract, options
from sdq.records import Chunk, Item
from sdq.state.errors import StateError
from sdq.videos import video_key
from sdq.state.resultindex import Maker, ResultIndex, cache_key, wants_cache
from sdq.state.store import JobStore
from storage import ObjectMissing, ResultStore
from workers.running.retry import retry_redis
from workers.running.thumbs import thumb_key
from workers.loading.sources import WeightsHasher

log = logging.getLogger(__name__)

LOW_MEMORY = "_low_memory"
"""Added to the parameters in the key of a result made in low-memory mode (VAE slicing and tiling)."""


@dataclass(frozen=True)
class Recipe:
    """What one item's cache key is made of: the maker (with the weights digest) and the item's inputs."""

    maker: Maker
    inputs: tuple[Any, ...]  # `cache_key`'s arguments after the maker (owner, pipeline, params, ...)
    pixels: int = 0  # the item's image size (whether it runs in low-memory mode depends on it)

    def key(self, weights: str | None = None, low_memory: bool = False) -> str:
        """The key, with `weights` in place of the maker's digest when given, of a result made in
        low-memory mode or not."""
        maker = self.maker if weights is None else replace(self.maker, weights=weights)
        inputs = self.inputs
        if low_memory:
            inputs = (*inputs[:2], {**inputs[2], LOW_MEMORY: True}, *inputs[3:])
        return cache_key(maker, *inputs)


class CachedResults:
    """Looks up, serves and registers results for one worker (one chunk at a time). `digest`: a
    model's weights digest as the worker holds it (`PipelineCache.weights_digest`; by default what
    its files say now)."""

    def __init__(self, index: ResultIndex, hasher: WeightsHasher, store: ResultStore, jobs: JobStore, worker: str,
                 device: str, dtype: str, safety_checker: bool, finalize: Callable[[str], None],
                 digest: Callable[[str], str | None] | None = None,
                 low_memory: Callable[[str, int], bool] | None = None) -> None:
        self.index, self.hasher, self.store, self.jobs = index, hasher, store, jobs
        self.worker, self.device, self.dtype = worker, device, dtype
        self.safety_checker = safety_checker
        self.finalize = finalize
        self.digest = digest or hasher.digest
        self.low_memory = low_memory or (lambda model, pixels: False)  # would it run in low-memory mode now?
        self._recipes: dict[tuple[str, int], Recipe] = {}  # (job, index) -> its key's recipe, for the current chunk

    # -- lookup ---------------------------------------------------------------------------------
    def recipes(self, chunk: Chunk, items: list[Item]) -> dict[int, Recipe]:
        """The key recipes of the `items` of `chunk` that want the cache (none when the weights are unknown)."""
        wanted = [it for it in items if wants_cache(it)]
        if not wanted:
            return {}
        weights = self.digest(chunk.model)
        if weights is None:
            return {}
        job = self.jobs.get(chunk.job)
        owner = job.owner if job is not None else ""
        maker = Maker(chunk.model, weights, contract.worker_kind(self.device), self.dtype, self.safety_checker)
        digests: dict[str, str] = {}  # upload key -> SHA-256 of its bytes, each read once

        def sha(key: str) -> str:
            if key not in digests:
                digests[key] = hashlib.sha256(self.store.get(key)).hexdigest()
            return digests[key]

        part = options.cache_inputs(chunk.params)  # what the request options add (uploads, weights, adapter files)
        extra = {**{name: sha(key) for name, key in part.images.items()},
                 **{name: self.hasher.digest(model) for name, model in part.weights.items()}}
        if None in extra.values():  # an option's weights unknown here (e.g. a ControlNet's): run fresh
            return {}
        adapters = self._adapter_digests(part.adapters)
        w, h = contract.item_size(chunk.pipeline, chunk.params)
        out = {}
        for it in wanted:
            others = {**{name: sha(key) for name, key in sorted((it.images or {}).items())}, **extra}
            out[it.index] = Recipe(maker, (owner, chunk.pipeline, options.image_params(chunk.params), it.prompt, it.negative_prompt,
                                           it.seed, sha(it.init_image) if it.init_image else None,
                                           chunk.watermark, others, adapters), w * h)
        return out

    def _adapter_digests(self, wanted: tuple[str, ...]) -> dict[str, str] | None:
        """SHA-256 of each adapter's file by id (fetched first; a failure means "run it")."""
        if not wanted:
            return None
        from workers.options import adapter_digest
        from workers.loading.sources import WorkerFetcher

        fetcher = WorkerFetcher(self.hasher.models_dir, self.hasher.store, hasher=self.hasher)
        return {name: adapter_digest(name, fetcher) for name in wanted}

    def serve(self, chunk: Chunk, todo: list[int]) -> list[int]:
        """Answer the cached items of `todo` (claimed, `running` here); returns the ones left to run."""
        job_id = chunk.job
        by_index = {it.index: it for it in chunk.items}
        self._recipes.clear()
        try:
            recipes = self.recipes(chunk, [by_index[i] for i in todo])
            keys = {i: recipe.key(low_memory=self.low_memory(chunk.model, recipe.pixels))
                    for i, recipe in recipes.items()}
            entries = dict(zip(keys, self.index.lookup(list(keys.values()))))
        except Exception as exc:  # noqa: BLE001 - a lookup that fails (Redis, S3, a bad file) only means "run it"
            log.warning("job %s: result cache lookup failed (%s: %s); running the items", job_id,
                        type(exc).__name__, exc)
            return todo
        self._recipes.update({(job_id, i): recipe for i, recipe in recipes.items()})
        left, served = [], 0
        for i in todo:
            entry = entries.get(i)
            if entry is None or not self._serve_one(job_id, i, keys[i], entry, by_index[i].gen):
                left.append(i)
            else:
                served += 1
        if served:
            log.info("job %s: %d of %d items answered from the result cache", job_id, served, len(todo))
        return left

    def _serve_one(self, job_id: str, index: int, key: str, entry: dict[str, Any], gen: int = 0) -> bool:
        """Copy a cached result to the item's keys and record it; False when it must run instead."""
        t0 = time.perf_counter()
        target = contract.result_key(job_id, index)
        extra: dict[str, Any] = {}
        try:
            if entry.get("video_key"):  # the MP4 first: a copied poster without its clip is no result
                extra.update(video_key=video_key(job_id, index), video_bytes=entry.get("video_bytes"))
                if entry["video_key"] != extra["video_key"]:
                    self.store.copy(entry["video_key"], extra["video_key"])
            if entry["key"] != target:
                self.store.copy(entry["key"], target)
        except Exception as exc:  # noqa: BLE001 - gone or unreadable: run the item, never fail it
            if isinstance(exc, ObjectMissing):
                log.info("result cache entry for job %s item %d points at %s, which is gone; running it",
                         job_id, index, entry["key"])
                self._forget(key)
            else:
                log.warning("job %s item %d: copying cached %s failed (%s); running it", job_id, index,
                            entry["key"], exc)
            return False
        if entry.get("thumb_key"):
            thumb = thumb_key(job_id, index)
            try:
                if entry["thumb_key"] != thumb:
                    self.store.copy(entry["thumb_key"], thumb)
                extra["thumb_key"] = thumb
            except Exception:  # noqa: BLE001 - a missing thumbnail never fails the item
                log.warning("job %s item %d: cached thumbnail %s not copied", job_id, index, entry["thumb_key"])
        took = round(time.perf_counter() - t0, 4)
        fields = {
            "worker": self.worker, "device": self.device, "dtype": self.dtype, "key": target,
            "bytes": entry.get("bytes"), "duration_s": took, "timings": {"copy": took},
            "watermark": entry.get("watermark"), "nsfw": entry.get("nsfw"),
            "cached": True, "cached_from": {"job": entry["job"], "index": entry["index"]}, **extra,
        }
        if retry_redis(lambda: self.jobs.finish_item(job_id, index, "succeeded", fields, worker=self.worker, gen=gen)):
            self.finalize(job_id)
        try:
            self.index.touch(key)
        except StateError:
            pass
        return True

    def _forget(self, key: str) -> None:
        try:
            self.index.forget(key)
        except StateError:
            log.warning("could not drop a stale result cache entry", exc_info=True)

    # -- registration ---------------------------------------------------------------------------
    def registrar(self, job_id: str, index: int) -> Callable[[dict[str, Any]], None] | None:
        """What the uploader calls with the stored result's fields once the item is recorded, or None
        when the item is not cached (opted out, weights unknown). Called once the item is made: its key
        holds the digest of the weights that made it (recorded at their load) and the memory mode that made
        it (the stored `low_memory`), whatever the lookup saw."""
        recipe = self._recipes.get((job_id, index))
        weights = self.digest(recipe.maker.model) if recipe is not None else None
        if weights is None:
            return None

        def register(stored: dict[str, Any]) -> None:
            key = recipe.key(weights, low_memory=bool(stored.get("low_memory")))
            entry = {"job": job_id, "index": index, "key": stored["key"], "bytes": stored.get("bytes"),
                     "watermark": stored.get("watermark"), "nsfw": stored.get("nsfw"), "at": time.time()}
            if stored.get("thumb_key"):
                entry["thumb_key"] = stored["thumb_key"]
            if stored.get("video_key"):  # a video item: its MP4 beside the poster PNG
                entry.update(video_key=stored["video_key"], video_bytes=stored.get("video_bytes"))
            self.index.register(key, entry)

        return register
