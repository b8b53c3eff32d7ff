import datetime
import json

import numpy as np
import pytest
import torch

from ferlab import EMOTIONS, Classifier
from ferlab.checkpoint import load_checkpoint, save_checkpoint
from ferlab.evaluate import Metrics, evaluate_logits, evaluate_split, predict_logits
from ferlab.models import create_model
from ferlab.transforms import tta_views


def test_metrics_against_hand_computed_values():
    y_true = np.array([0, 0, 0, 3, 3, 4])
    y_pred = np.array([0, 0, 3, 3, 4, 4])
    m = Metrics.from_predictions(y_true, y_pred)
    assert m.accuracy == pytest.approx(4 / 6)
    # angry: tp 2, fp 0, fn 1 -> P 1, R 2/3, F1 0.8
    assert (m.precision[0], m.recall[0], m.f1[0]) == pytest.approx((1.0, 2 / 3, 0.8))
    # happy: tp 1, fp 1, fn 1 -> 0.5 / 0.5 / 0.5 ; sad: tp 1, fp 1, fn 0 -> 0.5 / 1 / 2/3
    assert (m.precision[3], m.recall[3], m.f1[3]) == pytest.approx((0.5, 0.5, 0.5))
    assert (m.precision[4], m.recall[4], m.f1[4]) == pytest.approx((0.5, 1.0, 2 / 3))
    assert m.support == [3, 0, 0, 2, 1, 0, 0]
    assert m.macro_f1 == pytest.approx((0.8 + 0.5 + 2 / 3) / 3)  # over classes present
    assert m.confusion[0] == [2, 0, 0, 1, 0, 0, 0]
    assert m.confusion[3] == [0, 0, 0, 1, 1, 0, 0]
    np.testing.assert_allclose(m.normalized_confusion()[0, [0, 3]], [2 / 3, 1 / 3])


def test_macro_f1_counts_classes_that_are_only_predicted():
    from sklearn.metrics import f1_score

    y_true, y_pred = np.array([0, 0, 1]), np.array([0, 2, 1])  # disgust, never true, predicted
    m = Metrics.from_predictions(y_true, y_pred)
    assert m.macro_f1 == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m.macro_f1 == pytest.approx(f1_score(y_true, y_pred, average="macro"))


def test_metrics_outputs(tmp_path):
    m = Metrics.from_predictions(np.array([0, 1, 2, 3]), np.array([0, 1, 2, 2]), loss=0.5)
    written = m.save(tmp_path, ("json", "csv", "md"), title="t")
    assert [p.name for p in written] == [
        "metrics.json",
        "metrics.csv",
        "metrics.md",
        "confusion.png",
    ]
    d = json.loads((tmp_path / "metrics.json").read_text())
    assert d["accuracy"] == 0.75 and d["per_class"]["fear"]["precision"] == 0.5
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0] == "class,precision,recall,f1,support" and lines[-1] == "accuracy,,,0.7500,4"
    md = (tmp_path / "metrics.md").read_text()
    assert "accuracy: **75.00%**" in md and "| happy | 0.0000 | 0.0000 | 0.0000 | 1 |" in md
    assert (tmp_path / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="unknown format 'xml'"):
        m.save(tmp_path / "again", ("json", "xml"))
    assert not (tmp_path / "again").exists()  # all formats or none


def test_evaluate_logits_loss():
    logits = torch.tensor([[2.0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 3.0]])
    m = evaluate_logits(logits, torch.tensor([0, 0]))
    expected = float(torch.nn.functional.cross_entropy(logits, torch.tensor([0, 0])))
    assert m.accuracy == 0.5 and m.loss == pytest.approx(expected)


def _classifier(tmp_path, normalize: str) -> Classifier:
    torch.manual_seed(0)
    model = create_model("vggnet_s", widths=[4, 4, 4, 4]).eval()
    spec = {"size": 48, "channels": 1, "normalize": normalize, "mean": 0.5, "std": 0.25}
    path = tmp_path / f"{normalize}.pt"
    save_checkpoint(
        {
            "model_name": "vggnet_s",
            "model_kwargs": {"widths": [4, 4, 4, 4]},
            "classes": list(EMOTIONS),
            "preprocess": spec,
            "model": model.state_dict(),
        },
        path,
    )
    from ferlab import load_model

    return load_model(path)


