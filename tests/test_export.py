"""ONNX and safetensors exports agree with PyTorch on real FER-2013 faces."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import REAL_CSV, save_image, synthetic_rows
from ferlab import EMOTIONS, Classifier
from ferlab.checkpoint import save_checkpoint
from ferlab.classifier import load_model
from ferlab.data import load_fer2013_csv
from ferlab.evaluate import predict_logits
from ferlab.export import export_onnx, export_safetensors, load_safetensors_model
from ferlab.models import create_model
from ferlab.onnx_model import OnnxClassifier, load_onnx
from ferlab.transforms import SHIFTS, preprocess_spec

SMALL = {"widths": [8, 16, 16, 16]}


@pytest.fixture(scope="module")
def faces() -> np.ndarray:
    """300 real faces drawn across the whole of FER-2013."""
    if not REAL_CSV.is_file():
        pytest.skip(f"{REAL_CSV} not found")
    data = load_fer2013_csv(REAL_CSV)  # parsed once, then a cached .npz
    return data.images[np.random.default_rng(0).choice(len(data), 300, replace=False)]


@pytest.fixture
def ort():
    return pytest.importorskip("onnxruntime")


def make_classifier(
    faces: np.ndarray, normalize: str = "minmax", name: str = "vggnet_s", seed: int = 0, **kw
) -> Classifier:
    """Random weights that behave like trained ones: BN statistics are not the identity, and
    logits spread by about 2 on ``faces``, so probabilities are neither uniform nor one-hot."""
    torch.manual_seed(seed)
    kw = kw or dict(SMALL)
    model = create_model(name, **kw)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    spec = preprocess_spec(normalize, torch.from_numpy(faces))
    head = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    logits = predict_logits(model, torch.from_numpy(faces[:64]), spec)
    with torch.no_grad():
        head.weight.mul_(2 / float(logits.std()))
    meta = {"model_kwargs": kw, "metrics": {"val_acc": 0.5}}
    return Classifier(model, spec, EMOTIONS, name=name, meta=meta)


def save_small_checkpoint(path: Path, model: nn.Module, **extra) -> None:
    """A training checkpoint of a ``SMALL`` vggnet_s, as ``ferlab train`` writes one."""
    ckpt = {
        "model_name": "vggnet_s",
        "model_kwargs": SMALL,
        "classes": list(EMOTIONS),
        "preprocess": preprocess_spec("minmax"),
        "model": model.state_dict(),
        **extra,
    }
    save_checkpoint(ckpt, path)


def max_diff(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max())


@pytest.mark.slow
def test_onnx_matches_torch_on_real_faces(faces, ort, tmp_path):
    clf = make_classifier(faces)
    path = export_onnx(clf, tmp_path / "m.onnx", faces=faces[:32])
    onnx_clf = load_onnx(path, threads=1)
    got, want = onnx_clf.predict_proba(faces), clf.predict_proba(faces)
    assert got.dtype == np.float32 and got.shape == (300, 7)
    assert max_diff(got, want) < 1e-4
    assert (got.argmax(1) == want.argmax(1)).all()
    assert 0.3 < want.max(1).mean() < 0.95  # the model is neither uniform nor one-hot
    assert list(tmp_path.iterdir()) == [path]  # no temp file left behind


@pytest.mark.slow
def test_onnx_metadata_and_graph_signature(faces, ort, tmp_path):
    import onnx

    clf = make_classifier(faces, "standardize")
    path = export_onnx(clf, tmp_path / "m.onnx", faces=faces[:8])
    onnx_clf = load_onnx(path)
    assert onnx_clf.classes == EMOTIONS
    assert onnx_clf.preprocess == clf.preprocess
    assert onnx_clf.name == "vggnet_s"
    assert onnx_clf.meta["model_kwargs"] == SMALL
    assert onnx_clf.meta["metrics"] == {"val_acc": 0.5}
    assert onnx_clf.meta["input_size"] == "48"
    assert onnx_clf.meta["ferlab_version"]

    proto = onnx.load(str(path))
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["classes"]) == list(EMOTIONS)
    assert json.loads(props["preprocess"])["input"] == "raw 0..255 float32 (N,1,48,48)"
    assert proto.opset_import[0].version == 17
    (inp,) = proto.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert (inp.name, dims) == ("faces", ["batch", 1, 48, 48])
    assert [o.name for o in proto.graph.output] == ["logits", "probs"]


@pytest.mark.slow
@pytest.mark.parametrize("normalize", ["minmax", "none", "standardize"])
def test_onnx_graph_applies_normalisation(faces, ort, tmp_path, normalize):
    clf = make_classifier(faces, normalize)
    got = load_onnx(export_onnx(clf, tmp_path / "m.onnx", faces=faces[:8])).predict_proba(faces)
    assert max_diff(got, clf.predict_proba(faces)) < 1e-4
    # the comparison can tell normalisations apart: the same weights under another spec differ
    other = "minmax" if normalize == "standardize" else "standardize"
    clf.preprocess = preprocess_spec(other, torch.from_numpy(faces))
    assert max_diff(got, clf.predict_proba(faces)) > 1e-2


@pytest.mark.slow
def test_onnx_dynamic_batch_and_chunking(faces, ort, tmp_path):
    clf = make_classifier(faces)
    onnx_clf = load_onnx(export_onnx(clf, tmp_path / "m.onnx", faces=faces[:8]), threads=1)
    want = clf.predict_proba(faces[:64])
    for n in (1, 64):
        x = faces[:n, None].astype(np.float32)
        logits, probs = onnx_clf.session.run(None, {"faces": x})
        assert logits.shape == probs.shape == (n, 7)
        assert max_diff(probs, want[:n]) < 1e-4
    assert max_diff(onnx_clf.predict_proba(faces[:64], batch_size=7), want) < 1e-4
    assert max_diff(onnx_clf.predict_proba(faces[0]), want[:1]) < 1e-4  # one (48, 48) face
    assert onnx_clf.predict_proba(faces[:0]).shape == (0, 7)


@pytest.mark.slow
def test_onnx_tta_matches_torch(faces, ort, tmp_path):
    clf = make_classifier(faces)
    onnx_clf = load_onnx(export_onnx(clf, tmp_path / "m.onnx", faces=faces[:8]))
    for tta in ("flip", "shift"):
        got = onnx_clf.predict_proba(faces, batch_size=100, tta=tta)
        assert max_diff(got, clf.predict_proba(faces, tta=tta)) < 1e-4
        assert max_diff(got, clf.predict_proba(faces)) > 1e-3  # the views did something


def test_an_exports_own_tta_travels_with_it_and_is_the_default(faces, ort, tmp_path):
    from typer.testing import CliRunner

    from ferlab.cli import app

    clf = make_classifier(faces[:64])
    _, meta = export_safetensors(clf, tmp_path / "plain", fp16=False)
    assert "tta" not in json.loads(meta.read_text())  # single pass: nothing recorded
    for fmt, out in (("safetensors", tmp_path / "shift"), ("onnx", tmp_path / "shift.onnx")):
        args = ["export", str(meta), "--format", fmt, "--tta", "shift", "--out", str(out)]
        r = CliRunner().invoke(app, args)
        assert r.exit_code == 0, (r.output, r.exception)
    own = load_model(tmp_path / "shift.json")
    onnx_own = load_model(tmp_path / "shift.onnx")
    assert own.tta == onnx_own.tta == "shift" and load_model(meta).tta == "none"
    shifted, single = clf.predict_proba(faces, tta="shift"), clf.predict_proba(faces)
    assert max_diff(shifted, single) > 1e-2  # the views change the answer
    for model in (own, onnx_own):  # fp16 weights: near the source, equal to their own views
        mine = model.predict_proba(faces)
        assert (mine == model.predict_proba(faces, tta="shift")).all()
        assert max_diff(mine, shifted) < 2e-3
        assert max_diff(model.predict_proba(faces, tta="none"), single) < 2e-3  # or as told
    # a re-export keeps it unless told otherwise
    export_safetensors(own, tmp_path / "again", fp16=False)
    assert json.loads((tmp_path / "again.json").read_text())["tta"] == "shift"


def test_a_bad_recorded_tta_names_the_file_and_a_bad_option_exits(tmp_path):
    from typer.testing import CliRunner

    from ferlab.cli import app

    _, meta = export_safetensors(small_classifier(), tmp_path / "m", fp16=False)
    meta.write_text(meta.read_text().replace('"dtype"', '"tta": "sideways", "dtype"'))
    one_line_error(lambda: load_model(meta), meta, "tta: unknown tta 'sideways'")
    with pytest.raises(ValueError, match="extra must not set tta"):
        export_safetensors(small_classifier(), tmp_path / "x", extra={"tta": "shift"})
    bad = "--tta diagonal: expected one of none, flip, shift"  # the option, before any loading
    for args in (["export", "--out", str(tmp_path / "y.onnx")], ["evaluate", "nowhere.json"],
                 ["ensemble", "nowhere.json", "--out", str(tmp_path / "e")],
                 ["predict", str(tmp_path / "no.jpg")]):  # fmt: skip
        r = CliRunner().invoke(app, [*args, "--tta", "diagonal"])
        assert r.exit_code != 0 and str(r.exception) == bad, args
    assert not (tmp_path / "y.onnx").exists() and not (tmp_path / "e").exists()


@pytest.mark.slow
def test_a_crop_trained_model_sees_centre_crops_in_torch_and_its_exports(faces, ort, tmp_path):
    """Trained on random 44-pixel crops, a model takes 48x48 faces everywhere and runs on
    their centre crops; shift TTA moves the window over real pixels (no repeated edges)."""
    import torch.nn.functional as F

    clf = make_classifier(faces)
    whole = clf.predict_proba(faces)
    clf.preprocess = preprocess_spec("minmax", crop=44)
    x = torch.from_numpy(faces).float().div(255)[:, None]
    with torch.no_grad():
        centre = clf.model(x[..., 2:46, 2:46]).softmax(1).numpy()
        windows = [x[..., 2 + dy : 46 + dy, 2 + dx : 46 + dx] for dx, dy in SHIFTS]
        logp = [F.log_softmax(clf.model(v), 1) for w in windows for v in (w, w.flip(-1))]
    shifted = torch.stack(logp).mean(0).softmax(1).numpy()
    assert max_diff(clf.predict_proba(faces), centre) < 1e-5
    assert max_diff(centre, whole) > 1e-2  # the crop matters
    assert max_diff(clf.predict_proba(faces, tta="shift"), shifted) < 1e-5
    # the ONNX graph takes 48x48 faces and crops them itself; safetensors keep the crop
    onnx_clf = load_onnx(export_onnx(clf, tmp_path / "m.onnx", faces=faces[:8]))
    assert onnx_clf.preprocess["crop"] == 44
    assert max_diff(onnx_clf.predict_proba(faces), centre) < 1e-4
    assert max_diff(onnx_clf.predict_proba(faces, tta="shift"), shifted) < 1e-4
    export_safetensors(clf, tmp_path / "m", fp16=False)
    assert max_diff(load_safetensors_model(tmp_path / "m").predict_proba(faces), centre) < 1e-5


@pytest.mark.slow
def test_onnx_vgg19(faces, ort, tmp_path):
    clf = make_classifier(faces, name="vgg19", hidden=16)
    onnx_clf = load_onnx(export_onnx(clf, tmp_path / "vgg19.onnx", faces=faces[:8]), threads=1)
    assert max_diff(onnx_clf.predict_proba(faces[:16]), clf.predict_proba(faces[:16])) < 1e-4
    assert onnx_clf.meta["model_kwargs"] == {"hidden": 16}


def test_onnx_input_errors_match_classifier(ort, tmp_path):
    rng = np.random.default_rng(0)
    faces = rng.integers(0, 256, (4, 48, 48), dtype=np.uint8)
    clf = Classifier(create_model("vggnet_s", **SMALL), preprocess_spec("minmax"), name="vggnet_s")
    onnx_clf = load_onnx(export_onnx(clf, tmp_path / "m.onnx"))  # checked on random faces
    for bad in (faces.astype(np.float32), faces[:, :40], faces[None]):
        with pytest.raises(ValueError) as want:
            clf.predict_proba(bad)
        with pytest.raises(ValueError) as got:
            onnx_clf.predict_proba(bad)
        assert str(got.value) == str(want.value)
    with pytest.raises(ValueError, match="unknown tta"):
        onnx_clf.predict_proba(faces, tta="rotate")
    for batch_size in (0, -1, 2.5, True):  # once: range() or numpy errors, or one face a batch
        for model in (clf, onnx_clf):
            with pytest.raises(ValueError, match="batch_size must be a whole number at least 1"):
                model.predict_proba(faces, batch_size=batch_size)
    np.testing.assert_allclose(
        clf.predict_proba(faces, batch_size=np.int64(3)), clf.predict_proba(faces), atol=1e-6
    )


def test_onnx_missing_corrupt_or_foreign_file(ort, tmp_path):
    import onnx

    with pytest.raises(FileNotFoundError, match="not found"):
        load_onnx(tmp_path / "absent.onnx")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(b"\x08\x07not a protobuf" * 10)
    with pytest.raises(ValueError, match=r"corrupt\.onnx: not a valid ONNX model"):
        load_onnx(corrupt)
    # a valid ONNX file without ferlab's metadata
    foreign = tmp_path / "foreign.onnx"
    node = onnx.helper.make_node("Relu", ["faces"], ["probs"])
    inp, out = (onnx.helper.make_tensor_value_info(n, 1, [1, 7]) for n in ("faces", "probs"))
    onnx.save(onnx.helper.make_model(onnx.helper.make_graph([node], "g", [inp], [out])), foreign)
    with pytest.raises(ValueError, match="lacks model_name, classes, preprocess"):
        load_onnx(foreign)


def test_export_onnx_refuses_a_disagreeing_graph(ort, tmp_path, monkeypatch):
    clf = Classifier(create_model("vggnet_s", **SMALL), preprocess_spec("minmax"), name="vggnet_s")
    good = export_onnx(clf, tmp_path / "m.onnx")
    before = good.read_bytes()
    monkeypatch.setattr(clf, "predict_proba", lambda f: np.zeros((len(f), 7), np.float32))
    with pytest.raises(RuntimeError, match="disagrees with PyTorch"):
        export_onnx(clf, good)
    assert good.read_bytes() == before and list(tmp_path.iterdir()) == [good]


@pytest.mark.slow
def test_safetensors_round_trip_fp16_and_fp32(faces, tmp_path):
    clf = make_classifier(faces, "standardize")
    w16, j16 = export_safetensors(clf, tmp_path / "fp16", extra={"command": "ferlab train x"})
    w32, _ = export_safetensors(clf, tmp_path / "fp32.safetensors", fp16=False)
    assert (w16.name, j16.name, w32.name) == ("fp16.safetensors", "fp16.json", "fp32.safetensors")
    assert 0.45 < w16.stat().st_size / w32.stat().st_size < 0.6
    info = json.loads(j16.read_text())
    assert info["model_name"] == "vggnet_s" and info["model_kwargs"] == SMALL
    assert info["classes"] == list(EMOTIONS) and info["preprocess"] == clf.preprocess
    assert info["command"] == "ferlab train x" and info["metrics"] == {"val_acc": 0.5}

    want = clf.predict_proba(faces)
    exact = load_safetensors_model(tmp_path / "fp32")
    assert max_diff(exact.predict_proba(faces), want) < 1e-6
    half = load_safetensors_model(j16)
    assert all(p.dtype == torch.float32 for p in half.model.parameters())
    assert half.preprocess == clf.preprocess and half.name == "vggnet_s"
    got = half.predict_proba(faces)
    assert max_diff(got, want) < 1e-2
    assert (got.argmax(1) == want.argmax(1)).mean() > 0.95


def test_safetensors_dtypes_and_overflow(tmp_path):
    from safetensors.torch import load_file

    model = create_model("vggnet_s", **SMALL)
    bn = model.features[1]
    bn.running_var[0] = 1e6  # past fp16's 65504: that tensor must stay float32
    clf = Classifier(model, preprocess_spec("none"), name="vggnet_s", meta={"model_kwargs": SMALL})
    weights, _ = export_safetensors(clf, tmp_path / "m")
    state = load_file(str(weights))
    assert state["features.1.running_var"].dtype == torch.float32
    assert state["features.1.running_mean"].dtype == torch.float16
    assert state["features.1.num_batches_tracked"].dtype == torch.int64
    back = load_safetensors_model(weights)
    assert float(back.model.features[1].running_var[0]) == 1e6


def test_safetensors_errors(tmp_path):
    clf = Classifier(create_model("vggnet_s", **SMALL), preprocess_spec("minmax"), name="vggnet_s")
    with pytest.raises(ValueError, match="weights do not fit"):  # meta lacks model_kwargs
        export_safetensors(clf, tmp_path / "m")
    assert list(tmp_path.iterdir()) == []
    clf.meta["model_kwargs"] = SMALL
    with pytest.raises(ValueError, match="must not set classes"):
        export_safetensors(clf, tmp_path / "m", extra={"classes": ["a"]})
    with pytest.raises(FileNotFoundError):
        load_safetensors_model(tmp_path / "absent.json")
    weights, _ = export_safetensors(clf, tmp_path)  # a directory: named after the model
    assert weights == tmp_path / "vggnet_s.safetensors"
    weights.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"vggnet_s\.safetensors: not a safetensors file"):
        load_safetensors_model(weights)  # named with its suffix: the JSON beside it is fine
    # a misspelt normalisation once ran silently as minmax; a zero std divided by zero;
    # numpy scalars are numbers
    spec = {"normalize": "standardize", "mean": np.float32(0.5), "std": np.float32(0.25)}
    assert Classifier(create_model("vggnet_s", **SMALL), spec).preprocess is spec
    _, meta = export_safetensors(clf, tmp_path / "p")
    info = json.loads(meta.read_text())
    for spec, message in [
        ({**info["preprocess"], "normalize": "standardise"}, "expected one of"),
        ({**info["preprocess"], "normalize": "standardize", "std": 0.0}, "std > 0"),
    ]:
        meta.write_text(json.dumps({**info, "preprocess": spec}))
        with pytest.raises(ValueError, match=f"p.json: preprocess .*{message}"):
            load_safetensors_model(meta)


def small_classifier(spec: dict | None = None) -> Classifier:
    model = create_model("vggnet_s", **SMALL)
    spec = spec or preprocess_spec("minmax")
    return Classifier(model, spec, name="vggnet_s", meta={"model_kwargs": SMALL})


def one_line_error(call, where: object, message: str) -> None:
    """``call()`` raises one ValueError line that starts with ``where`` (its file)."""
    with pytest.raises(ValueError, match=message) as e:
        call()
    assert str(e.value).startswith(f"{where}: ") and "\n" not in str(e.value), str(e.value)


def test_checkpoints_that_cannot_build_their_model_name_the_file(tmp_path):
    """A missing classes once raised KeyError, list model_kwargs a TypeError, and weights that
    do not fit the model_kwargs a page of torch's RuntimeError."""
    from ferlab.checkpoint import build_model, load_checkpoint

    model = create_model("vggnet_s", **SMALL)
    for name, change, message in [
        ("noclasses", {"classes": None}, "classes: expected a list of class names"),
        ("intclasses", {"classes": 7}, "classes: expected a list of class names"),
        ("noname", {"model_name": "nosuch"}, "model_name: expected one of .*vggnet_s"),
        ("kwlist", {"model_kwargs": [1]}, "model_kwargs: expected a mapping"),
    ]:
        path = tmp_path / f"{name}.pt"
        save_small_checkpoint(path, model, **change)
        one_line_error(lambda p=path: load_model(p), path, message)
    for name, kwargs, message in [
        ("wrongkw", {"widths": [8, 16, 16, 32]}, r"weights do not fit vggnet_s .*; and 10 more\)"),
        ("badkw", {"bogus": 1}, "model_kwargs {'bogus': 1} do not build vggnet_s"),
    ]:
        path = tmp_path / f"{name}.pt"
        save_small_checkpoint(path, model, model_kwargs=kwargs)
        ckpt = load_checkpoint(path)
        one_line_error(lambda c=ckpt, p=path: build_model(c, str(p)), path, message)


