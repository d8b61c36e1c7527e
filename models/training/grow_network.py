"""Grow a trained run's network without changing its function, and go on training.

    python -m models.training.grow_network --growth dense-residuals \\
        --source models/weights/styles/multistyle.train-state.safetensors \\
        --out runs/train_style/dense.safetensors --checkpoint runs/dense.train-state.safetensors \\
        --iterations 60000
    nice -n 19 python -m models.training.train_style --resume \\
        --checkpoint runs/dense.train-state.safetensors --out runs/train_style/dense.safetensors

Growths (each converted network computes exactly what the old one did, so training continues from
there instead of from scratch):

* ``skips``: encoder-to-decoder 1×1 bridges (``TransformerConfig.skips``), starting at zero. Why:
  everything the network keeps of the photo's detail has to pass the 1/4-resolution residual stream.
  Measured (model card): no gain in held-out loss after 5,500 more iterations.
* ``dense-residuals``: every separable residual conv (depthwise 3×3 then pointwise 1×1) becomes the
  full 3×3 conv it equals, ``W[o, i] = P[o, i] · D[i]``: 8× the parameters in the residual stream
  (989k instead of 261k in all) for ~1.9× the multiply-adds. Why: fine-tuned on one photo the
  network reaches 60 Gatys-equivalent steps, on every photo at once 14.5 (``overfit_probe``): one
  set of weights serving all photos is the limit, so the lever is capacity, and the full convs buy
  the most of it where it is cheapest (1/4 resolution).

Parameters that survive keep their Adam moments (the function and so the loss surface around it are
unchanged); new or reshaped ones start with none. A finished run is extended: ``--iterations`` is the
new total, with the learning rate ramping from zero to ``--lr`` over ``--rewarm`` iterations,
constant, then decaying linearly to the recipe's final rate over the last ``1 - --decay-from`` of the
run.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import torch
from torch import nn

from models.training.train_style import TrainConfig, load_run, save_converted
from models.transformer import ARCHS, ConvLayer, SeparableConv, TransformerNet, arch_name


def _load_grown(model: TransformerNet, grown: TransformerNet, new_prefixes: tuple[str, ...]) -> None:
    """Copy ``model``'s state outside ``new_prefixes`` into ``grown``, which must need no other."""
    kept = {k: v for k, v in model.state_dict().items() if not k.startswith(new_prefixes)}
    missing, unexpected = grown.load_state_dict(kept, strict=False)
    if unexpected or any(not k.startswith(new_prefixes) for k in missing):
        raise ValueError(f"unexpected state: missing {missing}, unexpected {unexpected}")


def with_skips(model: TransformerNet) -> TransformerNet:
    """The same network with (zero) skips: equal outputs for every input and style."""
    if model.config.skips:
        raise ValueError("the network already has skips")
    grown = TransformerNet(replace(model.config, skips=True))
    _load_grown(model, grown, ("bridges.",))
    return grown


def dense_equivalent(separable: SeparableConv) -> ConvLayer:
    """The full 3×3 conv that computes what depthwise-then-pointwise computes (same reflection pad)."""
    depthwise, pointwise = separable[0][1], separable[1]
    mix = pointwise.weight[:, :, 0, 0]  # C_out × C
    dense = ConvLayer(depthwise.in_channels, pointwise.out_channels, depthwise.kernel_size[0])
    with torch.no_grad():
        dense[1].weight.copy_(mix[:, :, None, None] * depthwise.weight[:, 0][None])
        dense[1].bias.copy_(mix @ depthwise.bias + pointwise.bias)
    return dense


def with_dense_residuals(model: TransformerNet) -> TransformerNet:
    """The same network with full 3×3 convs in its residual blocks: equal outputs up to rounding."""
    if not model.config.separable:
        raise ValueError("the network's residual convs are already dense")
    grown = TransformerNet(replace(model.config, separable=False))
    _load_grown(model, grown, tuple(f"residuals.{i}.conv" for i in range(model.config.blocks)))
    for old, new in zip(model.residuals, grown.residuals, strict=True):
        new.conv1, new.conv2 = dense_equivalent(old.conv1), dense_equivalent(old.conv2)
    return grown


GROWTHS: dict[str, Callable[[TransformerNet], TransformerNet]] = {
    "skips": with_skips,
    "dense-residuals": with_dense_residuals,
}


def carry_moments(
    model: nn.Module, optimizer: torch.optim.Adam, grown: nn.Module, lr: float
) -> torch.optim.Adam:
    """An Adam for ``grown`` holding ``optimizer``'s moments for every parameter of the same name and
    shape (a reshaped one, like a separable conv made dense, starts afresh)."""
    new_optimizer = torch.optim.Adam(grown.parameters(), lr=lr)
    old_params = dict(model.named_parameters())
    for name, param in grown.named_parameters():
        old = old_params.get(name)
        if old is not None and old.shape == param.shape and old in optimizer.state:
            new_optimizer.state[param] = optimizer.state[old]
    return new_optimizer


def convert_checkpoint(
    source: Path,
    out: str,
    checkpoint: Path,
    iterations: int,
    lr: float,
    rewarm: int,
    decay_from: float,
    growth: str = "skips",
) -> TrainConfig:
    """Read a train-state, grow its network, write a train-state that ``--resume`` continues."""
    if growth not in GROWTHS:
        raise ValueError(f"unknown growth {growth!r}; expected one of {sorted(GROWTHS)}")
    cfg, model, optimizer, iteration = load_run(source)
    grown = GROWTHS[growth](model)
    new_arch = arch_name(grown.config)
    if new_arch not in ARCHS:
        raise ValueError(f"{source}: the network grown by {growth} matches no registered arch")
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
    new_optimizer = carry_moments(model, optimizer, grown, lr)
    info = {"converted_from": str(source), "at_iteration": iteration, "added": growth}
    save_converted(checkpoint, grown.train(), new_optimizer, iteration, new_cfg, info)
    return new_cfg


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--growth", choices=sorted(GROWTHS), required=True)
    p.add_argument("--source", type=Path, required=True, help="train-state to convert")
    p.add_argument("--out", required=True, help="the new run's network path (its run directory follows)")
    p.add_argument("--checkpoint", type=Path, required=True, help="where the new train-state goes")
    p.add_argument("--iterations", type=int, required=True, help="the extended run's style iterations")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--rewarm", type=int, default=200, help="iterations over which the lr ramps up")
    p.add_argument("--decay-from", type=float, default=0.9, help="fraction of the run after which lr decays")
    a = p.parse_args(argv)
    cfg = convert_checkpoint(
        a.source, a.out, a.checkpoint, a.iterations, a.lr, a.rewarm, a.decay_from, a.growth
    )
    print(f"{a.source} -> {a.checkpoint} (arch {cfg.arch}); resume with --out {cfg.out}")


if __name__ == "__main__":
    main()
