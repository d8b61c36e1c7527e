"""The style manifest: the one multi-style network that ships, its styles, and that its bytes are intact.

``models/weights/styles/manifest.json`` is the single source the API serves from::

    {"network": {"file": "multistyle.safetensors", "sha256": "...", "arch": "medium"},
     "styles": [{"name": "starry_night", "title": ..., "artist": ..., "year": ..., "copyright": ...,
                 "status": "production" | "experimental", "thumbnail": "thumbnails/starry_night.jpg",
                 "eval": {...}}, ...]}

A style's row in the network's conditional norms is found by name in the weights' own
``atelier.styles`` metadata, so the manifest may list a subset (styles below the bar can be left
out). Loading verifies the sha256 first. ``status`` keeps a weak style from passing for a finished
one: ``production`` only when it met the bar of :mod:`models.training.eval_style`.

    python -m models.styles publish --source runs/train_style/multistyle.safetensors --status experimental
    python -m models.styles verify
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from PIL import Image
from torch import Tensor

from models.photos import DATA_DIR
from models.transformer import TransformerNet, load_transformer, read_metadata

STYLES_SUBDIR = "styles"
MANIFEST_NAME = "manifest.json"
THUMBNAIL_SIDE = 256
STATUSES = ("production", "experimental")
DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

PD_WORLD = "public domain worldwide"
PD_US_70 = "public domain in the US and life+70 countries; not worldwide"

# Paintings that may ship, from ../shared/data/styles/SOURCES.md: (title, artist, year, copyright).
PAINTINGS: dict[str, tuple[str, str, str, str]] = {
    "starry_night": ("The Starry Night", "Vincent van Gogh", "1889", PD_WORLD),
    "great_wave": ("The Great Wave off Kanagawa", "Katsushika Hokusai", "c. 1831", PD_WORLD),
    "shipwreck_minotaur": ("The Shipwreck of the Minotaur", "J. M. W. Turner", "c. 1810", PD_WORLD),
    "night_cafe": ("The Night Café", "Vincent van Gogh", "1888", PD_WORLD),
    "wheat_field_cypresses": ("Wheat Field with Cypresses", "Vincent van Gogh", "1889", PD_WORLD),
    "vangogh_self_portrait_straw_hat": (
        "Self-Portrait with a Straw Hat",
        "Vincent van Gogh",
        "1887",
        PD_WORLD,
    ),
    "tahitian_women": ("Tahitian Women", "Paul Gauguin", "1890s", PD_WORLD),
    "water_lilies": ("Water Lilies", "Claude Monet", "1919", PD_US_70),
    "the_scream": ("The Scream", "Edvard Munch", "1893", PD_US_70),
    "composition_vii": ("Composition VII", "Wassily Kandinsky", "1913", PD_US_70),
    "udnie": ("Udnie", "Francis Picabia", "1913", PD_US_70),
    "edtaonisl": ("Edtaonisl (Ecclésiastique)", "Francis Picabia", "1913", PD_US_70),
    "woman_with_hat": ("Woman with a Hat", "Henri Matisse", "1905", PD_US_70),
}


class ManifestError(ValueError):
    """The manifest is malformed or the weights file does not match it."""


@dataclass(frozen=True)
class StyleEntry:
    name: str
    title: str
    artist: str
    year: str
    copyright: str
    status: str
    thumbnail: str = ""
    eval: dict[str, object] = field(default_factory=dict)

    def public(self, version: str) -> dict[str, object]:
        """What GET /styles shows (no file paths)."""
        body: dict[str, object] = {k: v for k, v in asdict(self).items() if k != "thumbnail"}
        return body | {"version": version, "has_thumbnail": bool(self.thumbnail)}


@dataclass(frozen=True)
class NetworkEntry:
    file: str
    sha256: str
    arch: str

    @property
    def version(self) -> str:
        """Short content hash: changes whenever the weights do."""
        return self.sha256[:12]


@dataclass(frozen=True)
class Manifest:
    network: NetworkEntry
    styles: tuple[StyleEntry, ...]

    def entry(self, name: str) -> StyleEntry:
        return next(s for s in self.styles if s.name == name)


@dataclass
class LoadedNetwork:
    """The verified network plus the row of each served style in its conditional norms."""

    manifest: Manifest
    model: TransformerNet
    metadata: dict[str, str]
    rows: dict[str, int]

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.manifest.styles]

    def style_weights(self, names: Sequence[str], weights: Sequence[float] | None = None) -> Tensor:
        """1×S mixing weights for one style or a blend (weights are normalized to sum 1)."""
        weights = list(weights) if weights is not None else [1.0] * len(names)
        if len(weights) != len(names) or not names:
            raise ValueError("one weight per style is needed")
        total = sum(weights)
        if total <= 0 or any(w < 0 for w in weights):
            raise ValueError("style weights must be non-negative with a positive sum")
        out = torch.zeros(1, self.model.config.num_styles)
        for name, w in zip(names, weights, strict=True):
            out[0, self.rows[name]] += w / total
        return out


def styles_dir(weights_dir: Path) -> Path:
    return Path(weights_dir) / STYLES_SUBDIR


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(weights_dir: Path) -> Manifest | None:
    """The manifest (None when there is none), validated for shape, statuses and unique names."""
    path = styles_dir(weights_dir) / MANIFEST_NAME
    if not path.exists():
        return None
    raw = json.loads(path.read_text())
    try:
        network = NetworkEntry(**{k: str(raw["network"][k]) for k in ("file", "sha256", "arch")})
        styles = tuple(
            StyleEntry(**{k: item[k] for k in StyleEntry.__dataclass_fields__ if k in item})
            for item in raw["styles"]
        )
    except (KeyError, TypeError) as exc:
        raise ManifestError(f"{path}: malformed manifest ({exc})") from None
    bad = [s.name for s in styles if s.status not in STATUSES]
    if bad:
        raise ManifestError(f"{path}: styles {bad} have a status other than {STATUSES}")
    names = [s.name for s in styles]
    if len(set(names)) != len(names):
        raise ManifestError(f"{path}: duplicate style names in {names}")
    return Manifest(network, styles)


def write_manifest(weights_dir: Path, manifest: Manifest) -> Path:
    path = styles_dir(weights_dir) / MANIFEST_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"network": asdict(manifest.network), "styles": [asdict(s) for s in manifest.styles]}
    path.write_text(json.dumps(body, indent=2, ensure_ascii=False) + "\n")
    return path


def verify(manifest: Manifest, weights_dir: Path) -> Path:
    """The network file's path, after checking it exists and its sha256 matches the manifest."""
    path = styles_dir(weights_dir) / manifest.network.file
    if not path.is_file():
        raise ManifestError(f"weights file {path} is missing")
    actual = sha256_file(path)
    if actual != manifest.network.sha256:
        raise ManifestError(f"{path} has sha256 {actual}, the manifest says {manifest.network.sha256}")
    return path