def test_safetensors_json_that_cannot_build_its_model_names_the_file(tmp_path):
    """Each of these once raised a TypeError traceback, or a message without the file."""
    _, meta = export_safetensors(small_classifier(), tmp_path / "m")
    info = json.loads(meta.read_text())
    for doc, message in [
        ("model_name classes preprocess", "not a ferlab export"),  # `in` matched substrings
        ({**info, "classes": 7}, "classes: expected a list of class names"),
        ({**info, "classes": ["a", "b", "c"]}, "weights do not fit vggnet_s"),
        ({**info, "model_kwargs": [1]}, "model_kwargs: expected a mapping"),
        ({**info, "model_kwargs": {"bogus": 1}}, "model_kwargs {'bogus': 1} do not build"),
        ({**info, "model_name": "nosuch"}, "model_name: expected one of"),
    ]:
        meta.write_text(json.dumps(doc))
        one_line_error(lambda: load_safetensors_model(meta), meta, message)


def test_numpy_preprocess_values_export_as_numbers(ort, tmp_path):
    """A NumPy mean was written as the string "0.49" (json default=str): the file loaded,
    then failed at the first prediction subtracting a str from a tensor."""
    x = np.random.default_rng(0).integers(0, 256, (4, 48, 48), dtype=np.uint8)
    images = x.astype(np.float32) / 255
    spec = {"size": 48, "channels": 1, "normalize": "standardize"}
    clf = small_classifier({**spec, "mean": images.mean(), "std": images.std()})
    _, meta = export_safetensors(clf, tmp_path / "m", fp16=False)
    saved = json.loads(meta.read_text())["preprocess"]
    assert type(saved["mean"]) is float and type(saved["std"]) is float
    want = clf.predict_proba(x)
    assert max_diff(load_safetensors_model(meta).predict_proba(x), want) < 1e-6
    onnx_clf = load_onnx(export_onnx(clf, tmp_path / "m.onnx"))
    assert type(onnx_clf.preprocess["mean"]) is float
    # what such an export wrote is refused on load, as are booleans
    info = json.loads(meta.read_text())
    for mean in ("0.49", True):
        meta.write_text(json.dumps({**info, "preprocess": {**spec, "mean": mean, "std": 0.3}}))
        one_line_error(lambda: load_safetensors_model(meta), meta, "numeric mean and std > 0")
    # a value JSON cannot hold fails the export, and nothing is written
    with pytest.raises(ValueError, match=r"n\.json: cannot be written as JSON"):
        export_safetensors(clf, tmp_path / "n", extra={"when": object()})
    assert not list(tmp_path.glob("n.*"))
    # what a user's --info YAML holds besides strings and numbers: dates, as ISO text
    # ...and what the Python API passes: paths, as text
    extra = {"trained": datetime.date(2026, 11, 30), "data": Path("data/faces")}
    _, meta = export_safetensors(clf, tmp_path / "d", extra=extra)
    saved = json.loads(meta.read_text())
    assert (saved["trained"], saved["data"]) == ("2026-11-30", "data/faces")


