"""Models through the bucket: `sdq models push` uploads a model, a worker with an empty cache pulls
it (verified, resumable) and loads it like a local model."""
from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cli.client import Client
from sdq.exceptions import ModelError
from sdq.models import model_kind
from sdq.sources import builtin_path
from storage.models import part_path, pull, push
from tests.conftest import FAST, TEST_BUCKET, wait_job


def _pixels(store, key: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(store.get(key))).convert("RGB")).astype(int)


def test_push_then_pull_verifies_and_resumes(store, models_dir, tmp_path, caplog):
    source = builtin_path(models_dir, "tiny-sd")
    manifest = push(store, source, "resumable-sd")
    assert manifest["kind"] == "folder" and any(f["path"] == "model_index.json" for f in manifest["files"])
    folder = pull(store, "resumable-sd", tmp_path)
    biggest = max(manifest["files"], key=lambda f: f["size"])
    assert (folder / biggest["path"]).read_bytes() == (source / biggest["path"]).read_bytes()
    # an interrupted download: half the file in .part, no local manifest -> resumes from the middle
    target = folder / biggest["path"]
    data = target.read_bytes()
    target.unlink()
    (folder / ".sdq-manifest.json").unlink()
    part_path(target, biggest["sha256"]).write_bytes(data[: len(data) // 2])
    with caplog.at_level(logging.INFO, logger="storage.models"):
        pull(store, "resumable-sd", tmp_path)
    assert "resuming" in caplog.text and target.read_bytes() == data
    # a local file that does not match the manifest is fetched again
    target.write_bytes(b"corrupt")
    (folder / ".sdq-manifest.json").unlink()
    pull(store, "resumable-sd", tmp_path)
    assert target.read_bytes() == data
    with pytest.raises(ModelError, match="no pushed model"):
        pull(store, "never-pushed", tmp_path)
    with pytest.raises(ModelError, match="model name"):
        push(store, source, "../escape")


def test_a_re_push_under_the_same_name_installs_exactly_the_new_files(store, models_dir, tmp_path):
    """Issue 39 defect 6: a re-push left the old files beside the new (an old fp16 variant would be
    loaded while the digest named the new version) and resumed an old `.part` against the new bytes."""
    source = tmp_path / "v1"
    shutil.copytree(builtin_path(models_dir, "tiny-sd"), source)
    variant = source / "unet" / "diffusion_pytorch_model.fp16.safetensors"
    variant.write_bytes(b"an old fp16 variant")
    push(store, source, "repushed-sd")
    cache = tmp_path / "cache"
    folder = pull(store, "repushed-sd", cache)
    assert (folder / "unet" / variant.name).is_file()
    changed = source / "scheduler" / "scheduler_config.json"
    old = changed.read_bytes()
    variant.unlink()
    changed.write_bytes(b" " + old)  # the same JSON, other bytes from the first one on
    manifest = push(store, source, "repushed-sd")
    # an interrupted pull of the old version left half of the old bytes (old code named it `<file>.part`)
    target = folder / "scheduler" / "scheduler_config.json"
    target.unlink()
    target.with_name(target.name + ".part").write_bytes(old[: len(old) // 2])
    part_path(target, "0" * 64).write_bytes(old[: len(old) // 2])  # a part of some other version
    folder = pull(store, "repushed-sd", cache)
    listed = sorted(f["path"] for f in manifest["files"])
    assert sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()
                  and p.name != ".sdq-manifest.json") == listed
    assert target.read_bytes() == b" " + old


@pytest.mark.slow
def test_worker_with_an_empty_cache_runs_a_pushed_model(stack_factory, store, models_dir, client, tmp_path):
    assert model_kind("store:pushed-sd") == "store"
    env = {**os.environ, "SDQ_S3_ENDPOINT_URL": store.client.meta.endpoint_url, "SDQ_S3_BUCKET": TEST_BUCKET}
    out = subprocess.run([sys.executable, "-m", "cli", "models", "push", str(builtin_path(models_dir, "tiny-sd")),
                          "--as", "pushed-sd"], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    empty = tmp_path / "empty-cache"
    st = stack_factory("model-store", env={"SDQ_MODELS": "store:pushed-sd", "SDQ_MODELS_DIR": str(empty)})
    st.worker("w-store", "--device", "cpu", "--threads", "1", "--models", "store:pushed-sd")
    pushed = Client(st.env["SDQ_SERVER"])
    body = {"prompts": ["from the bucket"], "params": {**FAST, "seed": 21}}
    doc = wait_job(pushed, pushed.submit({**body, "model": "store:pushed-sd"})["id"])
    assert doc["state"] == "succeeded", doc["items"][0]["error"]
    assert (empty / "store" / "pushed-sd" / ".sdq-manifest.json").is_file()
    assert not (empty / "builtin").exists()  # nothing generated locally: the weights came from the bucket
    # the same weights as the built-in model: the same image for the same seed
    reference = wait_job(client, client.submit({**body, "model": "builtin:tiny-sd"})["id"])
    assert reference["state"] == "succeeded"
    assert np.abs(_pixels(store, doc["items"][0]["key"]) - _pixels(store, reference["items"][0]["key"])).max() == 0


@pytest.mark.parametrize("entry", ["../../../outside.safetensors", "/etc/hostname", "not-listed.safetensors", None,
                                   "files/../../../outside.safetensors"])
def test_pushed_manifest_entry_is_confined_to_the_model_folder(store, tmp_path, entry):
    """Whoever can write the bucket cannot make a worker load a file outside the pulled model's folder."""
    import json

    import numpy as np
    from safetensors.numpy import save_file

    source = tmp_path / "weights.safetensors"
    save_file({"weight": np.zeros(4, dtype=np.float32)}, str(source))  # a readable file: push reads its header
    (tmp_path / "outside.safetensors").write_bytes(b"a file the worker must never load")
    manifest = push(store, source, "entry-escape")
    assert pull(store, "entry-escape", tmp_path / "cache").name == "weights.safetensors"
    store.put("models/entry-escape/manifest.json", json.dumps({**manifest, "entry": entry}).encode(),
              content_type="application/json")
    with pytest.raises(ModelError, match="entry"):
        pull(store, "entry-escape", tmp_path / "cache")
    with pytest.raises(ModelError, match="entry"):
        pull(store, "entry-escape", tmp_path / "fresh-cache")
