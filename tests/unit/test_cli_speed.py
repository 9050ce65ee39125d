"""`sdq workers` shows measured speeds in units people read."""
from __future__ import annotations

from cli.jobs import _speed


def test_rates_read_as_steps_per_second_and_time_per_image():
    rates = {"builtin:tiny-sd|txt2img|p256": {"rate": 0.8, "n": 3, "width": 256, "height": 256},
             "m|txt2img|p512": {"rate": 104.8576, "n": 9, "width": 512, "height": 512}}
    assert _speed(rates) == ("tiny-sd/txt2img/256x256: 12.2 steps/s, 1.64 s/image; "
                             "m/txt2img/512x512: 400 steps/s, 20 images/s")


def test_a_record_without_a_size_reads_at_its_class_and_nothing_measured_says_so():
    assert _speed({"m|img2img|p512": {"rate": 2.62144, "n": 1}}) == "m/img2img/512x512: 10 steps/s, 2 s/image"
    assert _speed({}) == "not measured yet"
