"""One suite every model source passes: each subclass of `SourceTests` provides a real model of its
kind (the tiny built-in; a folder copy of it; an LDM single file made from it; the same pushed to
the real SeaweedFS bucket as `store:NAME`; a Hugging Face repo in a local hub cache, resolved with
HF_HUB_OFFLINE=1), and the suite checks matching, opening, loading and the weights digest."""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sdq.exceptions import ModelError
from sdq.sources import (BuiltinSource, FileSource, FolderSource, HubSource, ModelSource, StoreSource,
                         builtin_path, source_for)
from workers.loading.device import Device
from workers.running.generation import generate
from workers.loading.pipelines import PipelineCache
from workers.loading.sources import WorkerFetcher
from workers.loading.sources import WeightsHasher

CPU = Device("cpu", "fp32", "cpu")
PARAMS = {"width": 64, "height": 64, "steps": 2, "guidance_scale": 7.5, "scheduler": "pndm"}
HUB_REPO = "sdq-test/tiny-sd-suite"
SNAPSHOT = "89abcdef0123456789abcdef0123456789abcdef"


def _image(cache: PipelineCache, model_id: str, seed: int = 11) -> np.ndarray:
    pipe, entry = cache.get(model_id, "txt2img")
    made = generate(cache, pipe, entry, "txt2img", PARAMS, ["a lighthouse"], [""], [seed], None, None)
    return np.asarray(made.images[0].convert("RGB")).astype(int)


@pytest.fixture(scope="module")
def reference(models_dir) -> np.ndarray:
    """The built-in's image for the suite's prompt and seed."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _image(PipelineCache(models_dir, CPU, 1), "builtin:tiny-sd")
    finally:
        torch.set_num_threads(old)


class SourceTests:
    """The contract of a model source. A subclass sets `source_cls` and provides the `model` fixture:
    `(model_id, models_dir, store)` of a real model of its kind, and `missing`: an id of its kind that
    does not exist."""

    source_cls: type[ModelSource]
    missing: str

    def test_its_ids_are_matched_by_it_and_picked_for_it(self, model):
        model_id, _, _ = model
        assert self.source_cls.matches(model_id)
        source = source_for(model_id)
        assert type(source) is self.source_cls and source.kind == self.source_cls.kind
        assert type(source_for(self.missing)) is self.source_cls

    def test_open_gives_a_local_path_the_worker_loads(self, model):
        model_id, models_dir, store = model
        path = source_for(model_id).open(WorkerFetcher(models_dir, store))
        assert path.exists() and (path.is_file() or (path / "model_index.json").is_file())

    def test_the_loaded_model_makes_the_builtins_image(self, model, reference):
        model_id, models_dir, store = model
        old = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            got = _image(PipelineCache(models_dir, CPU, 1, store=store), model_id)
        finally:
            torch.set_num_threads(old)
        assert np.abs(got - reference).max() <= 1  # the same weights (a single file: converted back)

    def test_digest_is_known_and_stable_across_processes(self, model):
        model_id, models_dir, store = model
        first = WeightsHasher(models_dir, store).digest(model_id)
        assert first is not None and re.fullmatch(r"[0-9a-f]{64}", first)
        assert WeightsHasher(models_dir, store).digest(model_id) == first  # a new hasher: from disk records

    def test_a_missing_model_is_a_model_error_and_has_no_digest(self, model):
        _, models_dir, store = model
        with pytest.raises(ModelError):
            source_for(self.missing).open(WorkerFetcher(models_dir, store))
        assert WeightsHasher(models_dir, store).digest(self.missing) is None


class TestBuiltinSource(SourceTests):
    source_cls = BuiltinSource
    missing = "builtin:never-made"

    @pytest.fixture(scope="class")
    def model(self, models_dir):
        return "builtin:tiny-sd", models_dir, None


class TestFolderSource(SourceTests):
    source_cls = FolderSource
    missing = "/nonexistent/sdq-suite/tiny-folder"

    @pytest.fixture(scope="class")
    def model(self, models_dir, tmp_path_factory):
        folder = shutil.copytree(builtin_path(models_dir, "tiny-sd"), tmp_path_factory.mktemp("folder") / "tiny")
        return str(folder), models_dir, None

    def test_a_folder_copy_has_the_builtins_digest(self, model, models_dir):
        """Same files, same digest: a cached result of the built-in serves the copy too."""
        hasher = WeightsHasher(models_dir)
        assert hasher.digest(model[0]) == hasher.digest("builtin:tiny-sd")


class TestFileSource(SourceTests):
    source_cls = FileSource
    missing = "/nonexistent/sdq-suite/tiny.safetensors"

    @pytest.fixture(scope="class")
    def model(self, models_dir, tmp_path_factory):
        from tests.support.ldm import write_single_file

        src, d = builtin_path(models_dir, "tiny-sd"), tmp_path_factory.mktemp("single")
        single = write_single_file(src, d / "tiny-ldm.safetensors")
        shutil.copytree(src, d / "tiny-ldm", ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
        return str(single), models_dir, None

    def test_the_digest_covers_the_config_folder(self, model, models_dir):
        model_id = model[0]
        before = WeightsHasher(models_dir).digest(model_id)
        config = Path(model_id).with_suffix("") / "scheduler" / "scheduler_config.json"
        original = config.read_text()
        try:
            config.write_text(original.replace("scaled_linear", "linear"))
            assert WeightsHasher(models_dir).digest(model_id) != before
        finally:
            config.write_text(original)


class TestStoreSource(SourceTests):
    source_cls = StoreSource
    missing = "store:never-pushed-suite"

    @pytest.fixture(scope="class")
    def model(self, models_dir, store, tmp_path_factory):
        from storage.models import push

        push(store, builtin_path(models_dir, "tiny-sd"), "suite-sd")
        return "store:suite-sd", tmp_path_factory.mktemp("empty-cache"), store

    def test_without_a_bucket_it_cannot_be_opened(self, model):
        _, models_dir, _ = model
        with pytest.raises(ModelError, match="no bucket"):
            source_for("store:suite-sd").open(WorkerFetcher(models_dir, None))


class TestHubSource(SourceTests):
    source_cls = HubSource
    missing = "sdq-test/never-downloaded-suite"

    @pytest.fixture(scope="class")
    def model(self, models_dir, tmp_path_factory):
        assert HubSource.matches(HUB_REPO)
        cache = tmp_path_factory.mktemp("hub-cache")
        repo = cache / "hub" / ("models--" + HUB_REPO.replace("/", "--"))
        shutil.copytree(builtin_path(models_dir, "tiny-sd"), repo / "snapshots" / SNAPSHOT)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(SNAPSHOT)
        return HUB_REPO, cache, None

    @pytest.fixture(autouse=True)
    def offline(self, monkeypatch):
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # resolved from the local cache only: never a download

    def test_the_digest_is_the_snapshots_commit(self, model):
        model_id, models_dir, _ = model
        ref = models_dir / "hub" / ("models--" + HUB_REPO.replace("/", "--")) / "refs" / "main"
        before = WeightsHasher(models_dir).digest(model_id)
        other = ref.parent.parent / "snapshots" / ("f" * 40)
        other.mkdir()
        try:
            ref.write_text("f" * 40)
            assert WeightsHasher(models_dir).digest(model_id) not in (before, None)
        finally:
            ref.write_text(SNAPSHOT)
            other.rmdir()
