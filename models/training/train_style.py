"""Train one multi-style network (conditional instance norm) for many paintings, on the CPU.

    nice -n 19 python -m models.training.train_style --styles starry_night,great_wave,the_scream \\
        --out models/weights/styles/multistyle.safetensors > runs/train_style.log 2>&1 &
    python -m models.training.train_style --resume     # continues the run recorded in the checkpoint

The recipe is built for two CPU cores (details and measurements in models/weights/styles/README.md):

* **Identity warm start.** The first ``--warmup-iterations`` train the network to reproduce its
  input with an L1 pixel loss and no loss network (tens of times cheaper per iteration). Styling then
  starts from a network that keeps the photo, instead of from near-black outputs whose Gram error
  dwarfs every content error (runs from scratch learned palettes and blobs long before content).
* **Every style in every batch.** Batch element *i* of iteration *t* is painted in style
  ``(t·B + i) mod S``, so all styles see equal data and the shared convolutions learn from all of them.
* **Progressive crops** (``--crop-schedule``): cheap small crops first, larger ones later.
* **bf16 where native** (:mod:`models.precision`), channels_last, the loss network truncated at the
  deepest loss layer, painting Grams computed once.
* **Fails loudly**: every step checks the loss terms, the gradient norm and the output are finite
  (one host sync) and stops with the iteration and the offending term instead of training on NaN.
* **Resumable exactly**: data order, crops and style assignment are a pure function of (seed,
  iteration), so a checkpoint needs only the weights, Adam's state and the iteration. Checkpoints go
  to ``runs/`` in fp32 (exact) and to ``--checkpoint`` (committed: fp16 weights, bf16 Adam moments),
  every ``--checkpoint-minutes``. ``--resume`` prefers the fp32 one when it is at least as recent.

The held-out photos (see :func:`is_held_out`) never enter training; they feed the previews and
:mod:`models.training.eval_style`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import random
import signal
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from datetime import UTC, datetime
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, safe_open, save_file
from torch import Tensor

from models.imaging import pil_to_tensor, resize_longest, tensor_to_pil
from models.numerics import finite_or_raise
from models.photos import DATA_DIR, HOLDOUT_PERCENT, list_photos, random_crop, split_photos
from models.precision import use_bf16
from models.style_objective import StyleObjective, stack_grams
from models.styles import sha256_file
from models.training.fixed_norms import calibrate_fixed_norms
from models.training.spikes import SpikePenalty
from models.transformer import (
    ARCHS,
    TransformerConfig,
    TransformerNet,
    count_params,
    one_hot_styles,
    save_transformer,
    stylize,
)
from models.vgg import caffe_preprocess, load_vgg19

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# The network written at every checkpoint: a candidate. Serving reads models/weights/styles/, where
# ``python -m models.styles publish --source ...`` copies it together with a matching manifest.
DEFAULT_OUT = PROJECT_ROOT / "runs" / "train_style" / "multistyle.safetensors"
DEFAULT_CHECKPOINT = PROJECT_ROOT / "models" / "weights" / "styles" / "multistyle.train-state.safetensors"


@dataclass
class TrainConfig:
    """The recipe; stored in the checkpoint (``--resume`` reads it back) and the weights' metadata."""

    styles: tuple[str, ...] = ()  # painting files
    names: tuple[str, ...] = ()  # style names, one per painting (default: file stems)
    photos: str = str(DATA_DIR / "photos")
    out: str = str(DEFAULT_OUT)
    checkpoint: str = str(DEFAULT_CHECKPOINT)
    arch: str = "medium"
    iterations: int = 30000  # style iterations, after the warm-up
    warmup_iterations: int = 400
    warmup_lr: float = 2e-3
    batch_size: int = 4
    crop_schedule: str = "0:128,4000:192,12000:256"  # from style iteration N on, crops of M px
    lr: float = 1e-3
    lr_final: float = 1e-4
    decay_from: float = 0.75  # fraction of the style iterations after which lr decays linearly
    # From style iteration ``rewarm_at`` on, lr ramps up linearly again over ``rewarm_iterations``:
    # set when a run continues with a changed network and a fresh optimizer (models.training.freeze_norms).
    rewarm_at: int = 0
    rewarm_iterations: int = 0
    # weight of the penalty on activations beyond spike_threshold units at every norm after the encoder
    # (models.training.spikes)
    spike_weight: float = 0.0
    spike_threshold: float = 6.0
    clip_grad: float = 0.0  # 0: no clipping (the norm is still computed and checked)
    content_weight: float = 1.0
    style_weight: float = 10.0
    tv_weight: float = 1.0
    content_layers: tuple[str, ...] = ("relu2_2",)
    style_layers: tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")
    style_layer_weights: tuple[float, ...] = StyleObjective.style_layer_weights
    style_size: int = 256
    seed: int = 0
    device: str = "auto"
    precision: str = "auto"
    threads: int = 0
    holdout_percent: int = HOLDOUT_PERCENT
    max_minutes: float = 0.0
    stop_after: int = 0  # stop (with a checkpoint) after this many iterations in this process; 0: never
    log_every: int = 10
    preview_every: int = 200
    checkpoint_minutes: float = 10.0
    runs_dir: str = "runs/train_style"

    @property
    def objective(self) -> StyleObjective:
        return StyleObjective(
            self.content_weight,
            self.style_weight,
            self.tv_weight,
            self.content_layers,
            self.style_layers,
            self.style_layer_weights,
            self.style_size,
        )

    @property
    def style_names(self) -> tuple[str, ...]:
        return self.names or tuple(Path(s).stem for s in self.styles)

    @property
    def total_iterations(self) -> int:
        return self.warmup_iterations + self.iterations

    def crop_at(self, style_iteration: int) -> int:
        """Crop size for a style iteration (warm-up iterations use the first entry)."""
        crop = 0
        for start, size in _parse_schedule(self.crop_schedule):
            if style_iteration >= start:
                crop = size
        return crop

    def lr_at(self, style_iteration: int) -> float:
        """Constant, then linear decay to ``lr_final`` over the last ``1 - decay_from`` of the run
        (times the re-warm ramp, if any)."""
        start = self.decay_from * self.iterations
        lr = self.lr
        if style_iteration > start:
            frac = min(1.0, (style_iteration - start) / max(1.0, self.iterations - start))
            lr += frac * (self.lr_final - self.lr)
        if self.rewarm_iterations and style_iteration > self.rewarm_at:
            lr *= min(1.0, (style_iteration - self.rewarm_at) / self.rewarm_iterations)
        return lr

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TrainConfig:
        raw = json.loads(text)
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in known})


