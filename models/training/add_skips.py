"""Give a trained run's network encoder-to-decoder skips, keep its function, and go on training.

    python -m models.training.add_skips --source models/weights/styles/multistyle.train-state.safetensors \\
        --out runs/train_style/skips.safetensors --checkpoint runs/skips.train-state.safetensors \\
        --iterations 52000
    nice -n 19 python -m models.training.train_style --resume \\
        --checkpoint runs/skips.train-state.safetensors --out runs/train_style/skips.safetensors

Why: the trained network loses far more of the photo than Gatys does (its content term alone is
about twice Gatys' whole loss after 50 updates), and everything it keeps of the photo's detail has
to pass the 1/4-resolution residual stream. Skips (``TransformerConfig.skips``) hand the encoder's
half- and full-resolution features to the decoder through 1×1 convs, for a few percent of the
forward's cost. They start at zero, so the converted network computes exactly what the old one did
and training continues from there instead of from scratch.

The old parameters keep their Adam moments (the function and so the loss surface around it are
unchanged); the new ones start with none. A finished run is extended: ``--iterations`` is the new
total, with the learning rate ramping from zero to ``--lr`` over ``--rewarm`` iterations, constant,
then decaying linearly to the recipe's final rate over the last ``1 - --decay-from`` of the run.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import torch

from models.training.train_style import TrainConfig, load_run, save_converted
from models.transformer import ARCHS, TransformerNet, arch_name


def with_skips(model: TransformerNet) -> TransformerNet:
    """The same network with (zero) skips: equal outputs for every input and style."""
    if model.config.skips:
        raise ValueError("the network already has skips")
    grown = TransformerNet(replace(model.config, skips=True))
    missing, unexpected = grown.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any(not key.startswith("bridges.") for key in missing):
        raise ValueError(f"unexpected state: missing {missing}, unexpected {unexpected}")
    return grown


def convert_checkpoint(
    source: Path,
    out: str,
    checkpoint: Path,
    iterations: int,
    lr: float,
    rewarm: int,
    decay_from: float,
) -> TrainConfig:
    """Read a train-state, add skips, write a train-state that ``--resume`` continues."""
    cfg, model, optimizer, iteration = load_run(source)
    grown = with_skips(model)
    new_arch = arch_name(grown.config)
    if new_arch not in ARCHS:
        raise ValueError(f"{source}: the network with skips matches no registered arch")
    style_iteration = iteration - cfg.warmup_iterations
    if iterations <= style_iteration:
        raise ValueError(f"--iterations must exceed the {style_iteration} style iterations done")
    new_cfg = replace(
        cfg,
        arch=new_arch,
        out=out,
        checkpoint=str(checkpoint),
        iterations=iterations,
        lr=lr,
        decay_from=decay_from,
        rewarm_at=style_iteration,
        rewarm_iterations=rewarm,
    )
    new_optimizer = torch.optim.Adam(grown.parameters(), lr=lr)
    old_params = dict(model.named_parameters())
    for name, param in grown.named_parameters():
        if name in old_params and old_params[name] in optimizer.state:
            new_optimizer.state[param] = optimizer.state[old_params[name]]
    info = {"converted_from": str(source), "at_iteration": iteration, "added": "skips"}
    save_converted(checkpoint, grown.train(), new_optimizer, iteration, new_cfg, info)
    return new_cfg


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, required=True, help="train-state to convert")
    p.add_argument("--out", required=True, help="the new run's network path (its run directory follows)")
    p.add_argument("--checkpoint", type=Path, required=True, help="where the new train-state goes")
    p.add_argument("--iterations", type=int, required=True, help="the extended run's style iterations")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--rewarm", type=int, default=200, help="iterations over which the lr ramps up")
    p.add_argument("--decay-from", type=float, default=0.9, help="fraction of the run after which lr decays")
    a = p.parse_args(argv)
    cfg = convert_checkpoint(a.source, a.out, a.checkpoint, a.iterations, a.lr, a.rewarm, a.decay_from)
    print(f"{a.source} -> {a.checkpoint} (arch {cfg.arch}); resume with --out {cfg.out}")


if __name__ == "__main__":
    main()