def test_onnx_metadata_is_checked_on_load(ort, tmp_path):
    """Bad JSON once said only "Expecting value"; an unknown normalize loaded; two class names
    for seven outputs loaded, then failed with a broadcast error."""
    import onnx

    good = export_onnx(small_classifier(), tmp_path / "m.onnx")
    for key, value, message in [
        ("classes", "angry,happy", "metadata classes: expected JSON"),
        ("classes", '{"a": 1}', "metadata classes: expected a non-empty list of names"),
        ("classes", "[]", "metadata classes: expected a non-empty list of names, got \\[\\]"),
        ("classes", '["a", "b"]', r"metadata classes: expected 7 names .*got 2"),
        ("model_kwargs", "nope", "metadata model_kwargs: expected JSON"),
        ("preprocess", '{"normalize": "minmaxx"}', "metadata: preprocess normalize: expected"),
        ("preprocess", '{"normalize": "minmax", "crop": 60}', r"preprocess crop: .* got 60"),
    ]:
        proto = onnx.load(str(good))
        props = {p.key: p.value for p in proto.metadata_props}
        del proto.metadata_props[:]
        onnx.helper.set_model_props(proto, {**props, key: value})
        bad = tmp_path / f"bad_{key}.onnx"
        onnx.save(proto, str(bad))
        one_line_error(lambda b=bad: load_onnx(b), bad, message)


