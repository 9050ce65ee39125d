"""A reused scheduler (reset to its as-built state before each call) runs a call exactly as a deep copy of
its template does, after a call of another job's settings, for every scheduler sdq offers."""
from __future__ import annotations

import copy
import inspect

import pytest

pytestmark = pytest.mark.unit

SD_CONFIG = {"beta_end": 0.012, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "num_train_timesteps": 1000,
             "prediction_type": "epsilon", "set_alpha_to_one": False, "skip_prk_steps": True, "steps_offset": 1,
             "timestep_spacing": "leading", "trained_betas": None}
"""The saved scheduler config of an SD 1.x model (the built-in tiny-sd's)."""


def _run(scheduler, steps: int, seed: int) -> list:
    """One denoising loop on random model outputs: the timesteps, the sigmas and every step's sample."""
    import torch

    scheduler.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(1, 4, 8, 8, generator=g) * getattr(scheduler, "init_noise_sigma", 1.0)
    takes_generator = "generator" in inspect.signature(scheduler.step).parameters
    out = [scheduler.timesteps.clone(), getattr(scheduler, "sigmas", None)]
    for t in scheduler.timesteps:
        model_input = scheduler.scale_model_input(sample, t) if hasattr(scheduler, "scale_model_input") else sample
        noise = torch.randn(model_input.shape, generator=g)
        extra = {"generator": torch.Generator().manual_seed(seed + 1)} if takes_generator else {}
        sample = scheduler.step(noise, t, sample, **extra).prev_sample
        out.append(sample)
    return out


def _same(a: list, b: list) -> bool:
    import torch

    return len(a) == len(b) and all(
        (x is None and y is None) or (x is not None and y is not None and torch.equal(x, y)) for x, y in zip(a, b))


@pytest.mark.parametrize("name", ["pndm", "plms", "ddim", "euler", "euler_a", "dpmpp_2m", "lms", "ddpm", "heun",
                                  "unipc", "flow_euler"])
def test_a_reset_scheduler_runs_a_call_as_a_fresh_copy_does(name):
    from sdq import pipelines
    from workers.loading.pipelines import make_scheduler
    from workers.loading.schedulers import Reusable

    assert name in pipelines.SCHEDULERS
    template = make_scheduler(name, SD_CONFIG)
    reused = Reusable(make_scheduler(name, SD_CONFIG))
    first = reused.fresh()
    _run(first, 7, seed=1)  # another job's call: other steps, other state left behind
    first.leftover = "a call's attribute"

    again = reused.fresh()
    assert again is first and not hasattr(again, "leftover")
    assert _same(_run(again, 4, seed=2), _run(copy.deepcopy(template), 4, seed=2))
    # and once more: the template the resets start from was not changed by the calls
    assert _same(_run(reused.fresh(), 5, seed=3), _run(copy.deepcopy(template), 5, seed=3))
