"""The generated visual tasks' jitter and held-out-image split: new pixels, training
templates and pairs, answers still read off the scene, the same seed the same items."""
from __future__ import annotations

from sftlab.data.visual_tasks import HELDOUT_PAIRS, TEMPLATES, generate_visual_tasks


def test_heldout_images_are_new_pixels_with_training_templates_and_pairs():
    items = generate_visual_tasks(n_train=120, n_eval=24, seed=3, jitter=True, heldout_image=True)
    train = {item.image.tobytes() for item in items["train"]}
    assert len(items["heldout_image"]) == 24
    assert not any(item.image.tobytes() in train for item in items["heldout_image"])
    for item in items["heldout_image"]:
        assert item.question in TEMPLATES[item.task][:-1]
        assert (item.scene["colour"], item.scene["shape"]) not in HELDOUT_PAIRS
    again = generate_visual_tasks(n_train=120, n_eval=24, seed=3, jitter=True, heldout_image=True)
    assert [i.image.tobytes() for i in again["heldout_image"]] == [i.image.tobytes() for i in items["heldout_image"]]


def test_jitter_varies_images_and_keeps_shapes_in_their_quadrant():
    plain = generate_visual_tasks(n_train=200, n_eval=0, seed=0)["train"]
    jittered = generate_visual_tasks(n_train=200, n_eval=0, seed=0, jitter=True)["train"]
    assert len({i.image.tobytes() for i in jittered}) > 2 * len({i.image.tobytes() for i in plain})
    quadrants = {"top left": (0, 0), "top right": (16, 0), "bottom left": (0, 16), "bottom right": (16, 16)}
    for item in jittered:
        if item.task == "count":
            continue
        left, top = quadrants[item.scene["position"]]
        inside = item.image.crop((left, top, left + 16, top + 16))
        colours = [c for _, c in inside.getcolors(256 * 256) if c != (255, 255, 255)]
        assert colours, item.scene  # the one shape is drawn in its own quadrant
        outside_count = sum(n for n, c in item.image.getcolors(256 * 256) if c != (255, 255, 255))
        inside_count = sum(n for n, c in inside.getcolors(256 * 256) if c != (255, 255, 255))
        assert outside_count == inside_count  # and nowhere else


def test_without_the_options_the_splits_are_unchanged():
    items = generate_visual_tasks(n_train=8, n_eval=4, seed=1)
    assert sorted(items) == ["heldout_combination", "heldout_template", "train"]
