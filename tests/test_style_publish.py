"""``python -m models.styles publish``: an evaluation only ships with the weights it evaluated."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models.style_objective import StyleObjective
from models.styles import load_network, main, sha256_file, styles_dir
from models.transformer import build, save_transformer
from tests.images import stripes

STYLES = ("starry_night", "great_wave")


def _network(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    meta = {"atelier.styles": json.dumps(list(STYLES)), "atelier.objective": StyleObjective().to_json()}
    save_transformer(path, build("fast", num_styles=len(STYLES)), meta)
    return path


def _report(path: Path, weights: Path) -> Path:
    styles = {n: {"median_gatys_equivalent_steps": 12.0, "median_job_style_ratio": 0.2} for n in STYLES}
    body = {"weights_sha256": sha256_file(weights), "statuses": dict.fromkeys(STYLES, "experimental")}
    path.write_text(json.dumps(body | {"styles": styles}))
    return path


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    weights, paintings = tmp_path / "weights", tmp_path / "paintings"
    paintings.mkdir()
    stripes(96, 96).save(paintings / "starry_night.jpg")
    return weights, paintings


def _publish(weights: Path, paintings: Path, *args: str) -> None:
    main(["--weights-dir", str(weights), "publish", "--paintings", str(paintings), *args])


def test_a_candidate_ships_with_its_own_evaluation(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    weights, paintings = dirs
    candidate = _network(tmp_path / "candidate.safetensors", seed=1)
    report = _report(tmp_path / "eval.json", candidate)
    _publish(weights, paintings, "--source", str(candidate), "--eval", str(report), "--include-experimental")
    served = load_network(weights)
    assert served.manifest.network.sha256 == sha256_file(candidate)
    assert {e.name: e.eval["gatys_equivalent_steps"] for e in served.manifest.styles} == dict.fromkeys(
        STYLES, 12.0
    )


def test_an_evaluation_of_other_weights_is_refused_and_nothing_changes(
    dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    weights, paintings = dirs
    served = _network(tmp_path / "served.safetensors", seed=1)
    _publish(weights, paintings, "--source", str(served))
    before = sha256_file(styles_dir(weights) / "multistyle.safetensors")

    candidate = _network(tmp_path / "candidate.safetensors", seed=2)
    stale = _report(tmp_path / "eval.json", served)  # evaluated the old network, not the candidate
    with pytest.raises(SystemExit, match="evaluated other weights"):
        _publish(weights, paintings, "--source", str(candidate), "--eval", str(stale))
    assert sha256_file(styles_dir(weights) / "multistyle.safetensors") == before
    assert load_network(weights).manifest.network.sha256 == before  # still loads: manifest and file agree


@pytest.mark.parametrize(
    ("field", "value", "says"), [("gatys_init", "noise", "noise"), ("split", "train", "training")]
)
def test_a_diagnostic_evaluation_is_not_publishable(
    dirs: tuple[Path, Path], tmp_path: Path, field: str, value: str, says: str
) -> None:
    """Gatys from noise, or photos the network trained on: diagnostics, never the quality bar."""
    weights, paintings = dirs
    candidate = _network(tmp_path / "candidate.safetensors", seed=1)
    report = _report(tmp_path / "eval.json", candidate)
    report.write_text(json.dumps(json.loads(report.read_text()) | {field: value}))
    with pytest.raises(SystemExit, match=says):
        _publish(weights, paintings, "--source", str(candidate), "--eval", str(report))
    assert not (styles_dir(weights) / "multistyle.safetensors").exists()


def test_a_network_path_outside_the_weights_dir_is_refused_and_nothing_changes(
    dirs: tuple[Path, Path], tmp_path: Path
) -> None:
    """A path as ``--network`` once rewrote the default manifest to point at a file elsewhere."""
    weights, paintings = dirs
    served = _network(tmp_path / "served.safetensors", seed=1)
    _publish(weights, paintings, "--source", str(served))
    manifest = (styles_dir(weights) / "manifest.json").read_text()

    elsewhere = _network(tmp_path / "elsewhere" / "multistyle.safetensors", seed=2)
    with pytest.raises(SystemExit, match="--weights-dir"):
        _publish(weights, paintings, "--network", str(elsewhere))
    assert (styles_dir(weights) / "manifest.json").read_text() == manifest