def test_safetensors_pair_from_two_exports_is_refused(tmp_path):
    """A kill between the two writes leaves new weights beside the old JSON: refused."""
    clf = Classifier(
        create_model("vggnet_s", **SMALL),
        preprocess_spec("minmax"),
        name="vggnet_s",
        meta={"model_kwargs": SMALL},
    )
    weights, meta = export_safetensors(clf, tmp_path / "a")
    old_meta = meta.read_text()
    with torch.no_grad():
        clf.model.features[0].weight.add_(1.0)
    export_safetensors(clf, tmp_path / "a")
    assert load_safetensors_model(weights).meta["sha256"] == json.loads(meta.read_text())["sha256"]
    meta.write_text(old_meta)
    with pytest.raises(ValueError, match=r"a\.safetensors: not the weights a\.json describes"):
        load_safetensors_model(weights)
    info = json.loads(old_meta)
    del info["sha256"]  # exports written before the hash still load
    meta.write_text(json.dumps(info))
    load_safetensors_model(weights)


def test_checkpoint_to_both_exports(ort, tmp_path: Path):
    """A training checkpoint's model_kwargs survive load_model into both export formats."""
    model = create_model("vggnet_s", **SMALL).eval()
    save_small_checkpoint(
        tmp_path / "best.pt",
        model,
        config={"model": "vggnet_s", "model_kwargs": SMALL},
        metrics={"val_acc": 0.61},
    )
    clf = load_model(tmp_path / "best.pt")
    faces = np.random.default_rng(1).integers(0, 256, (16, 48, 48), dtype=np.uint8)
    onnx_clf = load_onnx(export_onnx(clf, tmp_path / "m.onnx"))
    assert onnx_clf.meta["model_kwargs"] == SMALL
    assert max_diff(onnx_clf.predict_proba(faces), clf.predict_proba(faces)) < 1e-4
    back = load_safetensors_model(export_safetensors(clf, tmp_path / "m", fp16=False)[1])
    assert back.meta["metrics"]["val_acc"] == 0.61
    assert max_diff(back.predict_proba(faces), clf.predict_proba(faces)) < 1e-6


