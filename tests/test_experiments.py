import csv
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import save_image
from ferlab import backends
from ferlab.config import TrainConfig
from ferlab.data import EMOTIONS
from ferlab.experiments import Suite, Trial, run_suite, run_trial
from ferlab.report import build_report
from ferlab.stats import summarize, welch

TINY = {
    "model": "vggnet_s",
    "model_kwargs": {"widths": [4, 8, 8, 8]},
    "batch_size": 16,
    "epochs": 1,
    "threads": 1,
}


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FERLAB_CACHE", str(tmp_path / "cache"))


def write_suite(tmp_path, data, variants, repeats=2) -> Suite:
    path = tmp_path / "suite.yaml"
    path.write_text(
        json.dumps(
            {
                "name": "tiny",
                "base": {**TINY, "data": str(data)},
                "variants": variants,
                "repeats": repeats,
                "out": str(tmp_path / "exp"),
            }
        )
    )
    return Suite.from_yaml(path)


def fake_result(root, variant, seed, acc, f1_happy, confusion=None):
    per_class = {c: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 10} for c in EMOTIONS}
    per_class["happy"]["f1"] = f1_happy
    metrics = {
        "accuracy": acc,
        "macro_f1": 0.5,
        "per_class": per_class,
        "loss": 1.0,
        "confusion": confusion or np.eye(7, dtype=int).tolist(),
        "classes": list(EMOTIONS),
    }
    d = root / variant / f"seed{seed}"
    d.mkdir(parents=True)
    (d / "result.json").write_text(
        json.dumps({"variant": variant, "seed": seed, "metrics": metrics, "config": {}})
    )


def test_aggregation_matches_hand_computed_statistics(tmp_path):
    accs = {"base": [0.60, 0.62, 0.64], "new": [0.70, 0.71]}
    f1s = {"base": [0.8, 0.9, 1.0], "new": [0.5, 0.7]}
    for v in accs:
        for seed, (a, f) in enumerate(zip(accs[v], f1s[v], strict=True)):
            fake_result(tmp_path, v, seed, a, f)
    build_report(tmp_path, baseline="base")
    res = json.loads((tmp_path / "results.json").read_text())
    b = res["variants"]["base"]
    assert b["accuracy"]["mean"] == pytest.approx(0.62)
    assert b["accuracy"]["std"] == pytest.approx(0.02)  # sample std of .60 .62 .64
    assert b["accuracy"]["var"] == pytest.approx(0.0004)
    assert b["accuracy"]["sem"] == pytest.approx(0.02 / 3**0.5)
    happy = b["per_class"]["f1"][EMOTIONS.index("happy")]
    assert (happy["max"], happy["min"], happy["mean"]) == pytest.approx((1.0, 0.8, 0.9))
    assert happy["var"] == pytest.approx(0.01)
    cmp = res["variants"]["new"]["vs_baseline"]
    expected = welch(accs["base"], accs["new"])
    assert cmp["diff"] == pytest.approx(0.085) and cmp["p"] == pytest.approx(expected.p)
    md = (tmp_path / "report.md").read_text()
    assert "| new | 2 | 70.50% |" in md and "+8.50 pt" in md
    # variance in the unit of its neighbours: (2 pt)² beside percentages, not "0.0004"
    assert "| base | 3 | 62.00% | 2.00% | 4 pt² |" in md
    row = next(line for line in md.splitlines() if line.startswith("| f1 | Variance |"))
    assert row.split("|")[3 + EMOTIONS.index("happy")].strip() == "0.01"
    # the report's table layout: Max/Min/Std/Variance/Mean rows, labels 0..6 as columns
    row = next(line for line in md.splitlines() if line.startswith("| f1 | Mean |"))
    assert row.split("|")[3 + EMOTIONS.index("happy")].strip() == "0.9000"
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table>" in html
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5 * 7