def _parse_schedule(text: str) -> list[tuple[int, int]]:
    try:
        pairs = sorted((int(a), int(b)) for a, b in (item.split(":") for item in text.split(",")))
    except ValueError:
        raise ValueError(f"crop schedule must look like '0:128,4000:192', got {text!r}") from None
    if not pairs or pairs[0][0] != 0 or any(size < 32 or size % 4 for _, size in pairs):
        raise ValueError(f"crop schedule must start at 0 with sizes >= 32, multiples of 4: {text!r}")
    return pairs


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def batch_at(
    photos: Sequence[Image.Image], cfg: TrainConfig, iteration: int, num_styles: int
) -> tuple[Tensor, list[int]]:
    """The batch of a global iteration: a pure function of (seed, iteration), so resume is exact."""
    rng = random.Random(cfg.seed * 1_000_003 + iteration)
    crop = cfg.crop_at(max(0, iteration - cfg.warmup_iterations))
    imgs = [random_crop(photos[rng.randrange(len(photos))], crop, rng) for _ in range(cfg.batch_size)]
    styles = [(iteration * cfg.batch_size + i) % num_styles for i in range(cfg.batch_size)]
    return torch.cat([pil_to_tensor(img) for img in imgs]), styles


# --- checkpoints ----------------------------------------------------------------------------------


