"""Queue naming: where an item goes, which queues a worker consumes, chunk sizes."""
from __future__ import annotations

import pytest

from sdq import contract, defaults
from sdq.scheduling.scheduling import chunk_sizes


@pytest.mark.parametrize("pixels, name", [(1, "p256"), (256 * 256, "p256"), (256 * 256 + 1, "p512"),
                                          (1024 * 1024, "p1024"), (4096 * 4096, "p4096")])
def test_pixel_class_is_the_smallest_that_holds_the_image(pixels, name):
    assert contract.pixel_class(pixels) == name


def test_pixels_beyond_the_largest_class_name_the_count():
    with pytest.raises(ValueError, match=str(4096 * 4096 + 1)):
        contract.pixel_class(4096 * 4096 + 1)


def test_an_item_goes_to_the_queue_its_requirements_name():
    assert contract.queue_for("gpu", "fp16", 512 * 512) == "sdq.gpu.fp16.p512"
    assert contract.queue_for("any", None, 64 * 64) == "sdq.any.any.p256"


def test_a_cpu_worker_consumes_cpu_and_any_queues_up_to_its_pixel_limit():
    queues = contract.queues_for_worker("cpu", "fp32", 512 * 512)
    assert set(queues) == {f"sdq.{dev}.{dt}.{px}" for dev in ("cpu", "any") for dt in ("fp32", "any")
                           for px in ("p256", "p512")}
    assert queues[0].endswith("p512")  # largest first
    assert not any(".gpu." in q or "fp16" in q for q in queues)


@pytest.mark.parametrize("device, kind", [("cpu", "cpu"), ("cuda", "gpu"), ("cuda:1", "gpu"), ("mps", "gpu")])
def test_worker_kind(device, kind):
    assert contract.worker_kind(device) == kind
    assert any(f"sdq.{kind}." in q for q in contract.queues_for_worker(device, "fp32", 256 * 256))


@pytest.mark.parametrize("device, dtype, pixels", [("any", None, 64 * 64), ("cpu", "fp32", 512 * 512),
                                                   ("any", "fp32", 300 * 300), ("cpu", None, 256 * 256)])
def test_every_item_a_worker_can_make_lands_on_a_queue_it_consumes(device, dtype, pixels):
    assert contract.queue_for(device, dtype, pixels) in contract.queues_for_worker("cpu", "fp32", 512 * 512)


@pytest.mark.parametrize("device, dtype, pixels", [("gpu", None, 64 * 64), ("cpu", "fp16", 64 * 64),
                                                   ("cpu", "fp32", 768 * 768)])
def test_no_worker_consumes_a_queue_it_cannot_serve(device, dtype, pixels):
    assert contract.queue_for(device, dtype, pixels) not in contract.queues_for_worker("cpu", "fp32", 512 * 512)


def test_the_smallest_pixel_class_is_always_served():
    assert contract.queues_for_worker("cpu", "fp32", 1)[0].endswith("p256")


def test_api_priority_maps_to_redis_priority_clamped():
    assert [contract.celery_priority(p) for p in (9, 5, 0, 42, -3)] == [0, 4, 9, 0, 9]


@pytest.mark.parametrize("n_items, workers, batch", [(1, 1, 1), (7, 2, 1), (100, 3, 4), (1000, 1, 8),
                                                     (33, 0, 1), (5, 4, 8)])
def test_chunk_sizes_cover_every_item_once_in_bounded_chunks(n_items, workers, batch):
    sizes = chunk_sizes(n_items, [1.0] * workers, batch)
    assert sum(sizes) == n_items
    assert all(1 <= s <= max(defaults.CHUNK_MAX, batch) for s in sizes)


def test_chunks_shrink_towards_the_end_of_a_job():
    sizes = chunk_sizes(500, [1.0, 1.0])
    assert sizes == sorted(sizes, reverse=True)
    assert sizes[0] > sizes[-1] == 1
