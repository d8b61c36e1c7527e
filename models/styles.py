"""The style manifest: which style networks ship, what they are, and that their bytes are intact.

``models/weights/styles/manifest.json`` is the single source the API serves from: name, painting
metadata, file, sha256, arch and a ``status`` ("production" or "proof-of-pipeline") so a weak
network is never mistaken for a finished one. Loading verifies each file's sha256 first.

    python -m models.styles add --name starry_night --file starry_night.safetensors \\
        --title "The Starry Night" --artist "Vincent van Gogh" --year 1889 --status proof-of-pipeline
    python -m models.styles verify
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from models.transformer import TransformerNet, load_transformer, read_metadata

STYLES_SUBDIR = "styles"
MANIFEST_NAME = "manifest.json"
STATUSES = ("production", "proof-of-pipeline")
DEFAULT_WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"


class ManifestError(ValueError):
    """The manifest is malformed or a weights file does not match it."""


@dataclass(frozen=True)
class StyleEntry:
    name: str
    title: str
    artist: str
    year: str
    file: str
    sha256: str
    arch: str
    status: str

    @property
    def version(self) -> str:
        """Short content hash: changes whenever the weights do."""
        return self.sha256[:12]

    def public(self) -> dict[str, str]:
        """What GET /styles shows (no file paths)."""
        return {k: v for k, v in asdict(self).items() if k not in ("file", "sha256")} | {
            "version": self.version
        }


@dataclass
class LoadedStyle:
    entry: StyleEntry
    model: TransformerNet
    metadata: dict[str, str]


def styles_dir(weights_dir: Path) -> Path:
    return Path(weights_dir) / STYLES_SUBDIR


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(weights_dir: Path) -> list[StyleEntry]:
    """Entries of the manifest ([] when there is none), validated for shape and unique names."""
    path = styles_dir(weights_dir) / MANIFEST_NAME
    if not path.exists():
        return []
    raw = json.loads(path.read_text())
    entries: list[StyleEntry] = []
    for item in raw.get("styles", []):
        try:
            entry = StyleEntry(**{k: str(item[k]) for k in StyleEntry.__dataclass_fields__})
        except KeyError as exc:
            raise ManifestError(f"{path}: style entry {item.get('name', '?')!r} lacks {exc}") from None
        if entry.status not in STATUSES:
            raise ManifestError(
                f"{path}: style {entry.name!r} has status {entry.status!r}; expected {STATUSES}"
            )
        entries.append(entry)
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ManifestError(f"{path}: duplicate style names in {names}")
    return entries


def write_manifest(weights_dir: Path, entries: Sequence[StyleEntry]) -> Path:
    path = styles_dir(weights_dir) / MANIFEST_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"styles": [asdict(e) for e in sorted(entries, key=lambda e: e.name)]}
    path.write_text(json.dumps(body, indent=2) + "\n")
    return path


def verify(entry: StyleEntry, weights_dir: Path) -> Path:
    """The entry's file path, after checking it exists and its sha256 matches the manifest."""
    path = styles_dir(weights_dir) / entry.file
    if not path.is_file():
        raise ManifestError(f"style {entry.name!r}: weights file {path} is missing")
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise ManifestError(f"style {entry.name!r}: {path} has sha256 {actual}, manifest says {entry.sha256}")
    return path


def load_style(entry: StyleEntry, weights_dir: Path, device: torch.device | str = "cpu") -> LoadedStyle:
    """Verify, then load one network; the file's own arch metadata must agree with the manifest."""
    path = verify(entry, weights_dir)
    model, metadata = load_transformer(path, device)
    file_arch = metadata.get("atelier.arch_name", "custom")
    if file_arch != entry.arch:
        raise ManifestError(
            f"style {entry.name!r}: manifest says arch {entry.arch!r}, the file says {file_arch!r}"
        )
    return LoadedStyle(entry, model, metadata)


def load_all(
    weights_dir: Path, device: torch.device | str = "cpu"
) -> tuple[dict[str, LoadedStyle], dict[str, str]]:
    """Load every manifest style that verifies; errors are returned per style, not raised.

    One corrupt file must not take the other styles (or the app) down with it.
    """
    loaded: dict[str, LoadedStyle] = {}
    errors: dict[str, str] = {}
    try:
        entries = read_manifest(weights_dir)
    except (ManifestError, json.JSONDecodeError) as exc:
        return {}, {"manifest": str(exc)}
    for entry in entries:
        try:
            loaded[entry.name] = load_style(entry, weights_dir, device)
        except Exception as exc:  # a broken file is reported, never fatal
            errors[entry.name] = str(exc)
    return loaded, errors


def _add(args: argparse.Namespace) -> None:
    weights_dir = Path(args.weights_dir)
    path = styles_dir(weights_dir) / args.file
    arch = read_metadata(path).get("atelier.arch_name", "custom")
    entry = StyleEntry(
        args.name, args.title, args.artist, args.year, args.file, sha256_file(path), arch, args.status
    )
    entries = [e for e in read_manifest(weights_dir) if e.name != args.name] + [entry]
    print(f"wrote {write_manifest(weights_dir, entries)}: {entry}")


def _verify(args: argparse.Namespace) -> None:
    loaded, errors = load_all(Path(args.weights_dir))
    for name in loaded:
        print(f"ok      {name}")
    for name, err in errors.items():
        print(f"FAILED  {name}: {err}")
    if errors:
        raise SystemExit(1)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Manage models/weights/styles/manifest.json.")
    p.add_argument("--weights-dir", default=str(DEFAULT_WEIGHTS_DIR))
    sub = p.add_subparsers(required=True)
    add = sub.add_parser("add", help="add or update a style (sha256 and arch read from the file)")
    for flag in ("name", "file", "title", "artist", "year"):
        add.add_argument("--" + flag, required=True)
    add.add_argument("--status", required=True, choices=STATUSES)
    add.set_defaults(func=_add)
    sub.add_parser("verify", help="check every file's sha256 and that it loads").set_defaults(func=_verify)
    args = p.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
