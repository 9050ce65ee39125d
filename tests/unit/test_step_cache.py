"""`params.step_cache` at submit: refused naming the field on a family whose denoiser has no cache hooks (SD's
UNet, SD3, Z-Image), each family's methods and default (Flux.2 dev's, known from a local folder)
(a method the family does not take is named), video pipelines taking it, bad methods and settings named, the family's defaults filled in, written to infotext and read back
(`sdq inspect`'s path), and the CLI flag."""
from __future__ import annotations

import argparse

import pytest

from producer.planning.jobs import plan_job
from producer.schemas import parse_submit
from sdq import options, pipelines
from sdq.config import Settings
from sdq.exceptions import InvalidInput
from sdq.infotext import format_infotext, parse_infotext, submit_body_from_infotext
from sdq.options import step_cache

SETTINGS = Settings.from_env({})
FLUX = "builtin:tiny-flux"


def _plan(model: str, value, **params):
    body = {"model": model, "prompts": ["a"], "params": {"width": 64, "height": 64, "steps": 4, **params,
                                                         "step_cache": value}}
    return plan_job(parse_submit(body), SETTINGS, "alice")


@pytest.mark.parametrize("model", ["builtin:tiny-sd", "builtin:tiny-sdxl", "builtin:tiny-sd3", "builtin:tiny-z-image",
                                   "builtin:tiny-z-image-turbo"])
def test_a_family_without_cache_hooks_is_refused_naming_the_field(model):
    with pytest.raises(InvalidInput) as err:
        _plan(model, {"method": "FirstBlockCache"})
    assert (err.value.field, err.value.status, err.value.code) == ("params.step_cache", 422, "unsupported_step_cache")
    assert "no step caching" in err.value.message
    _plan(model, None)  # the same job without it runs


@pytest.mark.parametrize("value, field, words", [
    ({"method": "TeaCache"}, "params.step_cache.method", "FirstBlockCache"),
    ({"method": "FirstBlockCache", "cache_interval": 3}, "params.step_cache.cache_interval", "threshold"),
    ({"method": "MagCache", "threshold": 2.0}, "params.step_cache.threshold", ""),
    ({"method": "TaylorSeerCache", "disable_cache_before_step": 5, "disable_cache_after_step": 2},
     "params.step_cache.disable_cache_after_step", "after"),
    ({"method": "FirstBlockCache", "speed": 3}, "params.step_cache.speed", ""),
])
def test_bad_settings_are_named(value, field, words):
    with pytest.raises(InvalidInput) as err:
        _plan(FLUX, value)
    assert (err.value.field, err.value.status) == (field, 422), err.value.message
    assert words in err.value.message


def test_the_familys_defaults_are_filled_in_and_true_asks_for_its_method():
    item = _plan(FLUX, True).items[0]
    assert item.params["step_cache"] == {"method": "FirstBlockCache", "threshold": 0.05}
    item = _plan(FLUX, {"method": "TaylorSeerCache", "cache_interval": 2}).items[0]
    assert item.params["step_cache"] == {"method": "TaylorSeerCache", "cache_interval": 2,
                                         "disable_cache_before_step": 3, "disable_cache_after_step": None,
                                         "max_order": 1}
    assert "step_cache" not in _plan(FLUX, False).items[0].params


def test_it_is_in_the_result_cache_key():
    """The option changes the image: its value stays among the key's parameters."""
    params = _plan(FLUX, {"method": "MagCache"}).items[0].params
    assert options.image_params(params)["step_cache"]["method"] == "MagCache"


