import copy
import hashlib
import json

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from ferlab import load_model
from ferlab.cli import app
from ferlab.evaluate import load_split
from ferlab.soup import average, greedy_soup, recalibrate_bn
from test_export import SMALL, faces, make_classifier, small_classifier  # noqa: F401


def test_average_is_the_mean_of_every_float_tensor(faces):  # noqa: F811
    a, b = make_classifier(faces, seed=0), make_classifier(faces, seed=1)
    for m in b.model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.num_batches_tracked.fill_(7)
    soup = average([a, b], ["a", "b"])
    sa, sb, ss = a.model.state_dict(), b.model.state_dict(), soup.model.state_dict()
    for key, value in ss.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, (sa[key] + sb[key]) / 2)
        else:  # integer buffers are the first ingredient's
            assert torch.equal(value, sa[key]), key
    assert soup.name == a.name and soup.preprocess == a.preprocess
    # a new network: the ingredients are untouched
    assert not torch.equal(sa["features.0.weight"], ss["features.0.weight"])
    # a soup of one model, or of copies of it, is that model
    np.testing.assert_allclose(
        average([a, copy.deepcopy(a)]).predict_proba(faces), a.predict_proba(faces), atol=1e-6
    )


def test_ingredients_of_other_networks_are_refused_by_name(faces):  # noqa: F811
    a = make_classifier(faces, seed=0)
    wider = make_classifier(faces, seed=0, widths=[8, 16, 16, 32])
    with pytest.raises(ValueError, match=r"^wide\.pt: weights differs from a\.pt's"):
        average([a, wider], ["a.pt", "wide.pt"])
    other_input = make_classifier(faces, seed=1, normalize="standardize")
    with pytest.raises(ValueError, match=r"^b\.pt: preprocess differs from a\.pt's"):
        average([a, other_input], ["a.pt", "b.pt"])
    with pytest.raises(ValueError, match="at least one model"):
        average([])


def test_recalibrated_statistics_are_those_of_the_faces(faces):  # noqa: F811
    model = make_classifier(faces, seed=0)
    first_bn = next(m for m in model.model.modules() if isinstance(m, nn.BatchNorm2d))
    seen = []
    hook = first_bn.register_forward_hook(lambda m, x, y: seen.append(x[0].detach()))
    model.predict_proba(faces)  # what the first batch norm receives, in eval mode
    hook.remove()
    inputs = torch.cat(seen)
    recalibrate_bn(model, faces, batch_size=100)  # 300 faces: equal batches, an exact mean
    assert not model.model.training
    torch.testing.assert_close(first_bn.running_mean, inputs.mean((0, 2, 3)), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        first_bn.running_var, inputs.var((0, 2, 3)), rtol=2e-2, atol=1e-4
    )  # per-batch unbiased variances, averaged


def test_greedy_soup_keeps_what_does_not_lower_the_score(faces):  # noqa: F811
    a, b = make_classifier(faces, seed=0), make_classifier(faces, seed=1)
    twin = copy.deepcopy(a)
    target = a.predict_proba(faces)  # a scores 0, the best; its twin too, and their soup is a

    def score(model):  # random networks give every face one class: compare probabilities
        return -float(np.abs(model.predict_proba(faces) - target).mean())

    prepared = []
    kept, scores, soup, best = greedy_soup([b, a, twin], score, lambda m: prepared.append(m) or m)
    assert scores[1] == scores[2] == 0 and scores[0] < 0
    assert kept == [1, 2] and best == 0  # b, tried last, would lower the score: left out
    # every ingredient, then every trial soup, goes through prepare
    assert len(prepared) == 5
    assert soup is prepared[3]  # the soup of a and its twin: the last trial lowered the score


