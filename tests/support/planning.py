"""Planning a job in-process, as the producer does at submit, for the families' unit tests."""
from __future__ import annotations

import pytest

from producer.planning.jobs import plan_job
from producer.schemas import parse_submit
from sdq.config import Settings
from sdq.exceptions import InvalidInput

NO_SETTINGS = Settings.from_env({})


def plan(body: dict, settings: Settings = NO_SETTINGS):
    """The plan the producer makes for a submitted `body` (owner alice)."""
    return plan_job(parse_submit(body), settings, owner="alice")


def refused(body: dict, settings: Settings = NO_SETTINGS) -> InvalidInput:
    """The error planning `body` raises (fails if it plans)."""
    with pytest.raises(InvalidInput) as err:
        plan(body, settings)
    return err.value