def test_markdown_numbers_match_csv(tmp_path):
    rng = np.random.default_rng(0)
    for seed in range(3):
        fake_result(tmp_path, "a", seed, float(rng.uniform(0.5, 0.7)), float(rng.uniform(0, 1)))
    build_report(tmp_path)
    with open(tmp_path / "results.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["class"] == "happy"]
    mean_f1 = summarize([float(r["f1"]) for r in rows]).mean
    mean_acc = summarize([float(r["accuracy"]) for r in rows]).mean
    md = (tmp_path / "report.md").read_text()
    assert f"{mean_acc:.2%}" in md
    row = next(line for line in md.splitlines() if line.startswith("| f1 | Mean |"))
    assert row.split("|")[3 + EMOTIONS.index("happy")].strip() == f"{mean_f1:.4f}"


def test_trials_run_seed_major_with_per_variant_repeats(tmp_path):
    suite = write_suite(tmp_path, "x.csv", {"a": {}, "b": {"repeats": 1}, "c": {}}, repeats=3)
    order = [(t.variant, t.seed) for t in suite.trials()]
    assert order == [("a", 0), ("b", 0), ("c", 0), ("a", 1), ("c", 1), ("a", 2), ("c", 2)]
    # --repeats scales the suite down or up, but not past a variant's own cap
    assert [t.seed for t in suite.trials(repeats=2, variants=["b"])] == [0]
    assert [(t.variant, t.seed) for t in suite.trials(repeats=2, variants=["a", "b"])] == [
        ("a", 0),
        ("b", 0),
        ("a", 1),
    ]


def test_suite_end_to_end_resume_and_failure(tiny_csv, tmp_path, monkeypatch, caplog):
    suite = write_suite(
        tmp_path,
        tiny_csv,
        {
            "base": {},
            "adamw": {"optimizer": "adamw"},
            "broken": {
                "model": "vgg19",
                "model_kwargs": {},
                "pretrained": str(tmp_path / "no.pth"),
            },
        },
    )
    with caplog.at_level("INFO", logger="ferlab.backends"):
        trials = run_suite(suite)
    assert sum(t.done for t in trials) == 4 and sum(t.failed for t in trials) == 2
    # the live view: counts, the running trial and, once one has finished, an ETA
    assert "[0 done, 0 failed, 1 running, 5 left] running base/seed0" in caplog.text
    assert re.search(r"\[1 done, 0 failed, 1 running, 4 left, suite ETA \d+ min\]", caplog.text)
    assert "[4 done, 2 failed, 0 running, 0 left, suite ETA 0 min] finished" in caplog.text
    err = json.loads((tmp_path / "exp/tiny/broken/seed0/error.json").read_text())
    assert "no.pth: no such file" in err["error"]  # refused before the data loads
    seed1 = tmp_path / "exp/tiny/broken/seed1/error.json"  # as a worker's traceback reads
    seed1.write_text(json.dumps({**err, "error": "Traceback:\n  line two | x\nValueError: y"}))
    build_report(tmp_path / "exp" / "tiny", baseline="base")
    md = (tmp_path / "exp/tiny/report.md").read_text()
    assert (
        "## Failed trials" in md
        and "| broken/seed1 | Traceback: line two / x ValueError: y |" in md
    )
    # a restarted suite runs nothing that finished; a new variant runs only its own trials
    calls = []
    experiments = sys.modules["ferlab.experiments"]
    real = experiments.run_trial
    monkeypatch.setattr(
        sys.modules["ferlab.backends"],
        "run_trial",
        lambda cfg, split, threads=0: calls.append(cfg.out) or real(cfg, split),
    )
    suite.variants.pop("broken")
    suite.variants["sgd"] = {"optimizer": "sgd", "lr": 0.01}
    run_suite(suite)
    assert [re.sub(r".*/", "", c) for c in calls] == ["sgd", "sgd"]
    # the suite's record: a report rebuilt from the folder alone compares against `base`
    # (it took the alphabetically first variant, `adamw`) and leaves out the dropped variant
    root = tmp_path / "exp" / "tiny"
    assert json.loads((root / "suite.json").read_text())["variants"] == ["base", "adamw", "sgd"]
    build_report(root)
    md = (root / "report.md").read_text()
    assert "Baseline for comparisons: `base`" in md and "broken" not in md
    assert "- sgd: lr 0.01, optimizer 'sgd'" in md  # what each variant changes


def test_cli_experiment_with_workers_and_budget(tiny_csv, tmp_path):
    from typer.testing import CliRunner

    from ferlab.cli import app

    suite = tmp_path / "s.yaml"
    suite.write_text(
        json.dumps(
            {
                "name": "cli",
                "base": {**TINY, "data": str(tiny_csv)},
                "variants": {"a": {}, "b": {"lr": 0.001}},
            }
        )
    )
    r = CliRunner().invoke(
        app,
        [
            "experiment",
            str(suite),
            "--repeats",
            "1",
            "--epochs",
            "2",
            "--workers",
            "2",
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert r.exit_code == 0, r.output
    root = tmp_path / "x" / "cli"
    for v in ("a", "b"):
        with open(root / v / "seed0" / "metrics.csv") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 2  # --epochs 2 overrode the suite's 1
    assert (root / "report.md").is_file() and (root / "plots" / "curves.png").is_file()
    assert "at most 2 epoch(s) per trial" in (root / "report.md").read_text()
    assert "runs per variant: a 1, b 1." in (root / "report.md").read_text()
    # a trial killed after its last checkpoint resumes only under the recipe it began with
    (root / "a" / "seed0" / "result.json").unlink()
    args = ["experiment", str(suite), "--repeats", "1", "--out", str(tmp_path / "x")]
    for flag in ("--repeats", "--epochs", "--workers"):  # 0 repeats "finished" an empty suite
        r = CliRunner().invoke(app, [*args, flag, "0"])
        assert r.exit_code == 2 and "greater than or equal to 1" in r.output, r.output
    r = CliRunner().invoke(app, [*args, "--variants", "a", "--epochs", "3"])
    assert r.exit_code == 1
    assert "a/seed0: ValueError: " in r.output and "was started with other epochs" in r.output
    assert not (root / "a" / "seed0" / "result.json").exists()
    # the recipe that counts is last.pt's, which train() resumes with, not config.yaml
    saved = root / "a" / "seed0" / "config.yaml"
    saved.write_text(saved.read_text().replace("epochs: 2", "epochs: 3"))
    r = CliRunner().invoke(app, [*args, "--variants", "a", "--epochs", "3"])
    assert r.exit_code == 1 and "was started with other epochs" in r.output
    # a variant the suite no longer has stays out of its report
    shutil.copytree(root / "b", root / "dropped")
    result = root / "dropped" / "seed0" / "result.json"  # (a copy keeping "b" is refused)
    result.write_text(json.dumps({**json.loads(result.read_text()), "variant": "dropped"}))
    r = CliRunner().invoke(app, [*args, "--epochs", "2"])
    assert r.exit_code == 0, r.output
    assert json.loads((root / "a" / "seed0" / "result.json").read_text())["config"]["epochs"] == 2
    md = (root / "report.md").read_text()
    assert "dropped" not in md and "evaluated once on the test split" in md
    # finished trials count only for the recipe and split they ran: a 2-epoch smoke run
    # must not be averaged into a 3-epoch suite
    before = (root / "b" / "seed0" / "result.json").read_bytes()
    r = CliRunner().invoke(app, [*args, "--epochs", "3"])
    assert r.exit_code == 1  # ferlab's main() prints it as one line
    assert "a/seed0: finished with other epochs; delete it to retrain" in str(r.exception)
    assert (root / "b" / "seed0" / "result.json").read_bytes() == before
    # the same report, written elsewhere (e.g. docs/) with the suite's notes and baseline
    doc = tmp_path / "doc"
    r = CliRunner().invoke(app, ["report", str(root), "--suite", str(suite), "--out", str(doc)])
    assert r.exit_code == 0, r.output
    md = (doc / "report.md").read_text()
    assert md.startswith("# cli\n") and "Baseline for comparisons: `a`" in md
    assert (doc / "plots" / "curves.png").is_file() and "data:image/png;base64" in (
        doc / "report.html"
    ).read_text()


def _trial_or_die(cfg, split, threads=0):
    """Stands in for run_trial in the worker processes: `die` kills its process outright
    while `slow` runs in the other one; `raise` fails the way run_trial does."""
    run_dir = Path(cfg.out) / cfg.name
    with open(run_dir / "starts.txt", "a") as f:
        f.write("start\n")
    if cfg.name == "die":
        deadline = time.monotonic() + 120
        while not (Path(cfg.out) / "slow" / "starts.txt").is_file() and time.monotonic() < deadline:
            time.sleep(0.05)
        os._exit(3)
    if cfg.name == "slow":
        time.sleep(3)  # still running when `die` dies
    if cfg.name == "raise":
        (run_dir / "error.json").write_text(json.dumps({"error": "ValueError: bad"}))
        raise ValueError("bad")
    (run_dir / "result.json").write_text("{}")
    return {}


def test_a_trial_that_kills_its_worker_fails_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(backends, "run_trial", _trial_or_die)
    todo = []
    for name in ["die", "slow", "raise", "a"]:
        (tmp_path / name).mkdir()
        todo.append((TrainConfig(out=str(tmp_path), name=name), Trial(name, 0, tmp_path / name)))
    backends.run_local(todo, "test", workers=2)
    starts = {t.variant: (t.run_dir / "starts.txt").read_text().count("start") for _, t in todo}
    assert starts == {"die": 1, "slow": 1, "raise": 1, "a": 1}
    assert [t.variant for _, t in todo if t.done] == ["slow", "a"]
    errors = {
        t.variant: json.loads((t.run_dir / "error.json").read_text())["error"]
        for _, t in todo
        if not t.done
    }
    # the dead trial's error is written for it; the raising one keeps its own
    assert errors == {"die": "worker process died (exit code 3)", "raise": "ValueError: bad"}


@pytest.mark.slow
def test_ray_backend_runs_two_trials(tiny_csv, tmp_path):
    pytest.importorskip("ray")
    suite = write_suite(tmp_path, tiny_csv, {"a": {}, "b": {"lr": 0.001}}, repeats=1)
    trials = run_suite(suite, backend="ray", workers=2)
    assert all(t.done for t in trials)
    result = json.loads((trials[1].run_dir / "result.json").read_text())
    assert result["config"]["lr"] == 0.001 and 0 <= result["metrics"]["accuracy"] <= 1


def test_an_unknown_backend_is_refused_before_anything_is_written(tiny_csv, tmp_path):
    # it wrote suite.json first, and with every trial done it was never checked (exit 0)
    suite = write_suite(tmp_path, tiny_csv, {"a": {}}, repeats=1)
    with pytest.raises(ValueError, match="unknown backend 'slurm'; expected local or ray"):
        run_suite(suite, backend="slurm")
    assert not (Path(suite.out) / suite.name).exists()


SUITES = Path(__file__).parent.parent / "configs" / "experiments"


@pytest.mark.parametrize("path", sorted(SUITES.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_suites_load_and_build_every_trial_config(path):
    suite = Suite.from_yaml(path)  # validate() builds each variant's TrainConfig
    assert suite.baseline_name == "optimal" and suite.report_split == "test"
    for trial in suite.trials(repeats=1):
        suite.config(trial.variant, trial.seed, epochs=2, subset=0.1)


def test_vgg19_report_suite_holds_the_reports_experiments():
    suite = Suite.from_yaml(SUITES / "vgg19_report.yaml")
    assert suite.base["model"] == "vgg19" and suite.base["lr"] == 1e-4
    assert {suite.config(v, 0).batch_size for v in suite.variants} == {2, 32, 2048}
    assert {suite.config(v, 0).lr for v in suite.variants} == {1e-2, 1e-3, 1e-4, 1e-5}
    assert {suite.config(v, 0).frozen_blocks for v in suite.variants} == {0, 1, 3}
    assert suite.repeats == 5


def test_report_lists_the_baseline_first_then_the_suite_order(tmp_path):
    for v in ("alpha", "mid", "zeta", "extra"):
        fake_result(tmp_path, v, 0, 0.5, 0.5)
    for order in (["zeta", "mid", "alpha"], ["mid", "zeta", "alpha"]):
        build_report(tmp_path, baseline="zeta", order=order)
        md = (tmp_path / "report.md").read_text()
        rows = [line.split("|")[1].strip() for line in md.splitlines() if line.startswith("| ")]
        # the accuracy table: the baseline first, wherever the suite lists it
        assert rows[:5] == ["variant", "zeta", "mid", "alpha", "extra"], order
    with pytest.raises(ValueError, match=r"baseline 'zteta': no such variant .*'mid'"):
        build_report(tmp_path, baseline="zteta")


def test_val_loss_plots_compare_only_the_variable_they_name(tmp_path):
    from ferlab.report import _only_differs_in, collect, group

    base_cfg = {"lr": 1e-4, "batch_size": 32, "augment": True, "seed": 0}
    configs = {
        "optimal": base_cfg,
        "lr_big": {**base_cfg, "lr": 1e-2},
        "no_aug": {**base_cfg, "augment": False},
    }
    for v, cfg in configs.items():
        fake_result(tmp_path, v, 0, 0.5, 0.5)
        run = tmp_path / v / "seed0"
        r = json.loads((run / "result.json").read_text())
        (run / "result.json").write_text(json.dumps({**r, "config": cfg}))
        (run / "metrics.csv").write_text(
            "epoch,train_loss,val_loss,train_acc,val_acc\n1,2.0,1.9,0.2,0.2\n2,1.8,1.7,0.3,0.3\n"
        )
    groups = group(collect(tmp_path)[0])
    assert _only_differs_in(groups["lr_big"], groups["optimal"], "lr")
    assert not _only_differs_in(groups["no_aug"], groups["optimal"], "lr")
    assert _only_differs_in(groups["optimal"], groups["optimal"], "lr")
    files = build_report(tmp_path, baseline="optimal")
    names = {f.name for f in files}
    assert "val_loss_lr.png" in names and "val_loss_batch_size.png" not in names


def test_suite_refuses_keys_that_each_trial_sets(tmp_path, tiny_csv):
    with pytest.raises(ValueError, match=r"suite\.yaml: base: seed cannot be set in a suite"):
        _suite_with(tmp_path, {"seed": 42})
    with pytest.raises(ValueError, match=r"suite\.yaml: b: name, out cannot be set"):
        write_suite(tmp_path, tiny_csv, {"a": {}, "b": {"out": "x", "name": "y"}})


def _suite_with(tmp_path, base):
    path = tmp_path / "suite.yaml"
    path.write_text(json.dumps({"name": "s", "base": base, "variants": {"a": {}}}))
    return Suite.from_yaml(path)


def test_malformed_suites_fail_with_the_file_named(tmp_path):
    path = tmp_path / "suite.yaml"
    for text, message in [
        ("name: [s", "not valid YAML"),
        ("- a\n- b", "expected a mapping of keys, got list"),
        ("variants: [a, b]", r"variants: expected a mapping, got \['a', 'b'\]"),
        ("base: 3", "base: expected a mapping, got 3"),
        ("variants: {a: 5}", "variant a: expected a mapping, got 5"),
        # wrong types once crashed with a traceback, or only after every trial had run
        ("repeats: '3'", "repeats: expected a whole number at least 1, got '3'"),
        ("variants: {a: {repeats: 2.5}}", "a: repeats: expected a whole number at least 1"),
        ("name: null", "name: expected a string, got None"),
        ("notes: [a, b]", r"notes: expected a string, got \['a', 'b'\]"),
        ("base: {repeats: 5}", "base: repeats is set for the suite or per variant"),
        # a misspelt choice in a variant fails when the suite loads, not when its trial runs
        ("variants: {a: {optimizer: adamm}}", "config optimizer: expected one of adam, adamw"),
        # a variant names a folder: an int crashed, `a/b` ran in a/b/ and left the report
        ("variants: {32: {}}", "variant 32: expected a name of letters, digits"),
        ("variants: {a/b: {}}", "variant 'a/b': expected a name of letters, digits"),
        ("variants: {..: {}}", r"variant '\.\.': expected a name"),  # ran in the parent
    ]:
        path.write_text(text + "\n")
        with pytest.raises(ValueError, match=message) as e:
            Suite.from_yaml(path)
        assert str(e.value).startswith(f"{path}: "), e.value


def test_a_trial_whose_report_split_is_empty_fails_before_training(tmp_path):
    # the per-image release without PrivateTest_ names: its official split has no test faces
    faces = np.random.default_rng(0).integers(0, 256, (48, 48), dtype=np.uint8)
    for part in ("train", "test"):
        for i, emotion in enumerate(EMOTIONS):
            save_image(tmp_path / "data" / part / emotion / f"{i}.png", faces)
    cfg = TrainConfig(data=str(tmp_path / "data"), out=str(tmp_path / "runs"), name="t")
    with pytest.raises(ValueError, match="holds no faces"):
        run_trial(cfg, "test")
    assert sorted(p.name for p in (tmp_path / "runs" / "t").iterdir()) == ["error.json"]


def test_report_refuses_runs_that_cannot_be_pooled_or_compared(tmp_path):
    def with_config(variant, run, split="test", **cfg):
        fake_result(tmp_path, variant, run, 0.5, 0.5)
        path = tmp_path / variant / f"seed{run}" / "result.json"
        r = json.loads(path.read_text())
        path.write_text(json.dumps({**r, "split": split, "config": {"epochs": 10, **cfg}}))

    # a smoke run's 2-epoch trial left beside the full ones must not enter their mean
    with_config("base", 0, seed=0, threads=2)
    with_config("base", 1, seed=1, threads=1)  # seed and threads are not the recipe
    with_config("new", 0, lr=0.01)
    build_report(tmp_path, baseline="base")
    assert "- new: lr 0.01" in (tmp_path / "report.md").read_text()
    with_config("base", 2, epochs=2)
    with pytest.raises(
        ValueError, match=r"base: .*seed0 and .*seed2 were trained with other epochs"
    ):
        build_report(tmp_path, baseline="base")
    (tmp_path / "base" / "seed2" / "result.json").unlink()
    # a backup copy of a trial folder would count its seed twice
    shutil.copytree(tmp_path / "base" / "seed1", tmp_path / "base" / "seed1-copy")
    with pytest.raises(ValueError, match=r"base: .*seed1 and .*seed1-copy are both seed 1"):
        build_report(tmp_path, baseline="base")
    shutil.rmtree(tmp_path / "base" / "seed1-copy")
    with_config("other", 0, split="val")
    with pytest.raises(ValueError, match=r"different splits \['test', 'val'\]"):
        build_report(tmp_path, baseline="base")


def test_a_suite_whose_every_trial_failed_still_reports_the_errors(tmp_path):
    run = tmp_path / "a" / "seed0"
    run.mkdir(parents=True)
    (run / "error.json").write_text(json.dumps({"error": "RuntimeError: out of memory"}))
    build_report(tmp_path)  # once a KeyError, before the CLI printed the trials' errors
    assert "| a/seed0 | RuntimeError: out of memory |" in (tmp_path / "report.md").read_text()


def test_reports_fill_in_settings_an_older_version_did_not_save(tmp_path):
    from ferlab.config import TrainConfig, recipe_changes

    new = TrainConfig(seed=1, threads=2).to_dict()
    old = {k: v for k, v in TrainConfig().to_dict().items() if k != "mix_prob"}
    assert recipe_changes(old, new) == []  # seed and threads aside; betas tuple == list
    assert recipe_changes(old, {**new, "mix_prob": 0.5}) == ["mix_prob"]


@pytest.mark.parametrize(
    "name, what, texts",
    [
        ("result.json", "a trial result", ["{", '{"seed": 0}', '{"metrics": {}}']),
        ("error.json", "a trial error", ["{", '{"traceback": ""}']),  # once a bare JSON error
    ],
)
def test_a_broken_trial_record_names_its_file(tmp_path, name, what, texts):
    fake_result(tmp_path, "a", 0, 0.5, 0.5)
    broken = tmp_path / "b" / "seed0" / name
    broken.parent.mkdir(parents=True)
    for text in texts:
        broken.write_text(text)
        with pytest.raises(ValueError, match=f"{broken}: not {what}"):
            build_report(tmp_path)


def test_mean_curves_keep_the_epochs_of_runs_that_went_on(tmp_path):
    from ferlab.plots import variant_curves_figure

    def rows(n):
        return [
            dict(train_loss=1, val_loss=1, train_acc=0.5, val_acc=0.5 + e / 100) for e in range(n)
        ]

    fig = variant_curves_figure({"a": [rows(3), rows(5)]})
    (line,) = fig.axes[3].get_lines()  # val acc; the shorter run stopped early
    assert list(line.get_xdata()) == [1, 2, 3, 4, 5]
    assert line.get_ydata()[-1] == pytest.approx(0.54)