@pytest.mark.parametrize(
    "normalize, fn",
    [
        ("minmax", lambda x: x / 255),
        ("none", lambda x: x),
        ("standardize", lambda x: (x / 255 - 0.5) / 0.25),
    ],
)
def test_predict_proba_applies_checkpoint_preprocessing(tmp_path, normalize, fn):
    clf = _classifier(tmp_path, normalize)
    faces = np.random.default_rng(0).integers(0, 256, (5, 48, 48), dtype=np.uint8)
    probs = clf.predict_proba(faces)
    assert probs.dtype == np.float32 and probs.shape == (5, 7)
    np.testing.assert_allclose(probs.sum(1), 1, atol=1e-5)
    with torch.no_grad():
        x = fn(torch.from_numpy(faces).float()).unsqueeze(1)
        expected = torch.softmax(clf.model(x), 1).numpy()
    np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_predict_proba_batches_large_inputs(tmp_path):
    clf = _classifier(tmp_path, "minmax")
    faces = np.random.default_rng(1).integers(0, 256, (20000, 48, 48), dtype=np.uint8)
    probs = clf.predict_proba(faces, batch_size=1000)
    assert probs.shape == (20000, 7)
    np.testing.assert_allclose(
        probs[[0, 9999, 19999]], clf.predict_proba(faces[[0, 9999, 19999]]), atol=1e-5
    )
    with pytest.raises(ValueError, match=r"faces must be uint8 \(N, 48, 48\)"):
        clf.predict_proba(faces[:2].astype(np.float32))


@pytest.mark.parametrize("tta", ["flip", "shift"])
def test_tta_is_mirror_invariant(tmp_path, tta):
    clf = _classifier(tmp_path, "minmax")
    faces = torch.randint(0, 256, (4, 48, 48), dtype=torch.uint8)
    a = predict_logits(clf.model, faces, clf.preprocess, tta=tta)
    b = predict_logits(clf.model, faces.flip(-1), clf.preprocess, tta=tta)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, predict_logits(clf.model, faces, clf.preprocess))
    with pytest.raises(ValueError, match="unknown tta 'crop'; expected one of none, flip"):
        predict_logits(clf.model, faces, clf.preprocess, tta="crop")
    # checked before the data loads (there is none here), not after
    with pytest.raises(ValueError, match="unknown tta 'crop'"):
        evaluate_split(clf, str(tmp_path / "no-such.csv"), tta="crop")


def test_shift_views_move_the_face_two_pixels():
    x = torch.zeros(1, 1, 48, 48)
    x[..., 20, 30] = 1  # one bright pixel at row 20, column 30
    views = tta_views(x, "shift")
    assert len(views) == 10 and all(v.shape == x.shape for v in views)
    where = [tuple(int(i) for i in v[0, 0].nonzero()[0]) for v in views[:5]]
    assert where == [(20, 30), (20, 28), (20, 32), (18, 30), (22, 30)]
    torch.testing.assert_close(views[5], x.flip(-1))
    columns = tta_views(torch.arange(48.0).expand(1, 1, 48, 48), "shift")  # pixel = column
    assert columns[1][0, 0, 0, -4:].tolist() == [46, 47, 47, 47]  # the edge column is repeated
    assert columns[2][0, 0, 0, :3].tolist() == [0, 0, 0]


def test_load_checkpoint_rejects_other_files(tmp_path):
    (tmp_path / "x.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a ferlab checkpoint"):
        load_checkpoint(tmp_path / "x.pt")
    # a pickle of something that is not tensors (a date): refused in one line that names why
    # and never suggests weights_only=False
    torch.save({"when": datetime.date(2026, 1, 1)}, tmp_path / "d.pt")
    with pytest.raises(ValueError) as e:
        load_checkpoint(tmp_path / "d.pt")
    assert "\n" not in str(e.value) and "weights_only" not in str(e.value)
    assert "d.pt: not a ferlab checkpoint" in str(e.value) and "datetime" in str(e.value)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "y.pt")
    with pytest.raises(ValueError, match="needs model_name, model, preprocess"):
        load_checkpoint(tmp_path / "y.pt")