@pytest.mark.parametrize("value", [
    {"method": "FirstBlockCache", "threshold": 0.12},
    {"method": "PyramidAttentionBroadcast", "spatial_attention_block_skip_range": 3,
     "cross_attention_block_skip_range": None},
    {"method": "FasterCache", "spatial_attention_block_skip_range": 2, "unconditional_batch_skip_range": 5,
     "alpha_low_frequency": 1.1, "alpha_high_frequency": 1.2},
])
def test_infotext_writes_it_and_reads_it_back(value):
    fields = options.infotext({"step_cache": value})
    assert fields["Step cache"].startswith(value["method"])
    text = format_infotext("a cat", "", {"Steps": 4, **fields, "Model": FLUX})
    info = parse_infotext(text)
    body = submit_body_from_infotext(info)
    want = {k: v for k, v in value.items() if v is not None}
    assert body["params"]["step_cache"] == want
    # Submitted again, it plans the same value (what `sdq inspect` reproduces).
    again = {k: v for k, v in _plan(FLUX, body["params"]["step_cache"]).items[0].params["step_cache"].items()
             if v is not None}
    assert again == want


def test_none_keeps_it_off_and_writes_nothing():
    item = _plan(FLUX, {"method": "none"}).items[0]
    assert item.params["step_cache"] == {"method": "none"}
    assert options.infotext(item.params) == {}


def test_the_cli_flag():
    parser = argparse.ArgumentParser()
    options.OPTIONS["step_cache"].add_arguments(parser)
    args = parser.parse_args(["--step-cache", "TaylorSeerCache:cache_interval=2,max_order=2"])
    assert options.OPTIONS["step_cache"].from_args(args, lambda f, p: "") == {
        "method": "TaylorSeerCache", "cache_interval": 2, "max_order": 2}
    assert step_cache.from_flag("default") == {}
    assert step_cache.from_flag("FirstBlockCache:threshold=0.1") == {"method": "FirstBlockCache", "threshold": 0.1}


def test_an_operators_bad_default_stops_the_worker_naming_the_field():
    from types import SimpleNamespace

    from workers.options.step_cache import StepCacheHook

    hook = StepCacheHook()
    with pytest.raises(InvalidInput) as err:
        hook.setup(SimpleNamespace(option_defaults={"step_cache": {"method": "TeaCache"}}))
    assert err.value.field == "params.step_cache.method"
    hook.setup(SimpleNamespace(option_defaults={"step_cache": True}))
    assert hook.default("flux") == {"method": "FirstBlockCache", "threshold": 0.05}
    assert hook.default("sd") is None and hook.default(None) is None


FAMILY_CASES = {  # model, pipeline -> the family's methods and its default (`true`)
    ("builtin:tiny-flux", "txt2img"): (tuple(step_cache.METHODS), "FirstBlockCache"),
    ("builtin:tiny-flux2", "txt2img"): (("TaylorSeerCache",), "TaylorSeerCache"),
    ("builtin:tiny-flux2-distilled", "edit"): (("TaylorSeerCache",), "TaylorSeerCache"),
    ("builtin:tiny-qwen-image", "txt2img"): (("FirstBlockCache", "TaylorSeerCache"), "FirstBlockCache"),
    ("builtin:tiny-wan", "txt2video"): (("FirstBlockCache", "TaylorSeerCache"), "FirstBlockCache"),
    ("builtin:tiny-wan-i2v", "img2video"): (("FirstBlockCache", "TaylorSeerCache"), "FirstBlockCache"),
    ("builtin:tiny-ltx", "txt2video"): (("FirstBlockCache", "TaylorSeerCache", "PyramidAttentionBroadcast"),
                                        "FirstBlockCache"),
}


def _plan_on(model: str, pipeline: str, value):
    params = {"width": 64, "height": 64, "steps": 4, "step_cache": value}
    if pipeline in ("img2video", "edit"):
        params["init_image"] = "uploads/alice/first.png"  # not read at planning without an upload store
    body = {"model": model, "pipeline": pipeline, "prompts": ["a"], "params": params}
    return plan_job(parse_submit(body), SETTINGS, "alice")


