"""Export a :class:`~ferlab.classifier.Classifier` to ONNX or safetensors; load safetensors back.

ONNX graphs take raw pixels (normalisation is in the graph) and describe themselves in
``metadata_props``; :mod:`ferlab.onnx_model` runs them. Safetensors exports are weights plus
a JSON file saying how to rebuild the network: the form in which ferlab ships its default.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging
import tempfile
import warnings
from pathlib import Path, PurePath

import numpy as np
import torch
from torch import nn

from .checkpoint import build_model
from .classifier import REQUIRED, TRAINING_KEYS, Classifier, check_faces, own_tta
from .data import atomic_write_bytes
from .onnx_model import OnnxClassifier
from .transforms import check_preprocess, fit_input, scale

log = logging.getLogger(__name__)

INPUT = "raw 0..255 float32 (N,1,48,48)"


class _Pixels(nn.Module):
    """Raw 0..255 pixels in; logits and probabilities out. Mirrors transforms.to_input."""

    def __init__(self, model: nn.Module, spec: dict):
        super().__init__()
        self.model = model
        self.spec = dict(spec)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(fit_input(scale(x / 255, self.spec), self.spec)).float()
        return logits, torch.softmax(logits, 1)


def check_exportable(classifier: object, where: str = "model") -> Classifier:
    """``classifier`` if it holds a PyTorch network; exports need its weights, which an ONNX
    file or an ensemble manifest does not carry in that form."""
    if not isinstance(classifier, Classifier):
        raise ValueError(
            f"{where}: exports need a PyTorch model (checkpoint, run dir or safetensors "
            f"export), not {type(classifier).__name__}"
        )
    return classifier


def _describe(classifier: Classifier) -> dict:
    """What an export records besides the weights."""
    from . import __version__  # lazy: the package __init__ may import this module

    meta = classifier.meta
    info = {
        "model_name": classifier.name,
        "model_kwargs": {},
        "classes": list(classifier.classes),
        "preprocess": dict(classifier.preprocess),
        "ferlab_version": __version__,
    }
    info.update({k: meta[k] for k in TRAINING_KEYS if k in meta})
    if classifier.tta != "none":  # the views it averages unless told otherwise
        info["tta"] = classifier.tta
    # load_model keeps the config, whose model_kwargs are the checkpoint's
    if "model_kwargs" not in meta and "model_kwargs" in meta.get("config", {}):
        info["model_kwargs"] = meta["config"]["model_kwargs"]
    return info


def _json(value: object, where: str, **kw) -> str:
    """``value`` as JSON, or one line naming ``where``: str() of any unknown type would write
    a string that loads without complaint and fails at the first prediction."""
    try:
        return json.dumps(value, default=_plain, **kw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: cannot be written as JSON ({e})") from None


def _plain(value: object) -> object:
    """What JSON cannot hold but a user's --info YAML (dates), NumPy or torch (scalars, a
    standardize mean, say) or the Python API (a path to the training data) gives."""
    if isinstance(value, datetime.date):  # datetime too
        return value.isoformat()
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, np.generic) or (isinstance(value, torch.Tensor) and value.numel() == 1):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON")


def export_onnx(
    classifier: Classifier,
    path: str | Path,
    opset: int = 17,
    check: bool = True,
    faces: np.ndarray | None = None,
) -> Path:
    """Write ``classifier`` as ONNX: input ``faces`` (N, 1, 48, 48) raw pixels, outputs
    ``logits`` and ``probs`` (N, 7). With ``check``, ONNX Runtime must match
    ``classifier.predict_proba`` on ``faces`` (default: random) within 1e-4.
    """
    import onnx

    _onnx_name(path)
    check_exportable(classifier)
    wrapper = _Pixels(classifier.model.eval(), classifier.preprocess).eval()
    # batch 2, not 1, so the tracer cannot specialise any shape to a single face
    dummy = torch.zeros(2, 1, 48, 48, device=classifier.device)
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter: torch's default (dynamo) one needs onnxscript, an extra
        # dependency, and gains nothing for plain CNNs. Its deprecation notice is just noise.
        warnings.simplefilter("ignore", DeprecationWarning)
        # Shape tests such as vgg's `x.shape[1] == 1` become constants: right, as channels are
        # fixed at 1, and the parity check below runs another batch size than this trace.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            wrapper,
            (dummy,),
            f"{tmp}/model.onnx",
            input_names=["faces"],
            output_names=["logits", "probs"],
            dynamic_axes={name: {0: "batch"} for name in ("faces", "logits", "probs")},
            opset_version=opset,
            dynamo=False,
        )
        proto = onnx.load(f"{tmp}/model.onnx")
    info = _describe(classifier)
    info["preprocess"]["input"] = INPUT  # a note for readers: the graph applies it already
    props = {
        k: v if isinstance(v, str) else _json(v, f"{path}: metadata {k}") for k, v in info.items()
    }
    props["input_size"] = str(classifier.preprocess.get("size", 48))
    onnx.helper.set_model_props(proto, props)
    onnx.checker.check_model(proto)
    data = proto.SerializeToString()
    if check:  # before writing, so a bad export never replaces a good file
        if faces is None:
            faces = np.random.default_rng(0).integers(0, 256, (8, 48, 48), dtype=np.uint8)
        got = OnnxClassifier(data, threads=1).predict_proba(faces)
        diff = float(np.abs(got - classifier.predict_proba(faces)).max(initial=0.0))
        if diff > 1e-4:
            raise RuntimeError(f"ONNX export disagrees with PyTorch: max abs diff {diff:.2e}")
        log.info("ONNX parity on %d faces: max abs diff %.2e", len(faces), diff)
    path = Path(path)
    atomic_write_bytes(path, data)
    return path


def calibration_reader(faces: np.ndarray, batch: int = 64):
    """ONNX Runtime calibration data: uint8 ``faces`` (N, 48, 48) in batches of ``batch``.

    The last batch may be smaller: min-max calibration takes it, the histogram calibrators
    (percentile, entropy) need equal batches, so give them a multiple of ``batch`` faces.
    """
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = (
                {"faces": faces[i : i + batch, None].astype(np.float32)}
                for i in range(0, len(faces), batch)
            )

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    return Reader()


def prepare_for_quantization(source: str | Path, path: str | Path) -> str:
    """ONNX Runtime's recommended first step (shape inference, graph optimisation) from
    ``source`` to ``path``, every node named; returns the first Conv's name.

    Quantisation excludes nodes by name: the empty name would exclude every unnamed node (a
    file without node names once came out with no int8 layer at all).
    """
    import onnx
    from onnxruntime.quantization.shape_inference import quant_pre_process

    quant_pre_process(str(source), str(path))
    model = onnx.load(str(path))
    if any(not n.name for n in model.graph.node):  # renamed all, so no name can clash
        for i, n in enumerate(model.graph.node):
            n.name = f"{n.op_type}_{i}"
        onnx.save(model, str(path))
    return next(n.name for n in model.graph.node if n.op_type == "Conv")


def quantize_onnx(source: str | Path, path: str | Path, faces: np.ndarray) -> Path:
    """Static int8 quantisation of an exported ``.onnx`` (QDQ, per-channel 7-bit weights).

    ``faces``: uint8 (N, 48, 48) calibration faces from the *training* split (a few hundred
    suffice): activation ranges come from them. The first convolution stays float. The
    metadata is carried over, less the float model's metrics; the result is checked to agree
    with the float model on the top class of the calibration faces.
    """
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    _onnx_name(path)
    if Path(path).resolve() == Path(source).resolve():
        raise ValueError(
            f"{path}: the int8 file would replace its float source; write it elsewhere"
        )
    faces = check_faces(faces)

    float_model = onnx.load(str(source))
    with tempfile.TemporaryDirectory() as tmp:
        first_conv = prepare_for_quantization(source, f"{tmp}/pre.onnx")
        quantize_static(
            f"{tmp}/pre.onnx",
            f"{tmp}/int8.onnx",
            calibration_reader(faces),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            # On x86 without VNNI (AVX2, as here) the u8 x s8 kernel (VPMADDUBSW) adds pairs
            # of products in 16 bits and saturates with 8-bit weights: the `fast` model lost
            # 3 points of PublicTest that way. 7-bit weights cannot overflow, on any CPU.
            reduce_range=True,
            # The input convolution sees one channel: a sliver of the compute, and every later
            # layer inherits its error (as int8 it changed the top class of 1.2% of PublicTest
            # faces for the `fast` model). It stays float.
            nodes_to_exclude=[first_conv],
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
        )
        proto = onnx.load(f"{tmp}/int8.onnx")
    props = {p.key: p.value for p in float_model.metadata_props}
    props.pop("metrics", None)  # the float model's accuracy, not this file's
    props["quantization"] = "int8 static (QDQ, per-channel 7-bit weights; first conv float)"
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, props)
    data = proto.SerializeToString()
    agree = float(
        (
            OnnxClassifier(data, threads=1).predict(faces, tta="none")
            == OnnxClassifier(str(source), threads=1).predict(faces, tta="none")
        ).mean()
    )
    if agree < 0.9:
        raise RuntimeError(f"int8 model agrees with the float one on only {agree:.1%} of faces")
    log.info(
        "int8: same top class as float on %.1f%% of %d calibration faces", 100 * agree, len(faces)
    )
    path = Path(path)
    atomic_write_bytes(path, data)
    return path


def export_int8(
    classifier: Classifier | OnnxClassifier, path: str | Path, data: str, n: int = 512
) -> Path:
    """int8 ONNX, calibrated on ``n`` stratified *training* faces of ``data`` (of the split the
    model was trained with, as ``evaluate`` chooses it): a PyTorch model is exported first; a
    float ``.onnx`` file is taken as it is."""
    from .data import stratified_subset
    from .evaluate import load_split, split_for

    _onnx_name(path)  # before minutes of export and calibration
    with tempfile.TemporaryDirectory() as tmp:
        source = _float_onnx(classifier, tmp)  # what it refuses, it refuses before the data
        train = load_split(data, "Training", *split_for(classifier, data))
        faces = stratified_subset(train, min(1.0, n / len(train)), seed=0).images
        return quantize_onnx(source, path, faces)


def _float_onnx(classifier: Classifier | OnnxClassifier, tmp: str) -> Path:
    """The float ONNX file to quantise: an ONNX model's own file, or a PyTorch model exported."""
    if not isinstance(classifier, OnnxClassifier):
        return export_onnx(check_exportable(classifier), Path(tmp) / "float.onnx")
    if "quantization" in classifier.meta:
        where = classifier.path or "<bytes>"
        raise ValueError(f"{where}: already quantised ({classifier.meta['quantization']})")
    if classifier.path is None:
        raise ValueError("<bytes>: an ONNX model quantises from its file; save it first")
    return classifier.path


