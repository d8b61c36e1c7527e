"""The overfit probe places a network's loss on Gatys' curve, and training on the pair lowers it."""

from __future__ import annotations

from pathlib import Path

from models.imaging import pil_to_tensor
from models.style_objective import StyleObjective
from models.training.overfit_probe import SERVED, judged_objective, network_for, probe, steps_to_beat
from tests.test_transformer import _tiny_data, photo_like


def test_steps_to_beat_is_the_first_update_count_below_the_loss() -> None:
    curve = [100.0, 60.0, 40.0, 30.0]
    assert steps_to_beat(curve, 50.0) == 2
    assert steps_to_beat(curve, 101.0) == 0  # the photo itself already beats the network
    assert steps_to_beat(curve, 10.0) is None  # not within the cap


def test_training_on_the_pair_lowers_the_loss_and_reports_every_point(tmp_path: Path) -> None:
    _, paintings = _tiny_data(tmp_path)
    photo = tmp_path / "judged.png"
    photo_like(64, 48, seed=5).save(photo)
    objective = StyleObjective(style_weight=30.0, tv_weight=10.0, style_size=64)
    model, style = network_for(None, "fast", "one", pil_to_tensor(photo_like(64, 48, seed=5)))
    report = probe([photo], paintings[0], objective, model, style, 30, 1e-2, 15, size=64, max_steps=4)
    points = report["points"]
    assert [p["iteration"] for p in points] == [0, 15, 30]
    assert points[-1]["median_total"] < 0.8 * points[0]["median_total"]
    assert len(report["gatys_curves"][0]) >= 2 and report["trained_on"] == "the judged photos"
    curve = report["gatys_curves"][0]
    for p in points:  # the steps are where the loss falls on Gatys' curve
        assert p["rows"][0]["gatys_equivalent_steps"] == steps_to_beat(curve, p["median_total"])


def test_training_on_photos_uses_crops_of_the_training_split(tmp_path: Path) -> None:
    photos, paintings = _tiny_data(tmp_path)
    train = sorted(photos.iterdir())[:8]
    objective = StyleObjective(style_weight=30.0, tv_weight=10.0, style_size=64)
    model, style = network_for(None, "fast", "one", pil_to_tensor(photo_like(48, 40)))
    report = probe(
        [train[-1]], paintings[1], objective, model, style, 2, 1e-3, 1, train, batch_size=2, crop=32, size=48,
        max_steps=2,
    )  # fmt: skip
    assert report["trained_on"] == "8 training photos, 32 px crops" and len(report["points"]) == 3


def test_the_judged_objective_is_the_served_one_unless_reweighted() -> None:
    served = judged_objective(SERVED)
    assert served.style_weight == 30.0 and served.content_layers == ("relu2_2",)
    heavier = judged_objective(SERVED, style_weight=300.0)
    assert heavier.style_weight == 300.0
    assert heavier.style_layer_weights == served.style_layer_weights and heavier.tv_weight == served.tv_weight


def test_the_judged_objective_can_move_its_content_term() -> None:
    served = judged_objective(SERVED)
    moved = judged_objective(SERVED, content_layer="relu4_2", content_weight=0.1)
    assert moved.content_layers == ("relu4_2",) and moved.content_weight == 0.1
    assert moved.style_weight == served.style_weight and moved.style_layers == served.style_layers
    assert moved.deepest == "relu4_2"  # the loss network is cut deeper to reach it