def save_checkpoint(
    path: Path,
    model: TransformerNet,
    optimizer: torch.optim.Adam,
    iteration: int,
    cfg: TrainConfig,
    exact: bool,
    info: dict[str, object],
) -> None:
    """Weights + Adam state + iteration + recipe in one safetensors file (written atomically).

    ``exact``: fp32 everything (bit-exact resume). Otherwise fp16 weights and bf16 Adam moments: a
    small file to commit; bf16 keeps fp32's exponent range, so tiny second moments do not flush to
    zero as they would in fp16 (which would make Adam's steps explode on resume).
    """
    wdtype, mdtype = (torch.float32, torch.float32) if exact else (torch.float16, torch.bfloat16)
    tensors = {f"model.{k}": v.detach().to("cpu", wdtype).contiguous() for k, v in model.state_dict().items()}
    names = [n for n, _ in model.named_parameters()]
    for name, param in zip(names, (p for g in optimizer.param_groups for p in g["params"]), strict=True):
        state = optimizer.state.get(param)
        if state:
            tensors[f"adam.{name}.exp_avg"] = state["exp_avg"].to(mdtype).contiguous()
            tensors[f"adam.{name}.exp_avg_sq"] = state["exp_avg_sq"].to(mdtype).contiguous()
            tensors[f"adam.{name}.step"] = torch.as_tensor(float(state["step"])).reshape(1)
    meta = {
        "atelier.checkpoint": "1",
        "iteration": str(iteration),
        "config": cfg.to_json(),
        "arch": model.config.to_json(),
        "info": json.dumps(info, sort_keys=True),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def load_checkpoint(path: Path) -> tuple[dict[str, str], dict[str, Tensor]]:
    return checkpoint_meta(path), load_file(str(path))


def checkpoint_meta(path: Path) -> dict[str, str]:
    """A training checkpoint's metadata, without reading its tensors."""
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
    if meta.get("atelier.checkpoint") != "1":
        raise ValueError(f"{path} is not a training checkpoint")
    return meta


def restore(model: TransformerNet, optimizer: torch.optim.Adam, tensors: dict[str, Tensor]) -> None:
    model.load_state_dict(
        {k[len("model.") :]: v.float() for k, v in tensors.items() if k.startswith("model.")}
    )
    for name, param in model.named_parameters():
        if f"adam.{name}.exp_avg" in tensors:
            optimizer.state[param] = {
                "step": tensors[f"adam.{name}.step"].reshape(()).float(),
                "exp_avg": tensors[f"adam.{name}.exp_avg"].float().to(param.device),
                "exp_avg_sq": tensors[f"adam.{name}.exp_avg_sq"].float().to(param.device),
            }


def newest_checkpoint(cfg: TrainConfig) -> Path | None:
    """The fp32 run-dir checkpoint when it is at least as far along as the committed one.

    A run-dir state of another run (see :func:`foreign_state`) is never a candidate: a run that
    happens to share the ``--out`` stem must not be loaded, nor overwritten by this one's checkpoints.
    """
    committed, state = Path(cfg.checkpoint), run_dir(cfg) / "state.safetensors"
    foreign = foreign_state(cfg)
    if foreign is not None:
        print(f"ignoring {foreign}: its recipe differs from {committed}'s (another run)", flush=True)
    candidates = [
        (int(checkpoint_meta(path)["iteration"]), path == state, path)  # the exact state wins ties
        for path in (committed, state)
        if path.is_file() and path != foreign
    ]
    return max(candidates)[2] if candidates else None


def foreign_state(cfg: TrainConfig) -> Path | None:
    """The run dir's fp32 state when it belongs to another run than the committed checkpoint's."""
    committed, state = Path(cfg.checkpoint), run_dir(cfg) / "state.safetensors"
    if (
        committed.is_file()
        and state.is_file()
        and not same_run(checkpoint_meta(committed), checkpoint_meta(state))
    ):
        return state
    return None


# What a resume may change without making it another run (everything else is the recipe).
RESUME_MUTABLE = frozenset(
    {"iterations", "max_minutes", "stop_after", "threads", "log_every", "preview_every"}
    | {"spike_weight", "spike_threshold"}  # a regularizer that may be switched on mid-run
    | {"checkpoint_minutes", "out", "checkpoint", "runs_dir"}
)


def same_run(a: Mapping[str, str], b: Mapping[str, str]) -> bool:
    """Two checkpoints' metadata describe one run: same arch, same recipe up to the resumable knobs."""
    if a.get("arch") != b.get("arch"):
        return False
    recipe_a, recipe_b = (
        {k: v for k, v in json.loads(m["config"]).items() if k not in RESUME_MUTABLE} for m in (a, b)
    )
    return recipe_a == recipe_b


def run_dir(cfg: TrainConfig) -> Path:
    return Path(cfg.runs_dir) / Path(cfg.out).stem


def load_run(path: Path) -> tuple[TrainConfig, TransformerNet, torch.optim.Adam, int]:
    """A train-state's recipe, network, optimizer and iteration: what a conversion starts from."""
    meta, tensors = load_checkpoint(path)
    cfg = TrainConfig.from_json(meta["config"])
    model = TransformerNet(TransformerConfig.from_json(meta["arch"]))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    restore(model, optimizer, tensors)
    return cfg, model, optimizer, int(meta["iteration"])


def save_converted(
    path: Path,
    model: TransformerNet,
    optimizer: torch.optim.Adam,
    iteration: int,
    cfg: TrainConfig,
    info: dict[str, object],
) -> None:
    """Write a converted run's train-state for ``--resume``, removing an earlier run's fp32 state
    under the same name, which ``--resume`` would otherwise prefer when newer."""
    save_checkpoint(path, model, optimizer, iteration, cfg, exact=False, info=info)
    stale = run_dir(cfg) / "state.safetensors"
    if stale.exists():
        stale.unlink()


# --- training -------------------------------------------------------------------------------------


def save_preview(
    model: TransformerNet, photos: Sequence[Image.Image], styles: Sequence[int], path: Path
) -> None:
    """Held-out photos (top row) and their stylizations, one row per style index."""
    was_training = model.training
    model.eval()
    n = model.config.num_styles
    rows: list[list[Image.Image]] = [list(photos)]
    with torch.inference_mode():
        for s in styles:
            w = one_hot_styles([s], n)
            rows.append([tensor_to_pil(stylize(model, pil_to_tensor(p), w)) for p in photos])
    model.train(was_training)
    cell_w, cell_h = max(p.width for p in photos), max(p.height for p in photos)
    sheet = Image.new("RGB", (cell_w * len(photos), cell_h * len(rows)), "white")
    for r, row in enumerate(rows):
        for c, img in enumerate(row):
            sheet.paste(img, (c * cell_w, r * cell_h))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)