def test_evaluate_split_scores_a_model_on_its_own_held_out_faces(real_csv, tmp_path, caplog):
    """A model trained on a stratified split (seed 3) is evaluated on that split's val faces,
    not on seed 0's, most of which it trained on; other data gets the official split."""
    from ferlab.evaluate import evaluate_probs, load_split
    from ferlab.transforms import preprocess_spec

    trained = {"data": str(real_csv), "split": "stratified", "seed": 3}
    clf = Classifier(
        create_model("vggnet_s", widths=[4, 8, 8, 8]),
        preprocess_spec("minmax"),
        meta={"config": trained},
    )
    own = load_split(str(real_csv), "val", "stratified", seed=3)
    assert not np.array_equal(own.images, load_split(str(real_csv), "val", "stratified").images)
    got = evaluate_split(clf, str(real_csv), "val")
    want = evaluate_probs(clf.predict_proba(own.images), own.labels)
    assert got.support == want.support and got.confusion == want.confusion
    assert sum(got.support) == 70  # 10% of 700 rows
    assert sum(evaluate_split(clf, str(real_csv), "val", split_mode="official").support) == 140
    with pytest.raises(ValueError, match=r"^split_mode: expected official or stratified, got 'x'"):
        evaluate_split(clf, str(real_csv), "val", split_mode="x")
    copy = tmp_path / "other.csv"
    copy.write_bytes(real_csv.read_bytes())
    with caplog.at_level("WARNING", logger="ferlab.evaluate"):
        assert sum(evaluate_split(clf, str(copy), "PublicTest").support) == 140
    # not recognised as its data, so the official split: it may hold training faces, say so
    assert "trained on a stratified split of" in caplog.text and "other.csv" in caplog.text


def test_an_empty_split_is_named(tiny_model, tmp_path):
    from conftest import synthetic_rows, write_csv

    rows = [r for r in synthetic_rows() if r[2] != "PrivateTest"]
    data = write_csv(tmp_path / "no-private.csv", rows)
    with pytest.raises(ValueError, match=r"no-private.csv: split 'PrivateTest' .* holds no faces"):
        evaluate_split(tiny_model, str(data), "PrivateTest")
    assert evaluate_split(tiny_model, str(data), "PublicTest").support == [2] * 7


def test_split_all_scores_every_face_of_data_the_model_never_saw(tiny_model, tmp_path, caplog):
    """A labelled folder with no split of its own (another data set, a user's faces)."""
    from conftest import save_image, synthetic_rows, write_csv
    from ferlab import EMOTIONS

    rows = synthetic_rows(per_class=1)  # 1 face per class in each of the 3 usages
    for i, (label, img, _) in enumerate(rows):
        save_image(tmp_path / "faces" / EMOTIONS[label] / f"{i}.png", img)
    folder = str(tmp_path / "faces")
    with pytest.raises(ValueError, match="split 'official' needs Training and PublicTest rows"):
        evaluate_split(tiny_model, folder, "PublicTest")
    with caplog.at_level("WARNING", logger="ferlab.evaluate"):
        got = evaluate_split(tiny_model, folder, "all")
    assert got.support == [3] * 7 and "not a test" not in caplog.text
    want = tiny_model.predict_proba(np.stack([r[1] for r in rows])).argmax(1)
    assert got.confusion == Metrics.from_predictions(np.array([r[0] for r in rows]), want).confusion
    # on the model's own training data, all of it includes its training faces: said
    own = write_csv(tmp_path / "own.csv", rows)
    clf = Classifier(tiny_model.model, tiny_model.preprocess, meta={"config": {"data": str(own)}})
    with caplog.at_level("WARNING", logger="ferlab.evaluate"):
        assert sum(evaluate_split(clf, str(own), "all").support) == 21
    assert "includes the faces" in caplog.text and "not a test" in caplog.text