def _onnx_name(path: str | Path) -> None:
    """load_model() reads a file as ONNX by its name: any other would be read as a checkpoint."""
    if Path(path).suffix != ".onnx":
        raise ValueError(f"{path}: an ONNX export must be named *.onnx")


def _stem(path: str | Path) -> Path:
    path = Path(path)
    return path.with_suffix("") if path.suffix in (".safetensors", ".json") else path


def export_safetensors(
    classifier: Classifier, path: str | Path, fp16: bool = True, extra: dict | None = None
) -> tuple[Path, Path]:
    """Write ``<stem>.safetensors`` (weights) and ``<stem>.json`` (how to rebuild them).

    ``path`` is a stem such as ``weights/default``, or an existing directory (the files are
    then named after the model). ``extra`` adds keys to the JSON, e.g. the training command.
    """
    from safetensors.torch import save

    check_exportable(classifier)
    stem = Path(path) / classifier.name if Path(path).is_dir() else _stem(path)
    info = {**_describe(classifier), "dtype": "float16" if fp16 else "float32"}
    clash = sorted(set(extra or {}) & {*REQUIRED, "model_kwargs", "dtype", "sha256", "tta"})
    if clash:
        raise ValueError(f"extra must not set {', '.join(clash)}: the exporter writes them")
    info.update(extra or {})
    state = {}
    for key, value in classifier.model.state_dict().items():
        value = value.detach().cpu().contiguous()
        if fp16 and value.is_floating_point():
            half = value.half()
            # keep float32 where fp16 overflows, e.g. BN running_var on raw 0..255 input
            value = half if bool(torch.isfinite(half).all()) else value.float()
        state[key] = value
    # rebuild now, so a wrong model_kwargs fails here and not when the shipped file is loaded
    weights, meta = stem.with_name(stem.name + ".safetensors"), stem.with_name(stem.name + ".json")
    build_model(info, str(meta), state)
    blob = save(state, metadata={"format": "pt"})
    # two files cannot be replaced in one step: the hash lets the loader refuse a pair that a
    # kill between the two writes (or a copy from two exports) left mismatched
    info["sha256"] = hashlib.sha256(blob).hexdigest()
    text = _json(info, str(meta), indent=2) + "\n"  # before writing: a failure writes nothing
    atomic_write_bytes(weights, blob)
    atomic_write_bytes(meta, text.encode())
    return weights, meta