def load_network(weights_dir: Path, device: torch.device | str = "cpu") -> LoadedNetwork:
    """Verify, then load the network; every manifest style must be a row of it."""
    manifest = read_manifest(weights_dir)
    if manifest is None:
        raise ManifestError(f"no {MANIFEST_NAME} under {styles_dir(weights_dir)}")
    model, metadata = load_transformer(verify(manifest, weights_dir), device)
    file_arch = metadata.get("atelier.arch_name", "custom")
    if file_arch != manifest.network.arch:
        raise ManifestError(f"the manifest says arch {manifest.network.arch!r}, the file says {file_arch!r}")
    trained = json.loads(metadata.get("atelier.styles", "[]"))
    missing = [s.name for s in manifest.styles if s.name not in trained]
    if missing:
        raise ManifestError(f"styles {missing} are not in the network (it has {trained})")
    return LoadedNetwork(manifest, model, metadata, {name: trained.index(name) for name in trained})


def thumbnail(painting: Image.Image, side: int = THUMBNAIL_SIDE) -> Image.Image:
    """At most ``side`` px on the longer side (public-domain paintings only are committed)."""
    img = painting.convert("RGB")
    img.thumbnail((side, side), Image.Resampling.LANCZOS)
    return img


def publish(
    weights_dir: Path,
    network_file: str,
    paintings_dir: Path,
    statuses: Mapping[str, str],
    evals: Mapping[str, dict[str, object]] | None = None,
) -> Manifest:
    """Write the manifest (and thumbnails) for every style of ``network_file`` that has a status."""
    path = styles_dir(weights_dir) / network_file
    meta = read_metadata(path)
    names = [n for n in json.loads(meta["atelier.styles"]) if n in statuses]
    unknown = [n for n in names if n not in PAINTINGS]
    if unknown:
        raise ManifestError(f"no title/artist/copyright on record for {unknown}: add them to PAINTINGS")
    entries = []
    for name in names:
        thumb = f"thumbnails/{name}.jpg"
        source = paintings_dir / f"{name}.jpg"
        if source.is_file():
            (styles_dir(weights_dir) / "thumbnails").mkdir(parents=True, exist_ok=True)
            thumbnail(Image.open(source)).save(styles_dir(weights_dir) / thumb, quality=85)
        elif not (styles_dir(weights_dir) / thumb).is_file():
            thumb = ""
        title, artist, year, rights = PAINTINGS[name]
        entries.append(
            StyleEntry(
                name, title, artist, year, rights, statuses[name], thumb, dict((evals or {}).get(name, {}))
            )
        )
    manifest = Manifest(
        NetworkEntry(network_file, sha256_file(path), meta["atelier.arch_name"]), tuple(entries)
    )
    write_manifest(weights_dir, manifest)
    return manifest