def test_load_model_honours_device_for_every_format(tmp_path: Path):
    """``device=`` reaches the weights whichever file holds them: the meta device stands in
    for a GPU that this machine lacks (a shipped .json once came back on the CPU)."""
    model = create_model("vggnet_s", **SMALL)
    clf = Classifier(
        model, preprocess_spec("minmax"), name="vggnet_s", meta={"model_kwargs": SMALL}
    )
    _, info = export_safetensors(clf, tmp_path / "m")
    save_small_checkpoint(tmp_path / "best.pt", model)
    for path in (info, info.with_suffix(".safetensors"), tmp_path / "best.pt"):
        got = load_model(path, device="meta")
        assert {p.device.type for p in got.model.parameters()} == {"meta"}, path
    with pytest.raises(ValueError, match="device meta: ONNX models run on the CPU here"):
        load_model(info, device="meta", runtime="onnx")
    with pytest.raises(ValueError, match="device meta: ONNX models run on the CPU here"):
        load_model("fast", device="meta")  # a shipped name whose file is .onnx


def test_int8_onnx_keeps_metadata_and_mostly_the_top_class(faces, ort, tmp_path):
    import onnx
    from onnx import TensorProto, numpy_helper

    from ferlab.export import quantize_onnx

    clf = make_classifier(faces)
    float_path = export_onnx(clf, tmp_path / "f.onnx")
    calib, held_out = faces[:200], faces[200:]
    int8 = load_onnx(quantize_onnx(float_path, tmp_path / "q.onnx", calib))
    assert int8.meta["quantization"].startswith("int8")
    assert int8.preprocess == load_onnx(float_path).preprocess and int8.classes == clf.classes
    graph = onnx.load(tmp_path / "q.onnx").graph
    assert "QuantizeLinear" in {n.op_type for n in graph.node}
    # 7-bit weights (|w| <= 64): the u8 x s8 kernel of x86 CPUs without VNNI adds pairs of
    # products in 16 bits, which full-range int8 weights overflow (3 points for `fast`)
    weights = [
        numpy_helper.to_array(t) for t in graph.initializer if t.data_type == TensorProto.INT8
    ]
    assert weights and max(int(abs(w.astype(int)).max()) for w in weights) <= 64
    # the one-channel input convolution stays float, the others int8; nodes are excluded by
    # name, so a file without node names must come out the same (excluding the name "" once
    # left every unnamed layer float)
    unnamed = onnx.load(float_path)
    for n in unnamed.graph.node[1:]:  # one named node, as a hand-edited file might have
        n.name = ""
    onnx.save(unnamed, tmp_path / "unnamed.onnx")
    quantize_onnx(tmp_path / "unnamed.onnx", tmp_path / "uq.onnx", calib)
    for path in (tmp_path / "q.onnx", tmp_path / "uq.onnx"):
        graph = onnx.load(path).graph
        convs = [n for n in graph.node if n.op_type == "Conv"]
        floats = {t.name for t in graph.initializer if t.data_type == TensorProto.FLOAT}
        assert convs[0].input[1] in floats, path
        assert all(c.input[1] not in floats for c in convs[1:]), path
    # faces it was not calibrated on: top class mostly kept, probabilities close
    agree = (int8.predict(held_out) == clf.predict(held_out)).mean()
    assert agree >= 0.9, agree
    assert max_diff(int8.predict_proba(held_out), clf.predict_proba(held_out)) < 0.2