def load_safetensors_model(path: str | Path, device: str = "cpu") -> Classifier:
    """Load a ``.json``/``.safetensors`` pair written by :func:`export_safetensors`.

    ``path`` is either file or their common stem; weights come back as float32.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    stem = _stem(path)
    meta, weights = stem.with_name(stem.name + ".json"), stem.with_name(stem.name + ".safetensors")
    if not meta.is_file():
        raise FileNotFoundError(f"{meta}: not found")
    if not weights.is_file():  # a JSON that is neither an export nor a manifest, say
        raise FileNotFoundError(
            f"{weights}: not found (a ferlab export is a .json and a .safetensors file; "
            "an ensemble manifest has kind, members and tta)"
        )
    try:
        info = json.loads(meta.read_text())
    except ValueError as e:
        raise ValueError(f"{meta}: not a ferlab export ({e})") from None
    try:
        blob = weights.read_bytes()
        state = load(blob)
    except (ValueError, SafetensorError) as e:
        raise ValueError(f"{weights}: not a safetensors file ({e})") from None
    if not isinstance(info, dict):
        raise ValueError(f"{meta}: not a ferlab export (expected a JSON object)")
    missing = [k for k in REQUIRED if k not in info]
    if missing:
        raise ValueError(f"{meta}: not a ferlab export (lacks {', '.join(missing)})")
    check_preprocess(info["preprocess"], str(meta))
    digest = hashlib.sha256(blob).hexdigest()
    if info.get("sha256", digest) != digest:  # exports before the hash was written have none
        raise ValueError(
            f"{weights}: not the weights {meta.name} describes (sha256 differs); export again"
        )
    return Classifier(
        build_model(info, str(meta), state),
        info["preprocess"],
        tuple(info["classes"]),
        name=info["model_name"],
        meta={k: v for k, v in info.items() if k not in (*REQUIRED, "tta")},
        device=device,
        tta=own_tta(info.get("tta", "none"), str(meta)),
    )