def _publish(args: argparse.Namespace) -> None:
    weights_dir = Path(args.weights_dir)
    if Path(args.network).name != args.network:  # the manifest names its network relative to its own dir
        raise SystemExit(
            f"--network {args.network!r} must be a file name inside {styles_dir(weights_dir)}; "
            "to publish into another directory, pass --weights-dir"
        )
    served = styles_dir(weights_dir) / args.network
    report = json.loads(Path(args.eval).read_text()) if args.eval else None
    evaluated = (report or {}).get("weights_sha256")
    incoming = Path(args.source) if args.source else served
    if evaluated and evaluated != sha256_file(incoming):  # checked before anything is replaced
        raise SystemExit(f"{args.eval} evaluated other weights ({evaluated[:12]}...) than {incoming}")
    if (report or {}).get("gatys_init", "content") != "content":
        raise SystemExit(f"{args.eval} started Gatys from noise: a diagnostic, not the quality bar")
    if (report or {}).get("split", "held-out") != "held-out":
        raise SystemExit(f"{args.eval} judged training photos: a diagnostic, not the quality bar")
    if args.source:  # a training candidate becomes the served network, with its manifest, in one step
        styles_dir(weights_dir).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.source, served)
    names = json.loads(read_metadata(served)["atelier.styles"])
    statuses = dict.fromkeys(names, args.status)
    evals: dict[str, dict[str, object]] = {}
    if report is not None:
        statuses = {
            n: s for n, s in report["statuses"].items() if args.include_experimental or s == "production"
        }
        for name, r in report["styles"].items():
            evals[name] = {
                "gatys_equivalent_steps": r["median_gatys_equivalent_steps"],
                "job_style_ratio": round(r["median_job_style_ratio"], 4),
            }
    manifest = publish(weights_dir, args.network, Path(args.paintings), statuses, evals)
    print(f"wrote the manifest: {len(manifest.styles)} styles of {manifest.network.file}")


def _verify(args: argparse.Namespace) -> None:
    loaded = load_network(Path(args.weights_dir))
    for entry in loaded.manifest.styles:
        print(f"ok  {entry.name:34s} row {loaded.rows[entry.name]:2d}  {entry.status}")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Manage models/weights/styles/manifest.json.")
    p.add_argument("--weights-dir", default=str(DEFAULT_WEIGHTS_DIR))
    sub = p.add_subparsers(required=True)
    pub = sub.add_parser("publish", help="manifest + thumbnails for the network's styles")
    pub.add_argument(
        "--network", default="multistyle.safetensors", help="file name inside <weights-dir>/styles"
    )
    pub.add_argument(
        "--source", default="", help="copy this network file in first (e.g. a training checkpoint)"
    )
    pub.add_argument("--paintings", default=str(DATA_DIR / "styles"))
    pub.add_argument("--status", choices=STATUSES, default="experimental", help="for every style (no --eval)")
    pub.add_argument("--eval", default="", help="eval_style JSON: statuses and figures from it")
    pub.add_argument("--include-experimental", action="store_true", help="with --eval: ship those too")
    pub.set_defaults(func=_publish)
    sub.add_parser("verify", help="check the sha256 and that every style is in the network").set_defaults(
        func=_verify
    )
    args = p.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