def test_cli_exports_int8_calibrated_on_training_faces(ort, tiny_csv, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ferlab.cli import app

    monkeypatch.setenv("FERLAB_CACHE", str(tmp_path / "cache"))
    clf = make_classifier(np.random.default_rng(0).integers(0, 256, (64, 48, 48), dtype=np.uint8))
    _, meta = export_safetensors(clf, tmp_path / "m", fp16=False)
    out = tmp_path / "q.onnx"
    args = ["export", str(meta), "--int8", "--data", str(tiny_csv), "--out", str(out)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert load_onnx(out).meta["quantization"].startswith("int8")
    # a float .onnx file quantises as it is; an int8 one is refused
    float_path = export_onnx(clf, tmp_path / "f.onnx")
    args = ["export", str(float_path), "--int8", "--data", str(tiny_csv), "--out"]
    r = CliRunner().invoke(app, [*args, str(tmp_path / "fq.onnx")])
    assert r.exit_code == 0, r.output
    assert load_onnx(tmp_path / "fq.onnx").meta["quantization"].startswith("int8")
    args[1] = str(out)
    r = CliRunner().invoke(app, [*args, str(tmp_path / "qq.onnx")])
    assert r.exit_code != 0 and f"{out}: already quantised (int8" in str(r.exception)
    assert not (tmp_path / "qq.onnx").exists()


def test_int8_calibrates_a_folder_model_on_its_own_training_split(ort, tmp_path, monkeypatch):
    """A model trained on a stratified split of a class-folder dataset (which has no official
    split) calibrates on that split's training faces; it failed after the float export."""
    from ferlab.export import export_int8

    monkeypatch.setenv("FERLAB_CACHE", str(tmp_path / "cache"))
    rows = synthetic_rows(per_class=6)
    for i, (label, face, _) in enumerate(rows):
        save_image(tmp_path / "faces" / EMOTIONS[label] / f"{i}.png", face)
    clf = make_classifier(np.stack([face for _, face, _ in rows]))
    data = str(tmp_path / "faces")
    clf.meta["config"] = {"data": data, "split": "stratified", "seed": 0}
    int8 = load_onnx(export_int8(clf, tmp_path / "q.onnx", data, n=64))
    assert int8.meta["quantization"].startswith("int8")


def test_int8_refuses_what_it_cannot_quantise_and_keeps_its_source(faces, ort, tiny_csv, tmp_path):
    from ferlab.ensemble import Ensemble
    from ferlab.export import export_int8

    clf = make_classifier(faces)
    float_path = export_onnx(clf, tmp_path / "f.onnx")
    before = float_path.read_bytes()
    with pytest.raises(ValueError, match="would replace its float source"):
        export_int8(load_onnx(float_path), tmp_path / "." / "f.onnx", str(tiny_csv))
    assert float_path.read_bytes() == before
    with pytest.raises(ValueError, match="<bytes>: an ONNX model quantises from its file"):
        export_int8(OnnxClassifier(before), tmp_path / "q.onnx", str(tiny_csv))
    with pytest.raises(ValueError, match=r"exports need a PyTorch model .* not Ensemble"):
        export_int8(Ensemble([clf, clf], [1.0, 1.0]), tmp_path / "q.onnx", str(tiny_csv))
    assert not (tmp_path / "q.onnx").exists()
    # the float model's metrics are not the int8 file's
    clf.meta["metrics"] = {"val_acc": 0.61}
    int8 = load_onnx(export_int8(clf, tmp_path / "q.onnx", str(tiny_csv)))
    assert "metrics" in load_onnx(export_onnx(clf, tmp_path / "f2.onnx")).meta
    assert "metrics" not in int8.meta


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--format", "safetensors", "--int8"], "--int8 applies to --format onnx"),
        (["--info", "facts.yaml"], "--info applies to --format safetensors"),
        (["--data", "faces.csv"], "--data is the --int8 calibration set"),
        (["--format", "tflite"], "unknown 'tflite'"),
        # load_model() would read a file named otherwise as a checkpoint, and fail
        ([], "out: an ONNX export must be named *.onnx"),
        (["--int8"], "out: an ONNX export must be named *.onnx"),
    ],
)
def test_cli_export_refuses_options_its_format_ignores(tmp_path, extra, message):
    from typer.testing import CliRunner

    from ferlab.cli import app

    clf = make_classifier(np.random.default_rng(0).integers(0, 256, (64, 48, 48), dtype=np.uint8))
    _, meta = export_safetensors(clf, tmp_path / "m", fp16=False)
    out = tmp_path / "out"
    r = CliRunner().invoke(app, ["export", str(meta), "--out", str(out), *extra])
    assert r.exit_code != 0 and message in str(r.exception), (r.output, r.exception)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "m.safetensors"]


