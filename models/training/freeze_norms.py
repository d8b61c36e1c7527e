"""Put a training run's residual and decoder norms on fixed statistics, and go on training.

    python -m models.training.freeze_norms --out runs/train_style/multistyle-affine.safetensors
    nice -n 19 python -m models.training.train_style --resume \
        --out runs/train_style/multistyle-affine.safetensors

Why: the ``medium`` network learned to steer its instance norms with a few huge activations (the
droplet "eyes" of every output; see :class:`models.transformer.ConditionalAffine2d`). Their spread
barely changes between photos (1-4% at the decoder), so per-style averages of each norm's mean and
spread, measured over training crops, replace the per-image ones with little change: the decoder
alone keeps held-out losses within ~2%; the residual blocks too cost 1.64x, because the small
per-photo differences compound over ten norms. Training then continues from the same iteration
with the same schedule.

Outcome on the 28,218-iteration network (model card, "The droplets"): with the decoder fixed,
the droplets stayed (the residual blocks' instance norms still reward them), so this is a tool
for experiments, not a fix.

The folded network's loss surface is much steeper than the one Adam's moments were measured on
(gradient norms 5-10x larger at once: every upstream change now reaches the decoder unnormalized),
and continuing with the old moments, or with fresh ones at full learning rate, threw the losses up
2.4x within ten iterations. So the optimizer starts afresh and the learning rate ramps back up over
``--rewarm`` iterations; the schedule is otherwise unchanged.
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Sequence
from dataclasses import replace
from functools import partial
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from models.imaging import pil_to_tensor
from models.photos import list_photos, random_crop, split_photos
from models.training.fixed_norms import EPS, PARTS, norms_of, record_stats
from models.training.train_style import (
    DEFAULT_CHECKPOINT,
    TrainConfig,
    load_run,
    newest_checkpoint,
    save_converted,
)
from models.transformer import (
    ARCHS,
    TransformerNet,
    arch_name,
    one_hot_styles,
)


@torch.inference_mode()
def norm_stats(
    model: TransformerNet, crops: Sequence[Tensor], parts: Sequence[str] = PARTS
) -> dict[str, tuple[Tensor, Tensor]]:
    """Per norm, S×C means and S×C spreads of its input, averaged over ``crops`` per style."""
    norms = norms_of(model, parts)
    seen: dict[str, list[tuple[Tensor, Tensor]]] = {name: [] for name in norms}

    handles = [norm.register_forward_hook(partial(record_stats, seen[name])) for name, norm in norms.items()]
    n_styles = model.config.num_styles
    try:
        for s in range(n_styles):
            for crop in crops:
                model(crop, one_hot_styles([s], n_styles))
    finally:
        for h in handles:
            h.remove()
    stats = {}
    for name in norms:
        means = torch.cat([m for m, _ in seen[name]]).view(n_styles, len(crops), -1).mean(1)
        variances = torch.cat([v for _, v in seen[name]]).view(n_styles, len(crops), -1).mean(1)
        stats[name] = (means, (variances + EPS).sqrt())
    return stats


def freeze_norms(
    model: TransformerNet, stats: dict[str, tuple[Tensor, Tensor]], despike: float = 0.0
) -> TransformerNet:
    """The same network with the measured norms (keys of ``stats``) on fixed statistics.

    ``despike > 0`` (decoder only) also inpaints the decoder's spikes, which changes the function:
    see :func:`models.transformer.despike`.

    Each norm divides by statistics shared by all styles (their mean over styles); what differs per
    style is folded into that style's row: with shared ``μ, σ`` and the style's own ``μ_s, σ_s``,
    ``γ(x - μ_s)/σ_s + β = γ'(x - μ)/σ + β'`` for ``γ' = γσ/σ_s`` and ``β' = β + γ(μ - μ_s)/σ_s``.
    """
    parts = [part for part in PARTS if set(norms_of(model, [part])) <= set(stats)]
    changes = {f"{part}_norm": "affine" for part in parts}
    if not parts or any(getattr(model.config, field) != "instance" for field in changes):
        raise ValueError(f"nothing to freeze: {sorted(changes) or 'no norm measured'} already fixed")
    frozen = TransformerNet(replace(model.config, **changes, despike=despike))
    loaded = frozen.load_state_dict(model.state_dict(), strict=False)
    new_buffers = {f"{name}.{b}" for name in stats for b in ("mean", "spread")}
    if loaded.unexpected_keys or set(loaded.missing_keys) != new_buffers:  # only the buffers are new
        raise ValueError(f"unexpected weights: {loaded.unexpected_keys or loaded.missing_keys}")
    targets = norms_of(frozen, parts)
    with torch.no_grad():
        for name, (means, spreads) in stats.items():
            norm = targets[name]
            mean, spread = means.mean(0), spreads.mean(0)
            norm.mean.copy_(mean)
            norm.spread.copy_(spread)
            norm.bias.add_(norm.weight * (mean - means) / spreads)
            norm.weight.mul_(spread / spreads)
    return frozen.train(model.training)


def training_crops(cfg: TrainConfig, count: int, size: int, seed: int = 0) -> list[Tensor]:
    """``count`` random crops of training photos (never the held-out ones)."""
    train_paths, _ = split_photos(list_photos(Path(cfg.photos)), cfg.holdout_percent)
    rng = random.Random(seed)
    return [
        pil_to_tensor(random_crop(Image.open(p).convert("RGB"), size, rng))
        for p in rng.sample(train_paths, min(count, len(train_paths)))
    ]


def convert_checkpoint(
    source: Path,
    out: str,
    checkpoint: Path,
    crops: int,
    size: int,
    rewarm: int = 500,
    parts: Sequence[str] = PARTS,
    despike: float = 0.0,
) -> TrainConfig:
    """Read a train-state, fix the statistics of its ``parts``' norms, write a train-state that
    ``--resume`` continues."""
    cfg, model, _, iteration = load_run(source)
    frozen = freeze_norms(model.eval(), norm_stats(model, training_crops(cfg, crops, size), parts), despike)
    new_arch = arch_name(frozen.config)
    if new_arch not in ARCHS:
        raise ValueError(f"{source}: the folded network matches no registered arch")
    new_cfg = replace(
        cfg,
        arch=new_arch,
        out=out,
        checkpoint=str(checkpoint),
        rewarm_at=iteration - cfg.warmup_iterations,
        rewarm_iterations=rewarm,
    )
    new_optimizer = torch.optim.Adam(frozen.parameters(), lr=new_cfg.lr)  # fresh moments (see above)
    info = {"converted_from": str(source), "at_iteration": iteration, "stat_crops": crops, "crop_size": size}
    save_converted(checkpoint, frozen.train(), new_optimizer, iteration, new_cfg, info)
    return new_cfg


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", type=Path, default=None, help="train-state to convert (default: the newest)")
    p.add_argument("--out", required=True, help="the new run's network path (its run directory follows)")
    p.add_argument(
        "--checkpoint", type=Path, default=DEFAULT_CHECKPOINT, help="where the new train-state goes"
    )
    p.add_argument("--crops", type=int, default=32, help="training crops the statistics are averaged over")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--rewarm", type=int, default=500, help="iterations over which the lr ramps up again")
    p.add_argument("--parts", default=",".join(PARTS), help="comma-separated: residual, decoder")
    p.add_argument(
        "--despike", type=float, default=0.0, help="> 0: the decoder also inpaints spikes beyond this"
    )
    a = p.parse_args(argv)
    source = a.source
    if source is None:
        source = newest_checkpoint(TrainConfig())
        if source is None:
            raise SystemExit("no train-state found; pass --source")
    parts = tuple(part.strip() for part in a.parts.split(","))
    if not parts or set(parts) - set(PARTS):
        raise SystemExit(f"--parts: choose from {', '.join(PARTS)}")
    cfg = convert_checkpoint(source, a.out, a.checkpoint, a.crops, a.size, a.rewarm, parts, a.despike)
    print(f"{source} -> {a.checkpoint} (arch {cfg.arch}); resume with --out {cfg.out}")


if __name__ == "__main__":
    main()