@pytest.mark.parametrize("model, pipeline", list(FAMILY_CASES))
def test_each_family_takes_its_methods_and_true_asks_for_its_default(model, pipeline):
    methods, default = FAMILY_CASES[(model, pipeline)]
    assert _plan_on(model, pipeline, True).items[0].params["step_cache"]["method"] == default
    for method in methods:
        got = _plan_on(model, pipeline, {"method": method}).items[0].params["step_cache"]
        assert got["method"] == method and set(got) == {"method", *step_cache.settings_of(method)}
    for method in set(step_cache.METHODS) - set(methods):
        with pytest.raises(InvalidInput) as err:
            _plan_on(model, pipeline, {"method": method})
        assert (err.value.field, err.value.status, err.value.code) == ("params.step_cache.method", 422,
                                                                       "bad_step_cache")
        assert method in err.value.message and ", ".join(methods) in err.value.message


def test_the_table_lists_only_families_whose_transformer_takes_cache_hooks():
    """Z-Image's transformer has no `CacheMixin`: not listed, so refused naming the field."""
    from sdq import families

    assert set(step_cache.FAMILIES) == {families.FLUX, families.FLUX2, families.FLUX2_KLEIN, families.QWEN_IMAGE,
                                        families.WAN, families.LTX}
    for fam in step_cache.FAMILIES.values():
        assert fam.default in fam.methods and set(fam.methods) <= set(step_cache.METHODS)
    spec = options.OPTIONS["step_cache"]
    assert spec.offered("txt2video", families.WAN) and not spec.offered("txt2img", families.Z_IMAGE)


def test_flux2_dev_takes_taylorseer_pab_and_fastercache():
    """Flux.2 dev (no tiny built-in: a local folder's family, as the producer reads it)."""
    from sdq import families

    spec = options.OPTIONS["step_cache"]
    ctx = options.Submit(pipelines.spec("txt2img"), "/models/flux2-dev", families.FLUX2, ())
    assert spec.check(True, ctx)["method"] == "TaylorSeerCache"
    assert spec.check({"method": "PyramidAttentionBroadcast"}, ctx)["spatial_attention_block_skip_range"] == 2
    assert spec.check({"method": "FasterCache"}, ctx)["method"] == "FasterCache"
    for method in ("FirstBlockCache", "MagCache"):
        with pytest.raises(InvalidInput) as err:
            spec.check({"method": method}, ctx)
        assert (err.value.field, err.value.status) == ("params.step_cache.method", 422)


def test_an_operators_default_follows_the_family():
    from types import SimpleNamespace

    from workers.options.step_cache import StepCacheHook

    hook = StepCacheHook()
    hook.setup(SimpleNamespace(option_defaults={"step_cache": True}))
    assert hook.default("flux2-klein")["method"] == "TaylorSeerCache"
    assert hook.default("wan")["method"] == "FirstBlockCache" and hook.default("z-image") is None
    hook.setup(SimpleNamespace(option_defaults={"step_cache": {"method": "MagCache"}}))
    assert hook.default("flux")["method"] == "MagCache"
    assert hook.default("wan") is None and hook.default("flux2-klein") is None  # they do not take it: none


@pytest.mark.parametrize("method", ["FasterCache", "PyramidAttentionBroadcast"])
def test_a_per_call_method_is_refused_with_true_cfg_on_flux(method):
    """FasterCache and PAB count every transformer call: with true CFG the unconditional call would reuse the
    conditional one's attention, so a true-CFG Flux job refuses them (a method that keeps the branches apart runs)."""
    with pytest.raises(InvalidInput) as err:
        _plan(FLUX, {"method": method}, negative_prompt="blur", true_cfg_scale=4.0)
    assert err.value.field == "params.step_cache.method" and "true_cfg_scale=4" in err.value.message, err.value
    assert _plan(FLUX, {"method": "TaylorSeerCache"}, negative_prompt="blur", true_cfg_scale=4.0).items
    assert _plan(FLUX, {"method": method}).items  # without true CFG: one call per step