@pytest.mark.parametrize(
    "text, message",
    [("5\n", "expected a mapping of keys, got int"), ("a: [\n", "not valid YAML")],
)
def test_cli_export_info_must_be_a_yaml_mapping(tmp_path, text, message):
    from typer.testing import CliRunner

    from ferlab.cli import app

    clf = make_classifier(np.random.default_rng(0).integers(0, 256, (64, 48, 48), dtype=np.uint8))
    _, meta = export_safetensors(clf, tmp_path / "m", fp16=False)
    (tmp_path / "facts.yaml").write_text(text)
    args = ["export", str(meta), "--format", "safetensors", "--info", str(tmp_path / "facts.yaml")]
    r = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "x")])
    assert r.exit_code != 0 and f"facts.yaml: {message}" in str(r.exception), r.output
    assert "\n" not in str(r.exception) and not (tmp_path / "x.json").exists()


def test_cli_refuses_to_export_or_ensemble_an_onnx_file(ort, tmp_path):
    from typer.testing import CliRunner

    from ferlab.cli import app

    clf = make_classifier(np.random.default_rng(0).integers(0, 256, (64, 48, 48), dtype=np.uint8))
    onnx_file = export_onnx(clf, tmp_path / "m.onnx")
    args = ["export", str(onnx_file), "--format", "safetensors", "--out", str(tmp_path / "x")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code != 0 and f"{onnx_file}: exports need a PyTorch model" in str(r.exception)
    assert not (tmp_path / "x.json").exists()
    # refused before calibration: this dataset does not exist, and that is not what is said
    args = ["ensemble", str(onnx_file), str(onnx_file), "--out", str(tmp_path / "e")]
    r = CliRunner().invoke(app, [*args, "--data", str(tmp_path / "missing.csv")])
    assert r.exit_code != 0 and "exports need a PyTorch model" in str(r.exception)
    assert not (tmp_path / "e.json").exists() and not (tmp_path / "e").exists()


def test_the_shipped_defaults_facts_are_its_committed_info_and_evaluations():
    """default.json's metrics and training facts came from an --info file that was never
    committed, so the export command in docs/results could not be rerun as written."""
    from ferlab.config import load_yaml_mapping

    root = Path(__file__).resolve().parents[1]
    meta = json.loads((root / "src/ferlab/weights/default.json").read_text())
    results = root / "docs/results" / meta["config"]["name"]  # the run the file came from
    info = load_yaml_mapping(results / "info.yaml")
    assert {k: meta[k] for k in info} == info
    assert meta["tta"] == "shift"  # its own views, chosen on PublicTest (docs/results)
    for split in ("PublicTest", "PrivateTest"):
        single, flip, shift = (
            json.loads((results / f"{split}{views}" / "metrics.json").read_text())
            for views in ("", "-flip", "-shift")
        )
        assert info["metrics"][split] == {
            "accuracy": round(single["accuracy"], 4),
            "accuracy_flip_tta": round(flip["accuracy"], 4),
            "accuracy_shift_tta": round(shift["accuracy"], 4),
            "macro_f1": round(single["macro_f1"], 4),
        }
