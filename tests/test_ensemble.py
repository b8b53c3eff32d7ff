import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from ferlab import load_model
from ferlab.classifier import shipped_models
from ferlab.ensemble import (
    Ensemble,
    calibrate,
    crossfit_accuracy,
    fit_temperature,
    fit_weights,
    load_ensemble,
    save_ensemble,
)
from test_export import faces, make_classifier, small_classifier  # noqa: F401  (fixture, helpers)


def test_fit_temperature_recovers_the_true_one():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (20000, 7))
    true_t = 2.0
    p_true = calibrate(np.exp(logits), true_t)  # labels drawn from softmax(logits / 2)
    labels = (p_true.cumsum(1) > rng.random((20000, 1))).argmax(1)
    over_confident = calibrate(np.exp(logits), 1.0)
    assert fit_temperature(over_confident, labels) == pytest.approx(true_t, rel=0.05)
    # calibrating the over-confident probabilities with T gives back the true ones
    np.testing.assert_allclose(calibrate(over_confident, true_t), p_true, atol=1e-5)


def noisy_members(n=4000, seed=0):
    """Labels, and two members' probabilities: one that knows them, one that guesses."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 7, n)
    logits = rng.normal(0, 1, (n, 7))
    logits[np.arange(n), labels] += 2.0
    good = calibrate(np.exp(logits), 1.0)
    guess = calibrate(np.exp(rng.normal(0, 3, (n, 7))), 1.0)
    return labels, np.stack([good, guess])


def test_fitted_weights_favour_the_member_that_knows():
    labels, probs = noisy_members()
    weights = fit_weights(probs, labels)
    assert weights[0] > 0.9 and sum(weights) == pytest.approx(1)

    def nll(w):
        return -np.log(np.tensordot(w, probs, 1)[np.arange(len(labels)), labels]).mean()

    assert nll(weights) <= nll([1.0, 0.0]) + 1e-6 and nll(weights) < nll([0.5, 0.5]) - 0.05
    # one member: neither temperature nor weight changes its ranking, so cross-fitting
    # scores exactly its own accuracy
    alone = (probs[0].argmax(1) == labels).mean()
    assert crossfit_accuracy(probs[:1], labels, weighted=True) == pytest.approx(alone)


def test_crossfitting_does_not_flatter_a_fitted_combination_of_guessers():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 100)
    guessers = calibrate(np.exp(rng.normal(0, 3, (60 * 100, 7))), 1.0).reshape(60, 100, 7)
    weights = fit_weights(guessers, labels)  # scored on the labels it was fitted to...
    flattered = (np.tensordot(weights, guessers, 1).argmax(1) == labels).mean()
    honest = crossfit_accuracy(guessers, labels, weighted=True)  # ...and on unseen ones
    assert flattered > honest + 0.08 and abs(honest - 1 / 7) < 0.05


def test_ensemble_averages_calibrated_members_and_round_trips(faces, tmp_path):  # noqa: F811
    a, b = make_classifier(faces, seed=0), make_classifier(faces, seed=1)
    ens = Ensemble([a, b], [0.5, 2.0])
    expected = (calibrate(a.predict_proba(faces), 0.5) + calibrate(b.predict_proba(faces), 2.0)) / 2
    got = ens.predict_proba(faces)
    np.testing.assert_allclose(got, expected, atol=1e-6)
    np.testing.assert_allclose(got.sum(1), 1, atol=1e-5)

    manifest = save_ensemble(ens, tmp_path / "weights" / "ens", extra={"note": "test"})
    info = json.loads(manifest.read_text())
    assert info["kind"] == "ensemble" and [m["temperature"] for m in info["members"]] == [0.5, 2.0]
    assert (tmp_path / "weights" / "ens" / "member1.safetensors").is_file()
    loaded = load_model(manifest)
    assert loaded.meta["note"] == "test"
    np.testing.assert_allclose(loaded.predict_proba(faces), got, atol=5e-3)  # fp16 members
    onnx = load_model(manifest, runtime="onnx")
    np.testing.assert_allclose(onnx.predict_proba(faces), loaded.predict_proba(faces), atol=1e-4)
    assert (loaded.runtime, onnx.runtime) == ("torch", "onnx")  # what `ferlab serve` reports

    # a save killed after replacing a member, before the manifest: the old manifest is refused
    old_manifest = manifest.read_bytes()
    save_ensemble(Ensemble([b, a], [2.0, 0.5]), tmp_path / "weights" / "ens")
    manifest.write_bytes(old_manifest)
    with pytest.raises(ValueError, match=r"ens\.json: member0\.json is not the member it was"):
        load_model(manifest)
    for m in info["members"]:
        del m["sha256"]  # older manifests carry no hashes: still loaded
    manifest.write_text(json.dumps(info))
    load_model(manifest)


def test_weighted_members_round_trip(faces, tmp_path):  # noqa: F811
    a, b = make_classifier(faces, seed=0), make_classifier(faces, seed=1)
    ens = Ensemble([a, b], [0.5, 2.0], weights=[3, 1])  # normalised to 0.75, 0.25
    pa, pb = calibrate(a.predict_proba(faces), 0.5), calibrate(b.predict_proba(faces), 2.0)
    np.testing.assert_allclose(ens.predict_proba(faces), 0.75 * pa + 0.25 * pb, atol=1e-6)
    loaded = load_model(save_ensemble(ens, tmp_path / "ens"))
    assert loaded.weights == [0.75, 0.25]
    np.testing.assert_allclose(loaded.predict_proba(faces), ens.predict_proba(faces), atol=5e-3)
    with pytest.raises(ValueError, match="2 members but 1 weights"):
        Ensemble([a, b], weights=[1])


def test_fitting_lowers_held_out_nll(faces):  # noqa: F811
    labels = np.random.default_rng(0).integers(0, 7, len(faces))
    ens = Ensemble([make_classifier(faces, seed=0), make_classifier(faces, seed=1)])
    probs = ens.fit(faces, labels)

    def nll(p):
        return -np.log(p[np.arange(len(labels)), labels]).mean()

    # random labels: the best temperature flattens each member towards uniform
    assert all(t > 1 for t in ens.temperatures)
    for p, t in zip(probs, ens.temperatures, strict=True):
        assert nll(calibrate(p, t)) < nll(p)


def test_bad_manifests_fail_with_the_file_named(tmp_path):
    bad = tmp_path / "e.json"
    bad.write_text(json.dumps({"kind": "ensemble", "members": []}))
    with pytest.raises(ValueError, match=r"e\.json: an ensemble manifest needs"):
        load_model(bad)
    bad.write_text(json.dumps({"kind": "ensemble", "members": [{"file": "x.json"}]}))
    with pytest.raises(ValueError, match=r"e\.json: each member needs 'file' and a numeric"):
        load_model(bad)
    bad.write_text(
        json.dumps({"kind": "ensemble", "members": [{"file": "x.json", "temperature": 1}]})
    )
    with pytest.raises(FileNotFoundError, match=r"x\.json: not found"):
        load_model(bad)
    for outside in ("../x.json", str(tmp_path / "x.json")):
        bad.write_text(json.dumps({"members": [{"file": outside, "temperature": 1}]}))
        with pytest.raises(ValueError, match=r"e\.json: member file .* must lie in the manifest"):
            load_ensemble(bad)
    with pytest.raises(ValueError, match="at least one member"):
        Ensemble([])
    bad.write_text("{not json")  # load_ensemble directly: load_model reads it as an export
    with pytest.raises(ValueError, match=r"e\.json: not an ensemble manifest \(Expecting"):
        load_ensemble(bad)
    bad.write_text("[1]")
    with pytest.raises(ValueError, match=r"e\.json: an ensemble manifest needs"):
        load_ensemble(bad)
    preds = tmp_path / "predictions.json"  # JSON, but a list: neither manifest nor export
    preds.write_text(json.dumps([{"path": "a.jpg", "faces": []}]))
    with pytest.raises(FileNotFoundError, match=r"predictions\.safetensors: not found \(a ferlab"):
        load_model(preds)  # said as what a model file is, not only as a missing file


def test_saving_replaces_the_whole_ensemble_or_nothing(tmp_path, monkeypatch):
    """Members were checked one by one while written: an unexportable second member left a
    half-written folder (and an error naming "model"); two members saved over three left
    member2 behind."""
    from types import SimpleNamespace

    from ferlab import export
    from ferlab.data import EMOTIONS

    def files():
        """Every path under tmp_path (folders too: an empty temp folder left behind counts)."""
        return {
            p.relative_to(tmp_path): p.is_file() and p.read_bytes() for p in tmp_path.rglob("*")
        }

    three = Ensemble([small_classifier() for _ in range(3)])
    manifest = save_ensemble(three, tmp_path / "ens")
    save_ensemble(Ensemble(three.members[:2]), tmp_path / "ens")
    assert sorted(p.name for p in (tmp_path / "ens").iterdir()) == [
        "member0.json",
        "member0.safetensors",
        "member1.json",
        "member1.safetensors",
    ]
    assert len(load_model(manifest).members) == 2
    before = files()
    onnx_file = SimpleNamespace(classes=EMOTIONS)  # an ONNX model has no weights to save
    for path in (tmp_path / "ens", tmp_path / "new"):
        with pytest.raises(ValueError, match=r"^member 1: exports need a PyTorch model"):
            save_ensemble(Ensemble([three.members[0], onnx_file]), path)
    assert files() == before  # no new folder, nothing replaced
    # killed part way (a full disk, say): the previous ensemble stays, and no temp folder
    real = export.export_safetensors
    calls = []

    def fail_second(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("No space left on device")
        return real(*args, **kw)

    monkeypatch.setattr(export, "export_safetensors", fail_second)
    with pytest.raises(OSError, match="No space left"):
        save_ensemble(three, tmp_path / "ens")
    assert files() == before
    monkeypatch.undo()
    # the manifest's write fails after the members are in place: the previous ones come back
    from ferlab import ensemble as ensemble_module

    def no_space(*args):
        raise OSError("No space left on device")

    monkeypatch.setattr(ensemble_module, "atomic_write_bytes", no_space)
    with pytest.raises(OSError, match="No space left"):
        save_ensemble(three, tmp_path / "ens")
    assert files() == before and len(load_model(manifest).members) == 2
    monkeypatch.undo()
    # `--out runs` would have replaced the user's runs with the members
    (tmp_path / "runs" / "trial").mkdir(parents=True)
    (tmp_path / "runs" / "trial" / "best.pt").write_bytes(b"weights")
    with pytest.raises(ValueError, match=r"runs: holds trial, not only ensemble members"):
        save_ensemble(three, tmp_path / "runs")
    assert (tmp_path / "runs" / "trial" / "best.pt").read_bytes() == b"weights"


def test_manifest_temperatures_and_tta_are_checked_on_load(faces, tmp_path):  # noqa: F811
    members = [make_classifier(faces, seed=s) for s in (0, 1)]
    path = save_ensemble(Ensemble(members, [0.9, 1.1], tta="flip"), tmp_path / "e")
    good = json.loads(path.read_text())
    unweighted = {k: v for k, v in good["members"][0].items() if k != "weight"}
    for change, message in [
        ({"tta": "crop"}, "unknown tta 'crop'"),
        ({"members": [dict(good["members"][0], temperature=0)]}, "must be finite and > 0"),
        ({"members": [dict(good["members"][0], temperature=-1)]}, "must be finite and > 0"),
        ({"members": [dict(good["members"][0], temperature="warm")]}, "numeric 'temperature'"),
        ({"members": [dict(good["members"][0], weight="heavy")]}, r"\(and 'weight', if any\)"),
        ({"members": [dict(m, weight=-1) for m in good["members"]]}, "weights must be finite"),
        ({"members": [dict(m, weight=0) for m in good["members"]]}, "not all 0"),
        ({"members": [unweighted, good["members"][1]]}, "1 of 2 members have a 'weight'"),
        ({"members": [good["members"][0], {**good["members"][1]} | {"weight": None}]}, "numeric"),
    ]:
        path.write_text(json.dumps({**good, **change}))
        with pytest.raises(ValueError, match=message) as e:
            load_model(path)
        assert str(e.value).startswith(str(path))


def test_cli_builds_an_ensemble_on_publictest_only(real_csv, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from ferlab import TrainConfig, train
    from ferlab.cli import app

    monkeypatch.setenv("FERLAB_CACHE", str(tmp_path / "cache"))
    runs = [
        train(
            TrainConfig(
                data=str(real_csv),
                out=str(tmp_path / "runs"),
                name=f"m{seed}",
                model="vggnet_s",
                model_kwargs={"widths": [8, 16, 16, 16]},
                epochs=1,
                seed=seed,
                threads=1,
            )
        )
        for seed in (0, 1)
    ]
    args = ["ensemble", *map(str, runs), "--data", str(real_csv), "--out", str(tmp_path / "ens")]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "ensemble of 2: PublicTest accuracy" in r.output
    info = json.loads((tmp_path / "ens.json").read_text())
    assert info["calibrated_on"] == "PublicTest" and len(info["members"]) == 2
    assert [m["weight"] for m in info["members"]] == [0.5, 0.5]
    r = CliRunner().invoke(app, [*args, "--weights", "fit", "--out", str(tmp_path / "fit")])
    assert r.exit_code == 0, r.output
    fit = json.loads((tmp_path / "fit.json").read_text())
    assert fit["weighting"] == "fit" and "with each half fitted on the other" in r.output
    assert sum(m["weight"] for m in fit["members"]) == pytest.approx(1)
    assert 0 < fit["metrics"]["PublicTest"]["crossfit_accuracy"] <= 1
    r = CliRunner().invoke(app, [*args, "--weights", "best"])
    assert r.exit_code != 0 and "--weights best: expected equal or fit" in str(r.exception)
    probs = load_model(tmp_path / "ens.json").predict_proba(np.zeros((2, 48, 48), np.uint8))
    assert probs.shape == (2, 7)
    # temperatures fitted on the test split, or on the members' own training faces (which
    # they fit too well), would not be held-out calibration
    for split in ("PrivateTest", "Training", "all"):
        r = CliRunner().invoke(app, [*args, "--split", split])
        message = str(r.exception or r.output)
        assert r.exit_code != 0 and "not the training or test faces" in message, split
    r = CliRunner().invoke(app, [*args, "--split", "Validation"])  # a misspelt name
    assert r.exit_code != 0 and "not the training" not in str(r.exception or r.output)


def test_shipped_names_resolve_to_exports_ensembles_and_onnx(faces, tmp_path, monkeypatch):  # noqa: F811
    from ferlab import classifier
    from ferlab.export import export_onnx, export_safetensors

    a, b = make_classifier(faces, seed=0), make_classifier(faces, seed=1)
    export_safetensors(a, tmp_path / "default")
    save_ensemble(Ensemble([a, b], [1.0, 1.5]), tmp_path / "ensemble")
    export_onnx(b, tmp_path / "fast.onnx")
    monkeypatch.setattr(classifier, "WEIGHTS", tmp_path)
    assert classifier.shipped_models() == ["default", "ensemble", "fast"]
    assert load_model().name == "vggnet_s" and hasattr(load_model("ensemble"), "members")
    fast = load_model("fast")
    np.testing.assert_allclose(fast.predict_proba(faces), b.predict_proba(faces), atol=1e-4)
    assert type(load_model("fast", runtime="onnx")) is type(fast)  # already ONNX: no re-export
    onnx_ens = load_model("ensemble", runtime="onnx")
    assert all(type(m) is type(fast) for m in onnx_ens.members)
    # a Path names a shipped model too when no such file is here; a misspelt name lists them
    monkeypatch.chdir(tmp_path / "ensemble")
    assert load_model(Path("default")).name == "vggnet_s"
    with pytest.raises(FileNotFoundError, match=r"model fats: .*\(default, ensemble, fast\)"):
        load_model("fats")


@pytest.mark.parametrize("name", shipped_models())
def test_every_shipped_model_reads_real_faces(name, real_csv):
    from ferlab.evaluate import evaluate_split

    # 140 real PublicTest faces; the majority class alone is 25% of FER-2013: a wrong or
    # damaged shipped file lands near that, a working one near its documented 65-70%
    metrics = evaluate_split(load_model(name), str(real_csv), "PublicTest")
    assert metrics.accuracy > 0.55, f"{name}: {metrics.accuracy:.2%}"


def test_an_ensembles_own_tta_is_the_default(faces, tmp_path):  # noqa: F811
    from ferlab.predict import Predictor

    a, b = make_classifier(faces, seed=0), make_classifier(faces, seed=1)
    ens = load_model(save_ensemble(Ensemble([a, b], [1.0, 1.5], "shift"), tmp_path / "ens"))
    own, plain = ens.predict_proba(faces[:8]), ens.predict_proba(faces[:8], tta="none")
    assert np.abs(own - plain).max() > 1e-3  # the manifest's shift TTA changes the numbers

    def predicted(**kw):
        return np.stack([p.faces[0].probs for p in Predictor(ens, "none", **kw)(list(faces[:8]))])

    np.testing.assert_allclose(predicted(), own, atol=1e-5)  # the Predictor keeps it
    np.testing.assert_allclose(predicted(tta="none"), plain, atol=1e-5)  # unless told otherwise


def test_members_of_a_stratified_split_are_calibrated_and_scored_on_its_held_out_faces(
    faces,  # noqa: F811
    tmp_path,
    monkeypatch,
):
    from conftest import save_image
    from ferlab.ensemble import build_ensemble
    from ferlab.evaluate import evaluate_probs, evaluate_split, load_split

    rng = np.random.default_rng(0)
    for emotion in ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"):
        for i in range(10):
            save_image(
                tmp_path / "faces" / emotion / f"{i}.png", rng.integers(0, 256, (48, 48), np.uint8)
            )
    monkeypatch.chdir(tmp_path)
    data = "faces"  # relative, as given on a command line
    members = [make_classifier(faces, seed=s) for s in (0, 1)]
    for m in members:  # trained on a stratified split (seed 3) of that folder
        m.meta["config"] = {"data": data, "split": "stratified", "seed": 3}
    # a folder has no official split: calibration once failed here, or (on a CSV) used
    # faces the members had trained on
    ens, accuracy = build_ensemble(members, data, "PublicTest")
    held_out = load_split(data, "val", "stratified", 3)
    want = evaluate_probs(ens.predict_proba(held_out.images), held_out.labels).accuracy
    assert accuracy["ensemble"] == round(want, 4)
    # saved and loaded, the ensemble is scored on those same held-out faces, from anywhere
    loaded = load_model(save_ensemble(ens, tmp_path / "ens"))
    assert loaded.meta["config"] == {
        "data": str(tmp_path / "faces"),
        "split": "stratified",
        "seed": 3,
        "ignore_unknown": False,
    }
    monkeypatch.chdir(tmp_path / "faces")
    got = evaluate_split(loaded, str(tmp_path / "faces"), "PublicTest").accuracy
    assert got == pytest.approx(want, abs=1e-6)
    # the manifest names its data relative to itself, not by this machine's path (the
    # shipped one once held /work/...): moved with its data, it still finds that split
    assert str(tmp_path) not in (tmp_path / "ens.json").read_text()
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for name in ("faces", "ens", "ens.json"):
        (tmp_path / name).rename(moved / name)
    monkeypatch.chdir(moved / "ens")
    loaded = load_model(moved / "ens.json")
    assert loaded.meta["config"]["data"] == str(moved / "faces")
    got = evaluate_split(loaded, "../faces", "PublicTest").accuracy
    assert got == pytest.approx(want, abs=1e-6)
    for name in ("faces", "ens", "ens.json"):
        (moved / name).rename(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    # members of different splits have no common held-out faces
    members[1].meta["config"] = {"data": data, "split": "stratified", "seed": 4}
    with pytest.raises(ValueError, match=r"different splits: .*; stratified \(seed 4\)$"):
        build_ensemble(members, data, "PublicTest")


def test_the_shipped_ensemble_names_each_members_hash():
    """A member replaced without refitting the temperatures is refused on load (the shipped
    manifest once had no hashes, so nothing was checked)."""
    from ferlab.classifier import WEIGHTS

    manifest = WEIGHTS / "ensemble.json"
    members = json.loads(manifest.read_text())["members"]
    for m in members:
        assert hashlib.sha256((WEIGHTS / m["file"]).read_bytes()).hexdigest() == m["sha256"]


def test_the_shipped_ensemble_holds_no_path_of_the_machine_it_was_made_on():
    from ferlab.classifier import WEIGHTS

    data = json.loads((WEIGHTS / "ensemble.json").read_text())["config"]["data"]
    assert not Path(data).is_absolute(), data
