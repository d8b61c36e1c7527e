"""The quick held-out monitor reproduces an evaluation on the network it evaluated, and sees a
changed network as changed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from models.style_objective import StyleObjective
from models.training.eval_style import evaluate
from models.training.heldout_compare import compare
from models.training.train_style import parse_args, train
from models.transformer import load_transformer, save_transformer
from models.vgg import load_vgg19
from tests.test_transformer import _tiny_args, _tiny_data


def test_the_evaluated_network_compares_equal_and_a_changed_one_does_not(tmp_path: Path) -> None:
    photos, painting_files = _tiny_data(tmp_path)
    cfg, _ = parse_args(_tiny_args(tmp_path, photos, painting_files))
    train(cfg)
    weights = Path(cfg.out)
    net, meta = load_transformer(weights)
    objective = StyleObjective.from_json(meta["atelier.objective"])
    paintings_dir = tmp_path / "paintings"
    paintings_dir.mkdir()
    paintings = {}
    for name, path in zip(json.loads(meta["atelier.styles"]), painting_files, strict=True):
        Image.open(path).convert("RGB").save(paintings_dir / f"{name}.jpg", quality=95)
        paintings[name] = Image.open(paintings_dir / f"{name}.jpg").convert("RGB")
    some = sorted(photos.iterdir())[:2]
    styles = evaluate(load_vgg19("relu5_1"), net.eval(), list(paintings), objective, paintings, some, 48, 5)
    against = {
        "objective": json.loads(objective.to_json()),
        "size": 48,
        "photos": [p.name for p in some],
        "styles": styles,
    }

    same = compare(weights, against, photos, paintings_dir)
    for name, style in same.items():
        assert style["median_ratio"] == pytest.approx(1.0, abs=1e-4)
        for row, evaluated in zip(style["rows"], styles[name]["rows"], strict=True):
            steps = evaluated["gatys_equivalent_steps"]
            assert row["gatys_equivalent_steps"] == (steps if steps is not None else "> 5")

    with torch.no_grad():
        net.head[1].weight.mul_(3.0)  # paints something else
    save_transformer(tmp_path / "changed.safetensors", net, meta)
    changed = compare(tmp_path / "changed.safetensors", against, photos, paintings_dir)
    assert all(abs(s["median_ratio"] - 1.0) > 0.01 for s in changed.values())

    other = {**against, "objective": {**against["objective"], "tv_weight": 123.0}}
    with pytest.raises(ValueError, match="another objective"):
        compare(weights, other, photos, paintings_dir)
