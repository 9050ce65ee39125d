"""ControlNets from the sources MODELS.md names (issue 39 defect 10): a local folder holding a single model's
`config.json` and weights, and such a folder pushed with `sdq models push` (`store:NAME`), run on a real worker
and make the built-in's image (they hold its weights); a hub id is refused at submit."""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Iterator

import pytest

from cli.client import Client
from cli.services import Stack
from storage.models import push
from tests.test_pipelines import close, pixels, result, run_job, sketch, upload

PUSHED = "pushed-controlnet"
"""The name the built-in ControlNet's folder is pushed under."""


@pytest.fixture(scope="module")
def folder(models_dir, tmp_path_factory) -> Path:
    """A copy of builtin:tiny-controlnet's files: `config.json` and the weights, no `model_index.json`."""
    from workers.builtins.registry import ensure_builtin

    out = tmp_path_factory.mktemp("controlnets") / "edges-controlnet"
    shutil.copytree(ensure_builtin(models_dir, "tiny-controlnet"), out, ignore=shutil.ignore_patterns(".*"))
    assert (out / "config.json").is_file() and not (out / "model_index.json").exists()
    return out


@pytest.fixture(scope="module")
def cn_stack(stack_factory, folder) -> Iterator[Stack]:
    st = stack_factory("controlnet-sources", env={"SDQ_MODELS": f"{folder},store:{PUSHED},some-org/some-controlnet"})
    st.worker("w-cn", "--device", "cpu", "--threads", "1", "--preload", "builtin:tiny-sd")
    yield st
    st.stop()


@pytest.fixture(scope="module")
def cn_client(cn_stack) -> Client:
    return Client(cn_stack.env["SDQ_SERVER"])


@pytest.fixture(scope="module")
def reference(cn_client, store) -> tuple[str, object]:
    """The control image's key and the image builtin:tiny-controlnet makes with it."""
    control = upload(cn_client, sketch((64, 64), seed=51))
    return control, pixels(result(store, run_job(cn_client, _job(control, "builtin:tiny-controlnet"))["items"][0]))


def _job(control: str, model: str) -> dict:
    # cache off: the copies have the built-in's digest, and a result-cache answer would load no ControlNet
    return {"prompts": ["a lighthouse"], "params": {"width": 64, "height": 64, "steps": 3, "seed": 5, "cache": False,
                                                    "controlnet": {"image": control, "model": model}}}


def test_a_controlnet_folder_without_model_index_runs(cn_client, store, folder, reference):
    control, want = reference
    doc = run_job(cn_client, _job(control, str(folder)))
    assert close(pixels(result(store, doc["items"][0])), want)


def test_a_pushed_controlnet_runs(cn_client, store, folder, reference):
    manifest = push(store, folder, PUSHED)
    assert manifest["kind"] == "folder"
    control, want = reference
    doc = run_job(cn_client, _job(control, f"store:{PUSHED}"))
    assert close(pixels(result(store, doc["items"][0])), want)


def test_a_hub_controlnet_is_refused_at_submit_naming_the_field(cn_client, reference):
    control, _ = reference
    answer = cn_client.session.post(f"{cn_client.server}/v1/jobs", json=_job(control, "some-org/some-controlnet"),
                                    timeout=30)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert (error["field"], error["code"]) == ("params.controlnet.model", "unsupported_source")
    assert "store:NAME" in error["message"]
