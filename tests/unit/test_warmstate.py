"""The warm state's note: reused while the pipeline's outline is unchanged, taken again when it changes,
and a failed call's changes are put back from a reused note."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.unit


class Pipe:
    """A pipeline as `WarmState` sees one: named components, each also an attribute."""

    def __init__(self, **components) -> None:
        self.__dict__.update(components)

    @property
    def components(self) -> dict:
        return {k: v for k, v in vars(self).items()}


def test_the_note_is_reused_until_the_outline_changes_and_still_restores_a_deep_change():
    import torch

    from workers.running.warmstate import WarmState

    vae = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    pipe = Pipe(vae=vae, text=torch.nn.Linear(2, 2), tokenizer=object())
    first = WarmState.of(pipe)
    assert WarmState.of(pipe) is first  # nothing changed: not noted again

    vae[1].weight.data = vae[1].weight.data.double()  # what a failed call may leave: a deep tensor cast
    assert WarmState.of(pipe) is first  # the outline reads only the first tensor: the note is reused ...
    assert first.restore(pipe) == ["vae to torch.float32/cpu (1 tensors)"]  # ... and puts the tensor back
    assert vae[1].weight.dtype == torch.float32

    vae.double()  # a deliberate change of the whole component between calls: noted again
    again = WarmState.of(pipe)
    assert again is not first and again.restore(pipe) == []
    pipe.text = torch.nn.Linear(2, 2)  # a component swapped: noted again
    assert WarmState.of(pipe) is not again


def test_the_scheduler_set_afresh_for_each_call_neither_renotes_nor_is_put_back():
    import torch

    from workers.running.warmstate import WarmState

    pipe = Pipe(unet=torch.nn.Linear(2, 2), scheduler=object())
    first = WarmState.of(pipe)
    pipe.scheduler = other = object()  # what each call does before it runs
    assert WarmState.of(pipe) is first  # not a change of the warm pipeline: the note is reused
    assert first.restore(pipe) == [] and pipe.scheduler is other
    assert first.known("dtype", lambda: "fp32") == "fp32" and first.known("dtype", lambda: "fp16") == "fp32"
