"""Style networks: architecture, exact output sizes, weights I/O, the held-out split, a tiny training
run, and the committed networks actually moving a real photo towards their painting."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from models import styles as style_manifest
from models.imaging import pil_to_tensor, resize_longest
from models.losses import gram_matrix, style_loss
from models.numerics import NonFiniteError
from models.photos import is_held_out, split_photos
from models.training.train_style import newest_checkpoint, parse_args, train
from models.transformer import (
    ARCHS,
    build,
    conv_macs,
    count_params,
    export_onnx,
    load_transformer,
    one_hot_styles,
    pad_to_multiple,
    save_transformer,
    stylize,
)
from models.vgg import caffe_preprocess, load_vgg19

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("ATELIER_DATA_DIR", PROJECT_ROOT.parent / "shared" / "data"))
WEIGHTS_DIR = PROJECT_ROOT / "models" / "weights"
STYLE_LAYERS = ("relu1_1", "relu2_1", "relu3_1", "relu4_1")


def photo_like(width: int = 192, height: int = 144, seed: int = 0) -> Image.Image:
    """A held-out photo when the data set is present, else a synthetic scene with edges and texture."""
    photos = DATA_DIR / "photos"
    if photos.is_dir():
        held = sorted(p for p in photos.glob("*.jpg") if is_held_out(p.name))
        if held:
            img = Image.open(held[seed % len(held)]).convert("RGB")
            return img.resize((width, height), Image.Resampling.LANCZOS)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin(x / 9.0)], axis=-1) * 200
    img = Image.fromarray((base + rng.normal(0, 12, base.shape)).clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    draw.ellipse((width // 4, height // 4, width // 2, height // 2), fill=(220, 40, 30))
    # max(): on tiny images (5x3) the inset corner would fall before the start, which Pillow refuses.
    draw.rectangle(
        (width // 2, height // 2, max(width // 2, width - 10), max(height // 2, height - 10)),
        fill=(20, 60, 200),
    )
    return img


# --- architecture ---------------------------------------------------------------------------------


def test_reference_matches_the_paper_and_fast_is_much_lighter() -> None:
    ref, fast = build("reference"), build("fast")
    assert 1_650_000 < count_params(ref) < 1_700_000  # Johnson et al.: ≈1.68 M
    # Two more styles add a scale and a shift per channel of every norm (32 and 64: two norms each).
    extra = count_params(build("reference", num_styles=3)) - count_params(ref)
    assert extra == 2 * 2 * (32 * 2 + 64 * 2 + 128 * 11)
    assert count_params(fast) * 10 < count_params(ref)
    assert conv_macs(fast, 64, 64) * 5 < conv_macs(ref, 64, 64)
    for model in (ref, fast):
        kinds = {type(m).__name__ for m in model.modules()}
        assert "ConvTranspose2d" not in kinds
        assert {"ReflectionPad2d", "ConditionalInstanceNorm2d"} <= kinds


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("shape", [(1, 64, 64), (2, 37, 53), (1, 5, 7), (1, 1, 1), (1, 130, 18)])
def test_output_has_exactly_the_input_size(arch: str, shape: tuple[int, int, int]) -> None:
    n, h, w = shape
    model = build(arch).eval()
    with torch.inference_mode():
        out = stylize(model, torch.rand(n, 3, h, w))
    assert out.shape == (n, 3, h, w)
    assert out.min() >= 0.0 and out.max() <= 1.0


def test_pad_to_multiple_reflects_and_keeps_the_original() -> None:
    x = torch.arange(2 * 3 * 18 * 21, dtype=torch.float32).reshape(2, 3, 18, 21)
    padded, h, w = pad_to_multiple(x)
    assert padded.shape[-2:] == (20, 24) and (h, w) == (18, 21)
    assert torch.equal(padded[..., :18, :21], x)
    assert torch.equal(padded[..., 18, :21], x[..., 16, :])  # reflection, not replication


def test_weights_round_trip_rebuilds_the_arch_from_metadata(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build("fast").eval()
    path = tmp_path / "net.safetensors"
    save_transformer(path, model, {"atelier.style": "test"})
    loaded, meta = load_transformer(path)
    assert loaded.config == ARCHS["fast"]
    assert meta["atelier.arch_name"] == "fast" and meta["atelier.style"] == "test"
    x = torch.rand(1, 3, 32, 48)
    with torch.inference_mode():
        assert torch.allclose(stylize(model, x), stylize(loaded, x), atol=2e-2)  # fp16 storage


def test_onnx_export_matches_eager() -> None:
    ort = pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model = build("fast").eval()
    session = ort.InferenceSession(export_onnx(model), providers=["CPUExecutionProvider"])
    x = torch.rand(2, 3, 40, 56)
    with torch.inference_mode():
        expected = model(x).numpy()
    got = session.run(None, {"image": x.numpy()})[0]
    np.testing.assert_allclose(got, expected, atol=1e-4)


# --- held-out split and training ------------------------------------------------------------------


def test_held_out_split_is_by_name_and_about_five_percent() -> None:
    names = [Path(f"photo_{i:05d}.jpg") for i in range(4000)]
    train_a, held_a = split_photos(names)
    _train_b, held_b = split_photos(list(reversed(names)))
    assert {p.name for p in held_a} == {p.name for p in held_b}
    assert not {p.name for p in held_a} & {p.name for p in train_a}
    assert 0.035 < len(held_a) / len(names) < 0.065
    assert is_held_out("bsds_100039.jpg") == is_held_out("bsds_100039.jpg")


def _tiny_data(tmp_path: Path) -> tuple[Path, list[Path]]:
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(40):
        photo_like(48 + i % 5, 40, seed=i).save(photos / f"p{i:02d}.png")
    paintings = []
    for k in range(2):
        path = tmp_path / f"painting{k}.png"
        photo_like(64, 64, seed=99 + k).rotate(90 * (k + 1)).save(path)
        paintings.append(path)
    return photos, paintings


def _tiny_args(tmp_path: Path, photos: Path, paintings: list[Path], *extra: str) -> list[str]:
    return [
        "--photos", str(photos), "--styles", ",".join(str(p) for p in paintings), "--names", "one,two",
        "--out", str(tmp_path / "net.safetensors"), "--checkpoint", str(tmp_path / "ckpt.safetensors"),
        "--arch", "fast", "--warmup-iterations", "2", "--iterations", "4", "--batch-size", "2",
        "--crop-schedule", "0:32,2:36", "--style-size", "64", "--log-every", "1", "--preview-every", "3",
        "--runs-dir", str(tmp_path / "runs"), "--precision", "fp32", *extra,
    ]  # fmt: skip


def test_tiny_multistyle_run_writes_weights_log_previews_and_resumes_exactly(tmp_path: Path) -> None:
    photos, paintings = _tiny_data(tmp_path)
    cfg, resume = parse_args(_tiny_args(tmp_path, photos, paintings))
    assert not resume and cfg.style_names == ("one", "two") and cfg.crop_at(0) == 32 and cfg.crop_at(3) == 36
    summary = train(cfg)
    assert summary["iterations"] == 6 and summary["finished"] is True
    run = tmp_path / "runs" / "net"
    rows = [json.loads(line) for line in (run / "losses.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert "pixel" in rows[0] and {"content", "style", "tv", "grad_norm"} <= set(rows[-1])
    assert all(np.isfinite(r["total"]) for r in rows)
    assert (run / "preview_000003.png").exists()
    model, meta = load_transformer(tmp_path / "net.safetensors")
    assert model.config.num_styles == 2 and json.loads(meta["atelier.styles"]) == ["one", "two"]
    assert json.loads(meta["atelier.train"])["iterations"] == 6

    # Resume: a run stopped after 4 iterations and continued to 6 matches the uninterrupted run.
    other = tmp_path / "split"
    other.mkdir()
    first, _ = parse_args(_tiny_args(other, photos, paintings, "--stop-after", "4"))
    assert train(first)["iterations"] == 4
    resumed, resume = parse_args(_tiny_args(other, photos, paintings, "--resume"))
    assert resume and resumed.iterations == 4 and resumed.warmup_iterations == 2
    assert resumed.stop_after == 0  # the first process's limit is not the recipe's
    summary = train(resumed, newest_checkpoint(resumed))
    assert summary["iterations"] == 6
    rows_split = [
        json.loads(line) for line in (other / "runs" / "net" / "losses.jsonl").read_text().splitlines()
    ]
    assert [r["iter"] for r in rows_split] == [1, 2, 3, 4, 5, 6]
    for a, b in zip(rows, rows_split, strict=True):
        assert a["total"] == pytest.approx(b["total"], rel=1e-5), (a, b)


def test_content_only_training_keeps_finite_parameters(tmp_path: Path) -> None:
    """A zero style weight once turned every parameter NaN in bf16 (the GEMM alpha=0 bug)."""
    photos, paintings = _tiny_data(tmp_path)
    args = _tiny_args(tmp_path, photos, paintings, "--style-weight", "0", "--tv-weight", "0")
    args[args.index("--precision") + 1] = "auto"  # bf16 where the CPU has it natively
    cfg, _ = parse_args(args)
    train(cfg)
    model, _ = load_transformer(tmp_path / "net.safetensors")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_training_stops_with_the_iteration_and_term_when_numbers_go_non_finite(tmp_path: Path) -> None:
    photos, paintings = _tiny_data(tmp_path)
    cfg, _ = parse_args(_tiny_args(tmp_path, photos, paintings, "--lr", "1e20"))
    with pytest.raises(NonFiniteError, match=r"iteration \d+: non-finite"):
        train(cfg)


# --- the committed networks -----------------------------------------------------------------------


MANIFEST = style_manifest.read_manifest(WEIGHTS_DIR)


def _manifest() -> style_manifest.Manifest:
    if MANIFEST is None:
        pytest.skip("no style network committed yet")
    return MANIFEST


def test_manifest_ships_public_domain_styles_of_one_verified_network() -> None:
    manifest = _manifest()
    loaded = style_manifest.load_network(WEIGHTS_DIR)
    assert style_manifest.verify(manifest, WEIGHTS_DIR).suffix == ".safetensors"
    for entry in manifest.styles:
        assert entry.status in style_manifest.STATUSES
        title, artist, year, rights = style_manifest.PAINTINGS[entry.name]
        assert (entry.title, entry.artist, entry.year, entry.copyright) == (title, artist, year, rights)
        assert "public domain" in entry.copyright
        assert 0 <= loaded.rows[entry.name] < loaded.model.config.num_styles
        thumb = Image.open(style_manifest.styles_dir(WEIGHTS_DIR) / entry.thumbnail)
        assert max(thumb.size) <= style_manifest.THUMBNAIL_SIDE


def test_checksum_mismatch_is_refused(tmp_path: Path) -> None:
    manifest = _manifest()
    shutil.copytree(WEIGHTS_DIR / "styles", tmp_path / "styles")
    path = tmp_path / "styles" / manifest.network.file
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    with pytest.raises(style_manifest.ManifestError, match="sha256"):
        style_manifest.load_network(tmp_path)


def test_blend_weights_are_normalized_rows_of_the_network() -> None:
    _manifest()
    loaded = style_manifest.load_network(WEIGHTS_DIR)
    a, b = loaded.names[:2]
    w = loaded.style_weights([a, b], [3.0, 1.0])
    assert w.shape == (1, loaded.model.config.num_styles) and float(w.sum()) == pytest.approx(1.0)
    assert float(w[0, loaded.rows[a]]) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        loaded.style_weights([a, b], [0.0, 0.0])


def _style_distance(vgg, x: torch.Tensor, grams: dict[str, torch.Tensor]) -> float:
    with torch.inference_mode():
        return float(style_loss(vgg(caffe_preprocess(x), STYLE_LAYERS), grams))


PRODUCTION = [e for e in MANIFEST.styles if e.status == "production"] if MANIFEST else []


@pytest.mark.skipif(not PRODUCTION, reason="no style has passed the quality bar yet (all experimental)")
@pytest.mark.parametrize("entry", PRODUCTION, ids=lambda e: e.name)
def test_production_styles_move_a_photo_far_towards_their_painting(entry: style_manifest.StyleEntry) -> None:
    """At 128 px: a production style at least halves the Gram distance to its painting."""
    painting_path = DATA_DIR / "styles" / f"{entry.name}.jpg"
    if not painting_path.exists():
        pytest.skip(f"painting {painting_path} not available")
    loaded = style_manifest.load_network(WEIGHTS_DIR)
    vgg = load_vgg19("relu4_1")
    painting = pil_to_tensor(resize_longest(Image.open(painting_path).convert("RGB"), 256))
    with torch.inference_mode():
        grams = {k: gram_matrix(v) for k, v in vgg(caffe_preprocess(painting), STYLE_LAYERS).items()}
    photo = pil_to_tensor(photo_like(128, 96))
    with torch.inference_mode():
        out = stylize(loaded.model, photo, loaded.style_weights([entry.name]))
    assert out.shape == photo.shape
    before, after = _style_distance(vgg, photo, grams), _style_distance(vgg, out, grams)
    assert after < 0.5 * before, (before, after)


def test_gatys_equivalent_steps_counts_updates_until_gatys_beats_the_network() -> None:
    from models.style_objective import StyleObjective
    from models.training.eval_style import gatys_equivalent_steps, gatys_options

    vgg = load_vgg19("relu4_1")
    options = gatys_options(StyleObjective(style_size=48), 48, max_steps=4)
    photo, painting = photo_like(48, 40), photo_like(48, 48, seed=5).rotate(90)
    steps, curve = gatys_equivalent_steps(vgg, photo, painting, options, target=float("inf"))
    assert steps == 0 and len(curve) == 1  # the photo itself already beats an infinite loss
    steps, curve = gatys_equivalent_steps(vgg, photo, painting, options, target=-1.0)
    assert steps is None and len(curve) == 4 and curve[-1] < curve[0]  # never crossed; loss fell
    middle = (curve[0] + curve[-1]) / 2
    steps, _ = gatys_equivalent_steps(vgg, photo, painting, options, target=middle)
    assert steps == next(i for i, v in enumerate(curve) if v < middle)


def test_evaluation_of_a_tiny_network_reports_every_style(tmp_path: Path) -> None:
    from models.style_objective import StyleObjective
    from models.training.eval_style import contact_sheet, evaluate, markdown_table, status_of

    photos, paintings = _tiny_data(tmp_path)
    net = build("fast", num_styles=2).eval().requires_grad_(False)
    vgg = load_vgg19("relu5_1")
    imgs = {f"s{i}": Image.open(p).convert("RGB") for i, p in enumerate(paintings)}
    some = sorted(photos.iterdir())[:2]
    results = evaluate(vgg, net, ["s0", "s1"], StyleObjective(style_size=48), imgs, some, 48, max_steps=3)
    assert set(results) == {"s0", "s1"}
    for r in results.values():
        assert len(r["rows"]) == 2 and r["median_job_style_ratio"] > 0
        assert 0 < r["median_droplet_spike_share"] <= 1
        assert status_of(r, looked_at=True) in ("production", "experimental")
        assert status_of(r, looked_at=False) == "experimental"
    table = markdown_table(results, {"s0": "experimental", "s1": "experimental"}).splitlines()
    assert len(table) == 4 and all(line.count("|") == 8 for line in table)
    contact_sheet(net, ["s0", "s1"], some, 48, tmp_path / "sheet.jpg")
    contact_sheet(net, ["s0", "s1"], some, 48, tmp_path / "private.jpg", with_photos=True)
    committable, private = Image.open(tmp_path / "sheet.jpg"), Image.open(tmp_path / "private.jpg")
    cell_w = private.size[0] // 3
    assert committable.size == (2 * cell_w, private.size[1])  # no column of research-only photos
    photo = np.asarray(Image.open(some[0]).convert("RGB").resize((cell_w, cell_w)), dtype=float)

    def cell(sheet: Image.Image, column: int) -> np.ndarray:
        return np.asarray(sheet.crop((column * cell_w, 0, (column + 1) * cell_w, cell_w)), dtype=float)

    assert np.abs(cell(private, 1) - cell(committable, 0)).mean() < 3  # the styles, shifted by one
    assert np.abs(cell(private, 0) - photo).mean() < np.abs(cell(committable, 0) - photo).mean()


def test_a_subset_of_styles_paints_like_the_full_network() -> None:
    """Evaluating some styles of a network keeps every per-style tensor (norm rows and colour skip)."""
    from models.training.eval_style import subset_of_styles

    torch.manual_seed(0)
    net = build("medium", num_styles=3).eval().requires_grad_(False)
    with torch.no_grad():
        for module in net.coded:  # make the styles differ, colour skip included
            module.weight.add_(0.1 * torch.randn_like(module.weight))
            module.bias.add_(0.1 * torch.randn_like(module.bias))
    sub = subset_of_styles(net, ["a", "b", "c"], ["c", "a"])
    x = torch.rand(1, 3, 32, 32)
    for sub_index, full_index in ((0, 2), (1, 0)):
        got = stylize(sub, x, one_hot_styles([sub_index], 2))
        torch.testing.assert_close(got, stylize(net, x, one_hot_styles([full_index], 3)))


def test_the_any_painting_model_is_evaluated_like_the_network(tmp_path: Path) -> None:
    """``--model arbitrary``: the same figures for Ghiasi et al.'s model, on the same paintings."""
    from models.arbitrary import ArbitraryStyleModel
    from models.style_objective import StyleObjective
    from models.training.eval_style import arbitrary_painter, evaluate

    photos, paintings = _tiny_data(tmp_path)
    imgs = {f"s{i}": Image.open(p).convert("RGB") for i, p in enumerate(paintings)}
    paint = arbitrary_painter(ArbitraryStyleModel.load(), imgs)
    photo = pil_to_tensor(Image.open(sorted(photos.iterdir())[0]).convert("RGB"))
    out = paint("s0", photo)
    assert out.shape == photo.shape and out.min() >= 0.0 and out.max() <= 1.0
    assert (out - paint("s1", photo)).abs().mean() > 0.01  # the painting matters
    some = sorted(photos.iterdir())[:2]
    vgg = load_vgg19("relu5_1")
    results = evaluate(vgg, paint, ["s0", "s1"], StyleObjective(style_size=48), imgs, some, 48, max_steps=3)
    assert {len(r["rows"]) for r in results.values()} == {2}
    assert all(row["job_style_ratio"] > 0 for r in results.values() for row in r["rows"])


def test_only_held_out_photos_and_gatys_from_the_photo_can_make_a_style_production() -> None:
    from models.style_objective import StyleObjective
    from models.training.eval_style import gatys_options, status_of

    meets = {"median_gatys_equivalent_steps": 60, "median_job_style_ratio": 0.1}
    assert status_of(meets, looked_at=True) == "production"
    assert status_of(meets, looked_at=True, gatys_init="noise") == "experimental"
    assert status_of(meets, looked_at=True, split="train") == "experimental"
    assert status_of({**meets, "median_gatys_equivalent_steps": 49}, looked_at=True) == "experimental"
    assert gatys_options(StyleObjective(), 64, 5, "noise").init == "noise"
    assert gatys_options(StyleObjective(), 64, 5).init == "content"
