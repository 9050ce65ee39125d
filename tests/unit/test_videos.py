"""Video rules per family: the frame-count rule of each VAE, sizes and fps, refused with the field and value."""
from __future__ import annotations

import pytest

from sdq import videos
from sdq.exceptions import InvalidInput


@pytest.mark.parametrize("family, good, bad", [
    ("wan", [1, 5, 81, 161], [0, 2, 80, 82, 165, -3]),
    ("ltx", [1, 9, 121, 161, 257], [0, 5, 83, 160, 265]),
])
def test_frame_counts_follow_the_vae(family, good, bad):
    rules = videos.rules(family)
    assert [rules.check_frames(n) for n in good] == good
    for n in bad:
        with pytest.raises(InvalidInput, match=f"{rules.frame_step}k\\+1 .* got {n}") as err:
            rules.check_frames(n)
        assert err.value.field == "frames" and err.value.status == 422


@pytest.mark.parametrize("value", [5.0, "5", True, None])
def test_frames_must_be_a_whole_number(value):
    with pytest.raises(InvalidInput, match=f"got {value!r}"):
        videos.rules("wan").check_frames(value)


def test_latent_frames_are_what_the_vae_keeps():
    assert videos.rules("wan").latent_frames(81) == 21
    assert videos.rules("ltx").latent_frames(161) == 21
    assert videos.rules("ltx").latent_frames(1) == 1


@pytest.mark.parametrize("family, width, height, field, value", [
    ("wan", 840, 480, "width", 840), ("wan", 832, 0, "height", 0), ("wan", 1296, 480, "width", 1296),
    ("ltx", 704, 496, "height", 496), ("ltx", "704", 512, "width", "704"),
])
def test_bad_sizes_name_the_side_and_value(family, width, height, field, value):
    with pytest.raises(InvalidInput, match=f"{field} must be a multiple .* got {value!r}") as err:
        videos.rules(family).check_size(width, height)
    assert err.value.field == field


def test_defaults_satisfy_their_own_rules():
    for rules in videos.FAMILIES.values():
        assert rules.check_frames(rules.default_frames) == rules.default_frames
        assert rules.check_size(*rules.default_size) == rules.default_size
        assert videos.check_fps(rules.default_fps) == rules.default_fps
        assert rules.max_frames <= videos.MAX_FRAMES


@pytest.mark.parametrize("fps", [0, 0.5, 121, float("nan"), float("inf"), "16", True, None])
def test_bad_fps_is_refused_naming_the_value(fps):
    with pytest.raises(InvalidInput, match=f"fps must be .* got {fps!r}") as err:
        videos.check_fps(fps)
    assert err.value.field == "fps"


def test_unknown_family_names_the_known_ones():
    with pytest.raises(KeyError, match="'hunyuan'; known: wan, ltx"):
        videos.rules("hunyuan")


def test_video_key_sits_beside_the_items_image():
    assert videos.video_key("j1", 3) == "jobs/j1/00003.mp4"