def train(cfg: TrainConfig, resume_from: Path | None = None) -> dict[str, object]:
    """Run (or continue) training; returns the summary also stored in the weights' metadata."""
    if not cfg.styles:
        raise ValueError("no paintings given (--styles)")
    if len(cfg.style_names) != len(cfg.styles):
        raise ValueError("--names needs one name per painting")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = pick_device(cfg.device)
    bf16 = use_bf16(device, cfg.precision)
    objective = cfg.objective
    out_dir = run_dir(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)

    train_paths, held_out = split_photos(list_photos(Path(cfg.photos)), cfg.holdout_percent)
    if len(train_paths) < cfg.batch_size:
        raise ValueError(f"only {len(train_paths)} training photos for batch size {cfg.batch_size}")
    photos = [Image.open(p).convert("RGB") for p in train_paths]  # ~1k photos of 256 px: ~300 MB
    preview_photos = [resize_longest(Image.open(p).convert("RGB"), 256) for p in held_out[:4]]

    num_styles = len(cfg.styles)
    vgg32 = load_vgg19(objective.deepest)
    grams = [
        {k: v.to(device) for k, v in objective.painting_grams(vgg32, Image.open(s)).items()}
        for s in cfg.styles
    ]
    vgg = vgg32.converted(device=device, dtype=torch.bfloat16 if bf16 else torch.float32, channels_last=True)
    vgg_dtype = next(vgg.parameters()).dtype

    torch.manual_seed(cfg.seed)  # the initial weights; everything random after comes from batch_at
    config = TransformerConfig(**{**asdict(ARCHS[cfg.arch]), "num_styles": num_styles})
    model = TransformerNet(config).to(device).train()
    params = list(model.parameters())
    iteration = 0
    optimizer = torch.optim.Adam(params, lr=cfg.warmup_lr)
    if resume_from is None and "affine" in (config.decoder_norm, config.residual_norm):
        # Fixed statistics start as instance norm's average (see calibrate_fixed_norms).
        rng = random.Random(cfg.seed)
        crops = [random_crop(photos[rng.randrange(len(photos))], cfg.crop_at(0), rng) for _ in range(16)]
        count = calibrate_fixed_norms(model, [pil_to_tensor(c).to(device) for c in crops])
        print(f"calibrated {count} fixed-statistics norms on {len(crops)} training crops", flush=True)
    if resume_from is not None:
        meta, tensors = load_checkpoint(resume_from)
        iteration = int(meta["iteration"])
        if iteration > cfg.warmup_iterations:  # the checkpoint holds the style phase's Adam state
            optimizer = torch.optim.Adam(params, lr=cfg.lr)
        restore(model, optimizer, tensors)
        print(f"resumed from {resume_from} at iteration {iteration}", flush=True)

    spikes = SpikePenalty(model, cfg.spike_threshold) if cfg.spike_weight else None

    def loss_net(img: Tensor, which: Sequence[str]) -> dict[str, Tensor]:
        return vgg(caffe_preprocess(img).to(dtype=vgg_dtype, memory_format=torch.channels_last), which)

    log_path = out_dir / "losses.jsonl"
    first_iteration = iteration
    started = time.monotonic()
    last_checkpoint = started
    recent: list[dict[str, float]] = []
    stop = {"signal": None}

    def on_signal(signum: int, _frame: object) -> None:
        stop["signal"] = signum

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    def info(final: bool) -> dict[str, object]:
        means = {k: round(sum(r[k] for r in recent) / len(recent), 4) for k in recent[-1]} if recent else {}
        return {
            "iterations": iteration,
            "style_iterations": max(0, iteration - cfg.warmup_iterations),
            "session_seconds": round(time.monotonic() - started, 1),
            "recent_losses": means,
            "finished": final,
            "device": str(device) if device.type == "cuda" else f"cpu ({platform.processor() or 'x86'})",
            "bf16": bf16,
            "threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "train_photos": len(train_paths),
            "held_out_photos": len(held_out),
            "params": count_params(model),
            "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }

    def checkpoint(final: bool) -> None:
        summary = info(final)
        save_checkpoint(out_dir / "state.safetensors", model, optimizer, iteration, cfg, True, summary)
        save_checkpoint(Path(cfg.checkpoint), model, optimizer, iteration, cfg, False, summary)
        meta = {
            "atelier.styles": json.dumps(list(cfg.style_names)),
            "atelier.objective": objective.to_json(),
            "atelier.train": json.dumps(
                {**summary, "recipe": json.loads(cfg.to_json()), "paintings": _painting_hashes(cfg)}
            ),
        }
        save_transformer(Path(cfg.out), model, meta)
        print(f"checkpoint at iteration {iteration}", flush=True)

    while iteration < cfg.total_iterations:
        iteration += 1
        style_it = iteration - cfg.warmup_iterations
        x, styles = batch_at(photos, cfg, iteration, num_styles)
        x = x.to(device)
        if style_it == 1:  # the warm-up is over: a fresh optimizer for the real objective
            optimizer = torch.optim.Adam(params, lr=cfg.lr)
            recent = []
        if style_it <= 0:
            # Uniform style weights: every style's norm rows get the same updates, so all styles
            # leave the warm-up as the same near-identity.
            w = torch.full((x.shape[0], num_styles), 1.0 / num_styles, device=device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                y = model(x, w)
            pixel = (y.float() - x).abs().mean()
            terms = {"pixel": pixel, "total": pixel}
        else:
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr_at(style_it)
            with (
                torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16),
                spikes.recording() if spikes else contextlib.nullcontext(),
            ):
                y = model(x, one_hot_styles(styles, num_styles).to(device))
            y = y.float()
            with torch.no_grad():
                targets = {k: v.float() for k, v in loss_net(x, objective.content_layers).items()}
            y_caffe = caffe_preprocess(y)
            feats = vgg(y_caffe.to(dtype=vgg_dtype, memory_format=torch.channels_last), objective.layers)
            terms = objective.terms(feats, targets, stack_grams(grams, styles), y_caffe)
            if spikes:
                terms["spike"] = cfg.spike_weight * spikes.value()
                terms["total"] = terms["total"] + terms["spike"]
        optimizer.zero_grad(set_to_none=True)
        terms["total"].backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad or math.inf)
        row = finite_or_raise(
            f"iteration {iteration}", {**terms, "grad_norm": grad_norm, "output": y.detach().abs().amax()}
        )
        optimizer.step()

        recent = [*recent[-49:], row]
        if iteration % cfg.log_every == 0 or iteration == 1:
            elapsed = time.monotonic() - started
            entry = {"iter": iteration, "style_iter": style_it, "elapsed_s": round(elapsed, 1), **row}
            with log_path.open("a") as f:
                f.write(json.dumps(entry) + "\n")
            print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in entry.items()))
        if preview_photos and cfg.preview_every and iteration % cfg.preview_every == 0:
            shown = [(iteration // cfg.preview_every * 3 + k) % num_styles for k in range(3)]
            save_preview(model, preview_photos, shown, out_dir / f"preview_{iteration:06d}.png")
        now = time.monotonic()
        if now - last_checkpoint > cfg.checkpoint_minutes * 60:
            checkpoint(final=False)
            last_checkpoint = now
        budget_spent = (cfg.max_minutes and now - started > cfg.max_minutes * 60) or (
            cfg.stop_after and iteration - first_iteration >= cfg.stop_after
        )
        if stop["signal"] is not None or budget_spent:
            print(f"stopping at iteration {iteration} (signal {stop['signal']} or time budget)", flush=True)
            break

    checkpoint(final=iteration >= cfg.total_iterations)
    summary = info(iteration >= cfg.total_iterations)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _painting_hashes(cfg: TrainConfig) -> dict[str, str]:
    return {name: sha256_file(Path(p)) for name, p in zip(cfg.style_names, cfg.styles, strict=True)}


# --- command line ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> tuple[TrainConfig, bool]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--resume", action="store_true", help="continue the run stored in --checkpoint")
    p.add_argument(
        "--styles", default="", help="comma-separated painting names (in --styles-dir) or image paths"
    )
    p.add_argument("--styles-dir", default=str(DATA_DIR / "styles"))
    p.add_argument("--names", default="", help="comma-separated style names (default: file stems)")
    p.add_argument("--arch", default=None, choices=sorted(ARCHS))
    defaults = TrainConfig()
    scalar = [f.name for f in fields(TrainConfig) if f.name not in ("styles", "names", "arch")]
    for key in scalar:
        value = getattr(defaults, key)
        kind = _csv_of(type(value[0])) if isinstance(value, tuple) and value else type(value)
        p.add_argument("--" + key.replace("_", "-"), type=kind, default=None)
    a = p.parse_args(argv)
    given = {k: v for k, v in vars(a).items() if v is not None and k in {f.name for f in fields(TrainConfig)}}
    if a.styles:
        given["styles"] = tuple(_painting_path(s.strip(), Path(a.styles_dir)) for s in a.styles.split(","))
    if a.names:
        given["names"] = tuple(s.strip() for s in a.names.split(","))
    if a.resume:
        return _resumed_config(given), True
    return TrainConfig(**{**asdict(defaults), **given}), False


def _csv_of(kind: type) -> object:
    return lambda text: tuple(kind(x.strip()) for x in text.split(",") if x.strip())


def _resumed_config(given: dict[str, object]) -> TrainConfig:
    """The stored recipe; only the run length and machine-side knobs may change on resume.

    The run dir is the one the committed checkpoint's run wrote (unless ``--runs-dir`` says
    otherwise), not the default: a default ``runs/train_style/<out stem>`` may hold another run.
    """
    located = {k: v for k, v in given.items() if k in ("out", "checkpoint", "runs_dir")}
    committed = Path(str(located.get("checkpoint", TrainConfig.checkpoint)))
    if committed.is_file():
        recorded = TrainConfig.from_json(checkpoint_meta(committed)["config"])
        located = {"out": recorded.out, "runs_dir": recorded.runs_dir} | located
    probe = TrainConfig(**located)
    foreign = foreign_state(probe)
    if foreign is not None:
        raise SystemExit(
            f"--resume: {foreign} holds another run's state (its recipe differs from {committed}'s); "
            "resuming would overwrite it: pass another --out or --runs-dir"
        )
    path = newest_checkpoint(probe)
    if path is None:
        raise SystemExit(f"--resume: no checkpoint at {probe.checkpoint} or {run_dir(probe)}")
    stored = TrainConfig.from_json(checkpoint_meta(path)["config"])
    # Limits of one process are not part of the recipe: a run stopped after N iterations once
    # must not stop again after N on every later resume.
    changed = {"stop_after": 0, "max_minutes": 0.0} | {k: v for k, v in given.items() if k in RESUME_MUTABLE}
    changed |= {"out": probe.out, "runs_dir": probe.runs_dir}
    # The train-state read is the one to keep overwriting (a converted or copied state may record
    # another machine's path).
    changed["checkpoint"] = str(probe.checkpoint) if path == Path(probe.checkpoint) else stored.checkpoint
    return TrainConfig(**{**asdict(stored), **changed})


def _painting_path(value: str, styles_dir: Path) -> str:
    path = Path(value)
    if path.suffix:
        return str(path)
    return str(styles_dir / f"{value}.jpg")


def main(argv: Sequence[str] | None = None) -> None:
    cfg, resume = parse_args(argv)
    summary = train(cfg, newest_checkpoint(cfg) if resume else None)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
