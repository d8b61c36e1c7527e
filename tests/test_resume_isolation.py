"""``--resume`` continues the run of the given checkpoint and no other: a run dir of another run that
shares the ``--out`` stem (under the default ``runs/train_style`` or an explicit ``--runs-dir``) is
neither loaded nor overwritten. It once was, and a test rewrote a real training run's state."""

from __future__ import annotations

from pathlib import Path

import pytest

from models.styles import sha256_file
from models.training.train_style import checkpoint_meta, newest_checkpoint, parse_args, train
from tests.test_transformer import _tiny_args, _tiny_data


def _without_runs_dir(args: list[str]) -> list[str]:
    at = args.index("--runs-dir")
    return args[:at] + args[at + 2 :]


def test_resume_uses_its_own_run_dir_not_another_run_under_the_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # the default runs_dir, runs/train_style, is now under tmp_path
    photos, paintings = _tiny_data(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    # Run A: finished, its fp32 state in the default run dir, runs/train_style/net/.
    a_cfg, _ = parse_args(_without_runs_dir(_tiny_args(tmp_path / "a", photos, paintings)))
    assert train(a_cfg)["finished"] is True
    a_state = Path("runs/train_style/net/state.safetensors")
    a_sha = sha256_file(a_state)
    # Run B: same --out stem, its own run dir, another recipe (seed), stopped at iteration 3.
    b_args = _tiny_args(tmp_path / "b", photos, paintings, "--seed", "7")
    b_cfg, _ = parse_args([*b_args, "--stop-after", "3"])
    assert train(b_cfg)["iterations"] == 3

    b_ckpt = tmp_path / "b" / "ckpt.safetensors"
    resume = ["--resume", "--checkpoint", str(b_ckpt), "--out", str(tmp_path / "b" / "net.safetensors")]
    resumed, _ = parse_args(resume)  # no --runs-dir: the one B recorded, not the default
    assert resumed.seed == 7 and resumed.runs_dir == b_cfg.runs_dir
    start = newest_checkpoint(resumed)
    assert start is not None and checkpoint_meta(start)["iteration"] == "3"
    summary = train(resumed, start)
    assert summary["iterations"] == 6 and summary["finished"] is True
    assert sha256_file(a_state) == a_sha  # A's state untouched

    # Pointed at A's run dir explicitly, B's resume refuses rather than load or overwrite A's state.
    pointed = ["--resume", "--checkpoint", str(b_ckpt), "--runs-dir", "runs/train_style"]
    with pytest.raises(SystemExit, match="another run"):
        parse_args(pointed)
    assert sha256_file(a_state) == a_sha
