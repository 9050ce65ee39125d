"""Facts defined once in the torch-free core and used by the producer and the worker."""
from __future__ import annotations

from sdq import contract, defaults, pipelines
from sdq.infotext import SCHEDULER_OF_SAMPLER


def test_every_scheduler_the_api_accepts_names_a_diffusers_class():
    import diffusers

    for name in contract.SCHEDULERS:
        assert hasattr(diffusers, pipelines.SCHEDULERS[name].diffusers_class), name


def test_every_sampler_name_maps_back_to_one_scheduler():
    assert sorted(SCHEDULER_OF_SAMPLER.values()) == sorted(contract.SCHEDULERS)


def test_every_item_parameter_has_a_named_default():
    from producer.planning.jobs import DEFAULTS
    from producer.schemas import ITEM_PARAM_KEYS, Overrides

    from sdq.pipelines import FAMILY_PARAMS

    # a model family's own parameters get its family's default at submit (producer.planning.family)
    assert set(DEFAULTS) | set(FAMILY_PARAMS) == set(ITEM_PARAM_KEYS) == set(Overrides.model_fields)
    assert DEFAULTS["steps"] == defaults.STEPS and defaults.SCHEDULER in contract.SCHEDULERS
    Overrides.model_validate(DEFAULTS)  # the defaults pass the schema's own checks


def test_a_workers_kind_is_the_contracts():
    from workers.loading.device import Device

    assert Device("cpu", "fp32", "x").kind == contract.worker_kind("cpu") == "cpu"
    assert Device("cuda:1", "fp16", "x").kind == contract.worker_kind("cuda:1") == "gpu"


def test_the_control_queue_is_the_celery_default_queue():
    from sdq.celery_app import celery_config

    assert celery_config("redis://127.0.0.1:1/0")["task_default_queue"] == contract.CONTROL_QUEUE


def test_every_pipeline_the_api_accepts_names_existing_diffusers_classes():
    import diffusers

    assert contract.PIPELINES == tuple(pipelines.SPECS)
    for spec in pipelines.SPECS.values():
        assert spec.classes, spec.name
        for family, name in spec.classes.items():
            assert hasattr(diffusers, name), (spec.name, family)
            assert pipelines.family_of_class(name) == family


def test_redis_replies_are_decoded_in_one_place():
    from sdq.state.redisconn import text

    assert (text(b"caf\xc3\xa9"), text("x"), text(None)) == ("café", "x", None)
