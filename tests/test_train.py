import csv
import re
import sys
from pathlib import Path

import pytest
import torch
import yaml

from ferlab import TrainConfig, load_model, train
from ferlab.checkpoint import save_checkpoint
from ferlab.config import parse_override
from ferlab.distill import teacher_probs
from ferlab.parts import load_splits

TINY = {"widths": [8, 16, 16, 16]}


def _cfg(data, tmp_path, **kw) -> TrainConfig:
    base = dict(
        data=str(data),
        out=str(tmp_path / "runs"),
        model="vggnet_s",
        model_kwargs=TINY,
        batch_size=64,
        erase=0.5,
        threads=1,
    )
    base.update(kw)
    return TrainConfig(**base)


def _rows(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return [
            {k: v for k, v in r.items() if k not in ("seconds", "images_per_s", "elapsed")}
            for r in csv.DictReader(f)
        ]


def _kill_in_epoch(n: int, monkeypatch, cfg: TrainConfig) -> None:
    """Train ``cfg``, killed as epoch ``n`` starts (after epoch n - 1's checkpoint)."""
    train_module = sys.modules["ferlab.train"]
    real_epoch, calls = train_module.train_one_epoch, []

    def killed(*args, **kw):
        calls.append(1)
        if len(calls) == n:
            raise KeyboardInterrupt
        return real_epoch(*args, **kw)

    with monkeypatch.context() as m:
        m.setattr(train_module, "train_one_epoch", killed)
        with pytest.raises(KeyboardInterrupt):
            train(cfg)


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FERLAB_CACHE", str(tmp_path / "cache"))


def test_one_epoch_on_real_rows_writes_the_run(real_csv, tmp_path):
    run = train(_cfg(real_csv, tmp_path, name="one", epochs=1))
    for name in ("config.yaml", "metrics.csv", "last.pt", "best.pt", "curves.png"):
        assert (run / name).is_file(), name
    rows = _rows(run)
    assert len(rows) == 1 and rows[0]["epoch"] == "1"
    assert 0 <= float(rows[0]["val_acc"]) <= 1
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"] == "vggnet_s" and saved["data"] == str(real_csv)
    ckpt = torch.load(run / "last.pt", weights_only=True)
    assert ckpt["model_name"] == "vggnet_s" and ckpt["state"]["epoch"] == 0
    probs = load_model(run).predict_proba(torch.randint(0, 255, (3, 48, 48)).byte().numpy())
    assert probs.shape == (3, 7)


@pytest.mark.parametrize("scheduler", ["onecycle", "cosine"])
def test_a_resume_with_another_schedule_length_is_refused(tiny_csv, tmp_path, scheduler):
    """Resumed with another --nproc (or after the folder grew), an epoch has another number
    of batches: onecycle then failed past its last step, and cosine climbed again."""
    from ferlab.distributed import Dist
    from ferlab.parts import build_parts, load_splits, restore

    cfg = _cfg(tiny_csv, tmp_path, name=scheduler, epochs=1, batch_size=16, scheduler=scheduler)
    ckpt = torch.load(train(cfg) / "last.pt", weights_only=True)
    parts = build_parts(cfg, load_splits(cfg), torch.device("cpu"), Dist())
    restore(ckpt, parts)  # the same launch: fine
    key = "total_steps" if scheduler == "onecycle" else "T_max"
    ckpt["scheduler"][key] -= 1  # as saved by 2 processes, each with a smaller share
    with pytest.raises(ValueError, match=r"schedule lasts \d+ batches, this launch's \d+: resume"):
        restore(ckpt, parts)


@pytest.mark.parametrize(
    "extra", [{}, {"ema": 0.9}, {"mixup": 0.4, "cutmix": 1.0, "mix_prob": 0.8}]
)
def test_resume_after_kill_equals_uninterrupted_run(real_csv, tmp_path, monkeypatch, extra):
    ema = extra.get("ema", 0.0)
    full = train(_cfg(real_csv, tmp_path, name="full", epochs=3, **extra))
    _kill_in_epoch(3, monkeypatch, _cfg(real_csv, tmp_path, name="killed", epochs=3, **extra))
    assert len(_rows(tmp_path / "runs" / "killed")) == 2
    with pytest.raises(ValueError, match=r"only .*threads.* may change"):
        train(TrainConfig(), resume=tmp_path / "runs" / "killed", runtime={"lr": 1.0})
    resumed = train(TrainConfig(), resume=tmp_path / "runs" / "killed", runtime={"threads": 1})
    assert _rows(resumed) == _rows(full)
    with open(resumed / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    elapsed = [float(r["elapsed"]) for r in rows]  # the clock continues across the resume
    assert elapsed == sorted(elapsed) and elapsed[0] >= float(rows[0]["seconds"]) - 1
    a = torch.load(full / "last.pt", weights_only=True)
    b = torch.load(resumed / "last.pt", weights_only=True)
    for part in ("model", "train_model") if ema else ("model",):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)


def test_resume_finishes_a_best_pt_copy_cut_short(real_csv, tmp_path, monkeypatch):
    """Killed after last.pt was written but before it was copied to best.pt."""
    train_module = sys.modules["ferlab.train"]

    def killed(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(train_module, "copy_atomic", killed)
    with pytest.raises(KeyboardInterrupt):  # epoch 1 always improves: its copy is cut
        train(_cfg(real_csv, tmp_path, name="cut", epochs=1))
    run = tmp_path / "runs" / "cut"
    assert (run / "last.pt").is_file() and not (run / "best.pt").exists()
    monkeypatch.undo()
    train(TrainConfig(), resume=run)
    assert (run / "best.pt").read_bytes() == (run / "last.pt").read_bytes()


def test_a_run_with_a_relative_data_path_resumes_and_evaluates_from_another_folder(
    real_csv, tmp_path, monkeypatch
):
    """Started with ``--data data/x.csv`` in one folder: resumed, and recognised by evaluate
    (its stratified held-out faces, not the official split), from another. The config keeps
    the path as given; the checkpoint also holds its absolute form."""
    from ferlab.evaluate import evaluate_split

    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    (start / "data").mkdir(parents=True)
    elsewhere.mkdir()
    (start / "data" / "x.csv").write_bytes(real_csv.read_bytes())
    train_module, calls = sys.modules["ferlab.train"], []
    real_epoch = train_module.train_one_epoch

    def killed_in_epoch_2(*args, **kw):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kw)

    monkeypatch.chdir(start)
    monkeypatch.setattr(train_module, "train_one_epoch", killed_in_epoch_2)
    cfg = _cfg("data/x.csv", tmp_path, name="rel", epochs=2, split="stratified", seed=3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg)
    monkeypatch.undo()
    monkeypatch.chdir(elsewhere)  # data/x.csv is not here
    run = train(TrainConfig(), resume=tmp_path / "runs" / "rel")
    assert len(_rows(run)) == 2
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["config"]["data"] == "data/x.csv"
    assert ckpt["paths"] == {"data": str(start / "data" / "x.csv")}
    # 70 faces: seed 3's stratified val split (10% of 700), not the official 140
    metrics = evaluate_split(load_model(run), str(start / "data" / "x.csv"), "val")
    assert sum(metrics.support) == 70


def test_a_path_found_as_given_wins_over_the_recorded_one(tmp_path, monkeypatch):
    """A repository moved next to another ``shared/`` (another machine) uses the data found
    from where it runs, not the absolute path its run was started with; names are not paths."""
    from ferlab.train import _locate, input_paths

    (tmp_path / "here").mkdir()
    (tmp_path / "here" / "x.csv").write_text("emotion,pixels,Usage\n")
    (tmp_path / "imagenet").mkdir()  # a folder named like the pretrained name
    old = tmp_path / "old.csv"
    old.write_text("emotion,pixels,Usage\n")
    monkeypatch.chdir(tmp_path)
    cfg = TrainConfig(data="here/x.csv", model="vgg19", pretrained="imagenet")
    assert input_paths(cfg) == {"data": str(tmp_path / "here" / "x.csv")}
    assert _locate(cfg, {"data": str(old)}).data == "here/x.csv"
    monkeypatch.chdir(tmp_path / "here")
    assert _locate(cfg, {"data": str(old)}).data == str(old)
    assert _locate(cfg, {"data": str(tmp_path / "gone.csv")}).data == "here/x.csv"


def test_a_crop_trained_run_records_its_crop_and_validates_on_centre_crops(tiny_csv, tmp_path):
    from ferlab.evaluate import evaluate_split

    run = train(_cfg(tiny_csv, tmp_path, name="crop", epochs=1, batch_size=16, crop=40))
    model = load_model(run)
    assert model.preprocess["crop"] == 40
    shapes = []
    model.model.register_forward_pre_hook(lambda m, args: shapes.append(args[0].shape[-2:]))
    val_acc = evaluate_split(model, str(tiny_csv), "val").accuracy
    assert shapes and all(s == (40, 40) for s in shapes)
    assert float(_rows(run)[0]["val_acc"]) == pytest.approx(val_acc, abs=1e-5)


def test_same_seed_same_result_and_refuses_overwrite(tiny_csv, tmp_path):
    a = train(_cfg(tiny_csv, tmp_path, name="a", epochs=2, batch_size=16))
    b = train(_cfg(tiny_csv, tmp_path, name="b", epochs=2, batch_size=16))
    c = train(_cfg(tiny_csv, tmp_path, name="c", epochs=2, batch_size=16, seed=1))
    assert _rows(a) == _rows(b)
    assert _rows(a) != _rows(c)
    with pytest.raises(FileExistsError):
        train(_cfg(tiny_csv, tmp_path, name="a", epochs=1))


def test_mixing_changes_training_only_when_on(tiny_csv, tmp_path):
    plain = train(_cfg(tiny_csv, tmp_path, name="plain", epochs=1, batch_size=16))
    # off (prob 0) draws nothing from the generator: the run is the plain one, row for row
    off = train(_cfg(tiny_csv, tmp_path, name="off", epochs=1, batch_size=16, mixup=1, mix_prob=0))
    on = train(_cfg(tiny_csv, tmp_path, name="on", epochs=1, batch_size=16, cutmix=1.0))
    assert _rows(off) == _rows(plain) and _rows(on) != _rows(plain)
    with pytest.raises(ValueError, match=r"config mix_prob: expected a value in \[0, 1\]"):
        train(_cfg(tiny_csv, tmp_path, name="bad", epochs=1, mixup=0.2, mix_prob=2.0))


def test_early_stopping_and_plateau(tiny_csv, tmp_path):
    # a learning rate this small cannot improve val loss: the plateau scheduler halves it
    # once `plateau_patience` epochs pass, and training stops after 1 + early_stopping epochs
    run = train(
        _cfg(
            tiny_csv,
            tmp_path,
            name="es",
            epochs=10,
            lr=1e-6,
            early_stopping=4,
            optimizer="sgd",
            momentum=0.0,
            nesterov=False,
            plateau_patience=1,
            min_lr=0.0,
            augment=False,
            model="vgg19",
            model_kwargs={"hidden": 16, "dropout": 0.0},
        )
    )
    rows = _rows(run)
    assert len(rows) == 5
    assert [float(r["lr"]) for r in rows] == [1e-6, 1e-6, 1e-6, 5e-7, 5e-7]


@pytest.mark.parametrize(
    "overrides",
    [
        {"optimizer": "sgd", "scheduler": "onecycle", "lr": 0.05},
        {"optimizer": "adamw", "scheduler": "cosine", "loss": "focal", "focal_gamma": 5.0},
        {"normalize": "none", "augment": False, "label_smoothing": 0.1},
        {"normalize": "standardize", "focal_alpha": [1.0] * 7, "loss": "focal"},
    ],
)
def test_config_variants_train(tiny_csv, tmp_path, overrides):
    from ferlab.losses import FocalLoss
    from ferlab.parts import build_parts

    cfg = _cfg(tiny_csv, tmp_path, name="v", epochs=1, batch_size=16, **overrides)
    run = train(cfg)
    ckpt = torch.load(run / "best.pt", weights_only=True)
    assert ckpt["preprocess"]["normalize"] == cfg.normalize
    if cfg.normalize == "standardize":
        assert 0 < ckpt["preprocess"]["std"] < 1
    # what trained is what the config named: optimiser and schedule states in the checkpoint
    group = ckpt["optimizer"]["param_groups"][0]
    kind = "sgd" if "nesterov" in group else "adamw" if group["decoupled_weight_decay"] else "adam"
    assert kind == cfg.optimizer
    sched = ckpt["scheduler"]
    assert ("total_steps" in sched, "T_max" in sched, "patience" in sched) == tuple(
        cfg.scheduler == s for s in ("onecycle", "cosine", "plateau")
    )
    loss = build_parts(cfg, load_splits(cfg), torch.device("cpu")).loss_fn
    if cfg.loss == "focal":
        assert isinstance(loss, FocalLoss) and loss.gamma == cfg.focal_gamma
        assert (loss.alpha is None) == (cfg.focal_alpha is None)
    else:
        assert isinstance(loss, torch.nn.CrossEntropyLoss)
        assert loss.label_smoothing == cfg.label_smoothing


def test_bad_choices_fail_loudly(tiny_csv, tmp_path):
    # a TrainConfig built in Python, not read from a file, is checked as strictly
    for key, value, message in [
        ("optimizer", "rmsprop", "config optimizer: expected one of adam, adamw, sgd"),
        ("scheduler", "step", "config scheduler: expected one of plateau, cosine"),
        ("loss", "hinge", "config loss: expected one of ce, focal"),
        ("monitor", "f1", "config monitor: expected one of val_loss, val_acc"),  # ran as val_acc
        ("epochs", 0, "config epochs: expected a value at least 1"),
        ("device", "tpu", "config device: expected auto or a PyTorch device .*, got 'tpu'"),
        ("device", "cuda:x", "config device: expected auto or a PyTorch device"),
    ]:
        with pytest.raises(ValueError, match=message):
            train(_cfg(tiny_csv, tmp_path, name=key, **{"epochs": 1, key: value}))
        assert not (tmp_path / "runs" / key).exists()  # refused before the run directory
    for nproc in (0, -2):  # was taken as 1 without a word
        with pytest.raises(ValueError, match=f"nproc: expected 1 or more processes, got {nproc}"):
            train(_cfg(tiny_csv, tmp_path, name="nproc", epochs=1), nproc=nproc)
    assert not (tmp_path / "runs" / "nproc").exists()
    # a GPU this machine lacks fails before the data loads (here: there is no data), in one
    # line; it was a traceback from inside PyTorch once the data had loaded
    for nproc in (1, 2):
        with pytest.raises(ValueError, match=r"config device: cuda:99 is not on this machine"):
            train(_cfg(tmp_path / "no.csv", tmp_path, device="cuda:99"), nproc=nproc)
    for name in ("../escape", str(tmp_path / "abs")):  # each was written there
        with pytest.raises(ValueError, match=r"config name: expected a path under out"):
            train(_cfg(tiny_csv, tmp_path, name=name, epochs=1))
    assert not (tmp_path / "escape").exists() and not (tmp_path / "abs").exists()
    # so do a missing teacher and pretrained file (the teacher once logged "scoring" first)
    with pytest.raises(ValueError, match=r"config teacher: no-such-run: no such model or file"):
        train(_cfg(tmp_path / "no.csv", tmp_path, teacher="no-such-run"))
    bad = dict(model="vgg19", model_kwargs={}, pretrained="no-such.pth")
    with pytest.raises(ValueError, match=r"config pretrained: no-such.pth: no such file"):
        train(_cfg(tmp_path / "no.csv", tmp_path, **bad))
    assert not (tmp_path / "runs").exists()


def test_config_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model: vggnet\nlr: 1e-2\nbetas: [0.8, 0.99]\n")
    cfg = TrainConfig.from_yaml(path, batch_size=8)
    assert (cfg.model, cfg.lr, cfg.betas, cfg.batch_size) == ("vggnet", 0.01, (0.8, 0.99), 8)
    assert TrainConfig.from_dict(yaml.safe_load(cfg.to_yaml())) == cfg
    path.write_text("epochs: 1e2\nbatch_size: 64.0\nearly_stopping: '3'\nname: 2024\n")
    cfg = TrainConfig.from_yaml(path)  # YAML 1.1's readings of numbers, taken as meant
    assert (cfg.epochs, cfg.batch_size, cfg.early_stopping, cfg.name) == (100, 64, 3, "2024")
    for text, message in [
        ("lr: fast", "config lr: expected a number, got 'fast'"),
        ("modle: vggnet", r"unknown config key\(s\) \['modle'\]"),
        ("epochs: 2.5", "config epochs: expected a whole number, got 2.5"),
        ("augment: 'no'", "config augment: expected bool, got 'no'"),  # a string is truthy
        ("lr: true", "config lr: expected float, got True"),
        ("model_kwargs: [1]", "config model_kwargs: expected dict, got \\[1\\]"),
        ("focal_alpha: [1, 2]", r"config focal_alpha: expected 7 numbers, got \[1, 2\]"),
        ("betas: [a, b]", r"config betas: expected 2 numbers, got \['a', 'b'\]"),
        ("lr: [1", "not valid YAML"),
        # out of range: each used to fail late (batch_size 0: ZeroDivisionError after the
        # data loaded) or not at all (early_stopping -1 stopped after epoch 1)
        ("batch_size: 0", "config batch_size: expected a value at least 1, got 0"),
        ("eval_batch_size: 0", "config eval_batch_size: expected a value at least 1, got 0"),
        ("early_stopping: -1", "config early_stopping: expected a value at least 0, got -1"),
        ("hflip: 1.5", r"config hflip: expected a value in \[0, 1\], got 1.5"),
        ("distill_alpha: -0.1", r"config distill_alpha: expected a value in \[0, 1\]"),
        ("lr: .nan", "config lr: expected a value above 0, got nan"),
        ("subset: 0", r"config subset: expected a value in \(0, 1\], got 0"),
        ("rotate: .inf", "config rotate: expected a value at least 0, got inf"),
        ("betas: [1.5, 0.999]", r"config betas: expected two values in \[0, 1\), got \[1.5"),
        ("{loss: focal, focal_alpha: [1, 1, 1, .nan, 1, 1, 1]}", "focal_alpha: expected 7 finite"),
        ("{loss: focal, focal_alpha: [1, 1, 1, -1, 1, 1, 1]}", "focal_alpha: expected 7 finite"),
        ("lr: 0.1\nepochs: 3\nlr: 0.01", "not valid YAML .*key 'lr' appears twice.*line 3"),
        # settings the chosen loss would drop silently
        ("focal_alpha: [1, 1, 1, 1, 1, 1, 1]", "focal_alpha: applies to loss: focal only"),
        ("{loss: focal, label_smoothing: 0.1}", "label_smoothing: applies to loss: ce only"),
        ("{augment: false, crop: 44}", "config crop: applies with augment: true only"),
        ("crop: 8", r"config crop: expected a value 0 \(off\) or in \[16, 48\], got 8"),
        ("crop: 50", r"config crop: expected a value 0 \(off\) or in \[16, 48\], got 50"),
        # misspelt choices: each once failed only after the data loaded, without the file
        ("optimizer: adamm", "config optimizer: expected one of adam, adamw, sgd, got 'adamm'"),
        ("scheduler: cos", "config scheduler: expected one of plateau, cosine, onecycle, none"),
        ("loss: xe", "config loss: expected one of ce, focal, got 'xe'"),
        ("normalize: z", "config normalize: expected one of minmax, none, standardize"),
        ("monitor: acc", "config monitor: expected one of val_loss, val_acc, got 'acc'"),
        ("split: strat", "config split: expected one of official, stratified, got 'strat'"),
        ("model: vgg16", "config model: expected one of .*vgg19.*, got 'vgg16'"),
        ("seed: -1", "config seed: expected a value at least 0, got -1"),
        # each once passed the check and failed in build_parts, after the data (and a
        # distillation teacher) had loaded; warm-up named no key there
        ("{model: vggnet_s, frozen_blocks: 2}", "frozen_blocks: applies to model: vgg19 only"),
        ("{model: vggnet_s, pretrained: x.pth}", "pretrained: applies to model: vgg19 only"),
        ("model_kwargs: {hiden: 256}", "config model_kwargs: model 'vgg19': .*'hiden'"),
        ("{model: vggnet_s, model_kwargs: {width: [8]}}", "model_kwargs: .*'width'"),
        ("{model: vggnet_s, model_kwargs: {widths: [8, -1]}}", "config model_kwargs: .*"),
        ("{model: vggnet_s, model_kwargs: {widths: 8}}", "config model_kwargs: .*"),
        ("{scheduler: onecycle, warmup_epochs: 3, epochs: 2}", "config warmup_epochs: expected"),
        # onecycle would overwrite them silently
        (
            "{scheduler: onecycle, optimizer: sgd, momentum: 0}",
            "config momentum: scheduler onecycle",
        ),
        ("{scheduler: onecycle, betas: [0.5, 0.99]}", "config betas: scheduler onecycle cycles"),
    ]:
        path.write_text(text + "\n")
        with pytest.raises(ValueError, match=message) as e:
            TrainConfig.from_yaml(path)
        assert str(e.value).startswith(f"{path}: "), e.value  # the file is named
    # a file that cannot be read is named in one line, not as errno text
    for bad, message in [
        (tmp_path / "missing.yaml", "no such file"),
        (tmp_path, "is a folder"),
        (tmp_path / "binary.yaml", "not text"),
    ]:
        if bad.name == "binary.yaml":
            bad.write_bytes(b"\xff\xfe\x00lr")
        with pytest.raises(ValueError, match=f"^{re.escape(str(bad))}: {message} "):
            TrainConfig.from_yaml(bad)
    # a flag's bad value is not blamed on the file
    path.write_text("epochs: 3\n")
    with pytest.raises(ValueError) as e:
        TrainConfig.from_yaml(path, epochs=0)
    assert str(e.value) == "config epochs: expected a value at least 1, got 0"

    def overridden(item: str) -> object:
        key, value = parse_override(item)
        return getattr(TrainConfig.from_dict({key: value}), key)

    # --set values are typed and checked as the file's are: 1e2 and 10.0 are whole numbers
    assert overridden("lr=1e-3") == 1e-3 and overridden("lr=1") == 1.0
    assert overridden("epochs=5") == 5 and overridden("epochs=1e2") == 100
    assert overridden("epochs=10.0") == 10 and overridden("name=123") == "123"
    assert overridden("augment=false") is False
    assert overridden("model_kwargs={hidden: 256}") == {"hidden": 256}
    with pytest.raises(ValueError, match=r"config epochs: expected a whole number, got 2\.5"):
        overridden("epochs=2.5")
    with pytest.raises(ValueError, match="unknown config key 'bogus'"):
        parse_override("bogus=1")
    with pytest.raises(ValueError, match=r"--set model_kwargs: cannot read '\{a: \[' as YAML"):
        parse_override("model_kwargs={a: [")


@pytest.mark.parametrize("warmup, peak", [(0.25, 9), (2, 7)])
def test_onecycle_warmup_fraction_or_epochs(warmup, peak):
    from ferlab.optim import create_optimizer, create_scheduler

    cfg = TrainConfig(optimizer="sgd", scheduler="onecycle", epochs=10, warmup_epochs=warmup)
    opt = create_optimizer(cfg, torch.nn.Linear(2, 2))
    sched = create_scheduler(cfg, opt, steps_per_epoch=4)
    lrs = []
    for _ in range(40):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert max(range(40), key=lrs.__getitem__) == peak  # 25% of 40 steps, or 2 epochs of 4


def test_ema_averages_weights_and_is_what_gets_validated_and_saved(real_csv, tmp_path):
    from ferlab.ema import EMA

    model = torch.nn.BatchNorm1d(2)
    ema = EMA(model, decay=0.5)
    with torch.no_grad():
        model.weight.fill_(3.0)  # from 1.0
    model.num_batches_tracked.fill_(7)
    ema.update()  # warm-up decay min(0.5, 1/10) = 0.1: 0.1 * 1 + 0.9 * 3
    assert ema.module.weight.tolist() == pytest.approx([2.8, 2.8])
    assert int(ema.module.num_batches_tracked) == 7
    assert model.weight.tolist() == [3.0, 3.0]  # the live model is untouched

    run = train(_cfg(real_csv, tmp_path, name="ema", epochs=2, ema=0.9))
    ckpt = torch.load(run / "last.pt", weights_only=True)
    diff = [not torch.equal(ckpt["model"][k], ckpt["train_model"][k]) for k in ckpt["model"]]
    assert any(diff) and ckpt["ema_updates"] == 2 * 7  # 420 faces in batches of 64
    data = load_splits(_cfg(real_csv, tmp_path))
    probs = load_model(run / "last.pt").predict_proba(data["val_x"].numpy())
    val_acc = float((probs.argmax(1) == data["val_y"].numpy()).mean())
    assert f"{val_acc:.5f}" == _rows(run)[-1]["val_acc"]  # the EMA weights were validated


def test_distillation_pulls_the_student_towards_the_teacher(
    real_csv, tmp_path, tiny_model, monkeypatch
):
    from ferlab.distill import distill_loss
    from ferlab.export import export_safetensors

    logits = torch.randn(5, 7)
    same = torch.softmax(logits, 1)
    assert float(distill_loss(logits, same, 3.0)) == pytest.approx(0, abs=1e-6)
    assert float(distill_loss(logits, torch.softmax(-logits, 1), 3.0)) > 0.1

    _, teacher = export_safetensors(tiny_model, tmp_path / "teacher")
    data = load_splits(_cfg(real_csv, tmp_path))
    target = torch.from_numpy(tiny_model.predict_proba(data["train_x"].numpy(), tta="flip"))
    got = teacher_probs(str(teacher), data["train_x"])  # flip-averaged, not the plain pass
    plain = torch.from_numpy(tiny_model.predict_proba(data["train_x"].numpy()))
    assert float((got - target).abs().max()) < 0.1 * float((got - plain).abs().max())

    def kl_to_teacher(run):
        p = torch.from_numpy(load_model(run / "last.pt").predict_proba(data["train_x"].numpy()))
        return float((target * (target.log() - p.clamp_min(1e-8).log())).sum(1).mean())

    kw = dict(epochs=3, lr=3e-3, augment=False)
    labels_only = train(_cfg(real_csv, tmp_path, name="labels", **kw))
    # targets left by a run that died before its first checkpoint are not a new run's
    (tmp_path / "runs" / "kd").mkdir(parents=True)
    stale = {"teacher": "other", "probs": torch.full_like(got, 1 / 7)}
    save_checkpoint(stale, tmp_path / "runs" / "kd" / "teacher_probs.pt")
    distilled = train(
        _cfg(real_csv, tmp_path, name="kd", teacher=str(teacher), distill_alpha=1.0, **kw)
    )
    assert kl_to_teacher(distilled) < 0.5 * kl_to_teacher(labels_only)

    # the targets are kept with the run: a resume does not score the teacher again
    saved = torch.load(distilled / "teacher_probs.pt", weights_only=True)
    assert torch.equal(saved["probs"], got) and saved["teacher"] == str(teacher)

    def no_teacher(*args):
        raise AssertionError("the teacher was scored again")

    monkeypatch.setattr(sys.modules["ferlab.train"], "teacher_probs", no_teacher)
    train(TrainConfig(), resume=distilled)


def test_mixup_mixes_the_teachers_targets_like_the_faces(real_csv, tmp_path, monkeypatch):
    train_module, seen = sys.modules["ferlab.train"], []
    real = train_module.distill_loss

    def one_hot_teacher(teacher, images, d=None):  # targets that show any blending
        labels = load_splits(_cfg(real_csv, tmp_path))["train_y"]
        return torch.nn.functional.one_hot(labels, 7).float()

    def recording(logits, probs, T):
        seen.append(probs.clone())
        return real(logits, probs, T)

    monkeypatch.setattr(train_module, "teacher_probs", one_hot_teacher)
    monkeypatch.setattr(train_module, "distill_loss", recording)
    teacher = tmp_path / "t.pt"  # it must exist; teacher_probs above stands in for reading it
    teacher.touch()
    train(_cfg(real_csv, tmp_path, name="kd-mix", teacher=str(teacher), epochs=1, mixup=0.4))
    rows = torch.cat(seen)
    torch.testing.assert_close(rows.sum(1), torch.ones(len(rows)))
    assert int((rows > 0).sum(1).max()) == 2  # each a blend of two faces' targets
    assert float(rows.max(1).values.min()) < 0.99


CONFIGS = Path(__file__).parent.parent / "configs"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_recipes_load(path):
    from ferlab.models import create_model

    cfg = TrainConfig.from_yaml(path)  # unknown keys and bad values raise here
    assert cfg.epochs > 0 and cfg.lr > 0
    create_model(cfg.model, **cfg.model_kwargs)


def test_readme_documents_every_config_key_with_its_default():
    import ast
    import dataclasses
    import re

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    table = readme.split("| key | default | meaning |", 1)[1].split("\n\n", 1)[0]
    rows = dict(re.findall(r"^\| `(\w+)` \| `(.*?)`", table, flags=re.M))
    defaults = TrainConfig()
    assert list(rows) == [f.name for f in dataclasses.fields(TrainConfig)]  # in field order
    for name, text in rows.items():
        assert ast.literal_eval(text) == getattr(defaults, name), name


def test_a_diverged_run_saves_no_best_even_when_monitoring_accuracy(tiny_csv, tmp_path, caplog):
    """NaN logits still score an accuracy (argmax picks class 0): with monitor val_acc, a
    diverged epoch became best.pt and the "diverged?" warning never came."""
    cfg = _cfg(tiny_csv, tmp_path, name="div", epochs=1, batch_size=16, optimizer="sgd")
    cfg.lr, cfg.monitor, cfg.augment = 1e30, "val_acc", False
    with caplog.at_level("WARNING", logger="ferlab.train"):
        run = train(cfg)
    assert _rows(run)[0]["val_loss"] == "nan" and not (run / "best.pt").exists()
    assert "no best.pt (diverged?)" in caplog.text


def test_a_nan_epoch_is_never_the_best():
    from ferlab.train import _advance

    state = {"epoch": -1, "best": -float("inf"), "best_epoch": -1, "bad_epochs": 0}
    assert not _advance(state, float("nan"), 0, patience=3)  # diverged at once
    assert _advance(state, 1.2, 1, patience=3) and state["best_epoch"] == 1
    assert not _advance(state, 1.2, 2, patience=3)  # no better: not a new best
    assert _advance(state, 1.0, 3, patience=3) and state["best_epoch"] == 3


# sgd at lr ~0 without decay: a run's weights stay those it started from
STILL = dict(optimizer="sgd", lr=1e-12, scheduler="none", seed=1, epochs=1)


def _conv_weights(run_dir):
    state = torch.load(run_dir / "best.pt", weights_only=True)["model"]
    return {k: v for k, v in state.items() if v.dim() == 4}


def test_init_starts_from_the_given_weights_and_their_input_scaling(tiny_csv, real_csv, tmp_path):
    src = train(_cfg(tiny_csv, tmp_path, name="src", epochs=1, normalize="standardize"))
    kw = dict(normalize="standardize", **STILL)
    tuned = train(_cfg(real_csv, tmp_path, name="tuned", init=str(src), **kw))
    fresh = train(_cfg(real_csv, tmp_path, name="fresh", **kw))
    a, b, c = (_conv_weights(r) for r in (src, tuned, fresh))
    assert a.keys() == b.keys() and len(a) >= 8
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
        assert not torch.allclose(a[k], c[k], atol=1e-3), k
    spec = {
        r: torch.load(r / "best.pt", weights_only=True)["preprocess"] for r in (src, tuned, fresh)
    }
    # the tuned run keeps the mean and std its weights were trained with, not its own data's
    assert spec[tuned] == spec[src] and spec[fresh]["mean"] != spec[src]["mean"]


def test_a_fine_tuned_run_resumes_from_its_checkpoint_without_its_init(
    tiny_csv, tmp_path, monkeypatch
):
    import shutil

    src = train(_cfg(tiny_csv, tmp_path, name="src", epochs=1))
    kw = dict(epochs=2, init=str(src / "best.pt"), seed=1)
    full = train(_cfg(tiny_csv, tmp_path, name="full", **kw))
    _kill_in_epoch(2, monkeypatch, _cfg(tiny_csv, tmp_path, name="killed", **kw))
    shutil.rmtree(src)  # the weights it started from are gone: its checkpoint has its own
    resumed = train(TrainConfig(), resume=tmp_path / "runs" / "killed")
    assert _rows(resumed) == _rows(full)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"init": "nowhere/run"}, r"config init: nowhere/run/?\S*: checkpoint not found"),
        ({"model_kwargs": {"widths": [8, 16, 16, 32]}}, r"config init: .*: its weights do not fit"),
        ({"model": "vggnet_s24"}, r"config init: .*: is vggnet_s, the config trains vggnet_s24"),
        (
            {"normalize": "none"},
            r"trained with normalize minmax, crop 0; the config has normalize none",
        ),
        ({"init": "ensemble", "model_kwargs": {}}, r"config init: ensemble: expected one network"),
        ({"pretrained": "imagenet"}, r"config init: starts from its own weights; drop pretrained"),
    ],
)
def test_init_refuses_a_network_that_does_not_fit_before_the_data_loads(
    tiny_csv, tmp_path, change, message
):
    src = train(_cfg(tiny_csv, tmp_path, name="src", epochs=1))
    absent = tmp_path / "absent.csv"  # had the data loaded first, this would be the error
    with pytest.raises(ValueError, match=message):
        train(_cfg(absent, tmp_path, name="tuned", **{"init": str(src), **change}))
    assert not (tmp_path / "runs" / "tuned").exists()


def test_onecycle_survives_a_one_batch_warmup():
    """A small folder's short run: torch's OneCycleLR divides by zero on one batch of warm-up."""
    from ferlab.optim import create_optimizer, create_scheduler

    cfg = TrainConfig(optimizer="sgd", scheduler="onecycle", epochs=1, warmup_epochs=0.2)
    opt = create_optimizer(cfg, torch.nn.Linear(2, 2))
    sched = create_scheduler(cfg, opt, steps_per_epoch=5)  # 0.2 x 5 = one batch
    lrs = []
    for _ in range(5):
        lrs.append(opt.param_groups[0]["lr"])  # what each batch trains with
        opt.step()
        sched.step()
    assert lrs == sorted(lrs, reverse=True) and lrs[-1] < cfg.lr / 100  # annealed, no warm-up