def _fine_tunes(real_csv, tmp_path):
    """Two 1-epoch fine-tunes (seeds 1, 2) of one 1-epoch tiny run."""
    from ferlab import TrainConfig, train

    base = train(
        TrainConfig(
            data=str(real_csv),
            out=str(tmp_path / "runs"),
            name="base",
            model="vggnet_s",
            model_kwargs=SMALL,
            epochs=1,
            threads=1,
        )
    )
    return [
        train(
            TrainConfig(
                data=str(real_csv),
                out=str(tmp_path / "runs"),
                name=f"ft{seed}",
                model="vggnet_s",
                model_kwargs=SMALL,
                init=str(base),
                lr=0.01,
                epochs=1,
                seed=seed,
                threads=1,
            )
        )
        for seed in (1, 2)
    ]


def test_average_command_writes_a_soup_that_loads(real_csv, tmp_path, monkeypatch):
    monkeypatch.setenv("FERLAB_CACHE", str(tmp_path / "cache"))
    fine_tunes = _fine_tunes(real_csv, tmp_path)
    out = tmp_path / "soup"
    args = ["average", *map(str, fine_tunes), "--data", str(real_csv), "--out", str(out)]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    assert "soup of 2: PublicTest accuracy" in r.output
    info = json.loads(out.with_suffix(".json").read_text())
    soup = info["soup"]
    assert [i["model"] for i in soup["ingredients"]] == list(map(str, fine_tunes))
    # each input's weights named by content, so the record outlives its path
    digests = [hashlib.sha256((f / "best.pt").read_bytes()).hexdigest() for f in fine_tunes]
    assert [i["sha256"] for i in soup["ingredients"]] == digests
    assert soup["bn_recalibrated"] and not soup["greedy"]
    assert info["metrics"] == {"PublicTest": {"accuracy": soup["accuracy"]}}
    assert info["config"]["name"] == "soup" and info["config"]["seed"] == 1  # the first input
    loaded = load_model(out.with_suffix(".json"))
    expected = average([load_model(f) for f in fine_tunes]).model.state_dict()
    # the weights are the mean (fp16 on disk); batch-norm statistics were re-estimated
    conv = "features.0.weight"
    torch.testing.assert_close(
        loaded.model.state_dict()[conv], expected[conv], atol=2e-3, rtol=1e-3
    )

    greedy = CliRunner().invoke(app, [*args, "--greedy", "--no-bn", "--out", str(out) + "2"])
    assert greedy.exit_code == 0, greedy.output
    report = json.loads((tmp_path / "soup2.json").read_text())["soup"]
    assert report["greedy"] and not report["bn_recalibrated"]

    # an export is named by its .safetensors: the hash that its .json records
    again = tmp_path / "again"
    args_again = ["average", str(out.with_suffix(".json")), "--no-bn", "--out", str(again)]
    r = CliRunner().invoke(app, [*args_again, "--data", str(real_csv)])
    assert r.exit_code == 0, r.output
    row = json.loads(again.with_suffix(".json").read_text())["soup"]["ingredients"][0]
    assert row["sha256"] == info["sha256"]

    # a soup of one model is that model with its statistics re-estimated on the training faces
    one_args = ["average", str(fine_tunes[0]), "--data", str(real_csv), "--out"]
    one = CliRunner().invoke(app, [*one_args, str(tmp_path / "one")])
    assert one.exit_code == 0, one.output
    got, given = load_model(tmp_path / "one.json"), load_model(fine_tunes[0])
    expected = recalibrate_bn(load_model(fine_tunes[0]), load_split(real_csv, "Training").images)
    bn = "features.1.running_mean"
    for key, want in ((conv, given), (bn, expected)):
        torch.testing.assert_close(
            got.model.state_dict()[key], want.model.state_dict()[key], atol=2e-3, rtol=1e-3
        )
    assert not torch.allclose(given.model.state_dict()[bn], expected.model.state_dict()[bn])

    # scoring soups on the test or training faces would not be held-out selection
    for split in ("PrivateTest", "Training"):
        r = CliRunner().invoke(app, [*args, "--split", split])
        assert r.exit_code != 0 and "not the training or test faces" in str(r.exception or r.output)
