"""Data-parallel training for real: 2 gloo processes on CPU against 1 process."""

import csv
import importlib
import os
import subprocess
import sys

import pytest
import torch

from ferlab import TrainConfig, distributed, load_model, train
from ferlab.distill import teacher_probs
from ferlab.distributed import Dist, gather_rows, launch
from ferlab.evaluate import evaluate_probs
from ferlab.export import export_safetensors
from ferlab.parts import build_parts, load_splits, restore

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FERLAB_CACHE", str(tmp_path / "cache"))


def _cfg(data, tmp_path, **kw) -> TrainConfig:
    base = dict(
        data=str(data),
        out=str(tmp_path / "runs"),
        model="vggnet_s",
        model_kwargs={"widths": [8, 16, 16, 16], "dropout": 0.0},
        batch_size=64,
        epochs=2,
        lr=3e-3,
        threads=1,
    )
    return TrainConfig(**{**base, **kw})


def _rows(run_dir):
    with open(run_dir / "metrics.csv") as f:
        return list(csv.DictReader(f))


def _record_writes_then_train(log_dir, cfg):
    """Runs in each spawned rank: log every file write ferlab.train makes, then train."""
    t = importlib.import_module("ferlab.train")  # `ferlab.train` the attribute is the function
    rank = os.environ["RANK"]

    def recorded(fn):
        def wrapper(*args, **kw):
            with open(log_dir / f"rank{rank}.log", "a") as f:
                f.write(f"{fn.__name__} {args}\n")
            return fn(*args, **kw)

        return wrapper

    writers = ["atomic_write_bytes", "write_history", "save_checkpoint", "copy_atomic"]
    for name in [*writers, "_save_curves"]:
        setattr(t, name, recorded(getattr(t, name)))
    sizes, real_wrap = [], t.distributed.wrap

    def record(module, inputs):
        if module.training:
            sizes.append(len(inputs[0]))

    def wrap(model, d, device):  # record the training batch each rank's model sees
        model.register_forward_pre_hook(record)
        return real_wrap(model, d, device)

    t.distributed.wrap = wrap
    t.train(cfg)
    (log_dir / f"sizes{rank}.txt").write_text(" ".join(map(str, sizes)))


def test_two_processes_match_one_and_only_rank0_writes(real_csv, tmp_path):
    mix = dict(cutmix=1.0, mixup=0.4)  # drawn for the global batch, like the augmentation
    single = train(_cfg(real_csv, tmp_path, name="single", **mix))
    logs = tmp_path / "logs"
    logs.mkdir()
    launch(_record_writes_then_train, 2, logs, _cfg(real_csv, tmp_path, name="ddp", **mix))
    ddp = tmp_path / "runs" / "ddp"
    assert not (logs / "rank1.log").exists()
    written = (logs / "rank0.log").read_text()
    assert "write_history" in written and "last.pt" in written  # metrics.csv and checkpoints
    for rank in (0, 1):  # 420 rows in global batches of 64: each rank trains on half of each
        assert (logs / f"sizes{rank}.txt").read_text().split() == (["32"] * 6 + ["18"]) * 2

    # Same global batches and augmentation; only BN batch statistics differ (per rank on CPU):
    # measured gaps are about 0.001 in loss while training moves it by 0.07.
    a, b = _rows(single), _rows(ddp)
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b, strict=True):
        assert abs(float(ra["train_loss"]) - float(rb["train_loss"])) < 0.01
        assert abs(float(ra["val_loss"]) - float(rb["val_loss"])) < 0.01
        assert abs(float(ra["val_acc"]) - float(rb["val_acc"])) <= 0.03

    # the validation figures the ranks assembled are exactly those of the saved model
    data = load_splits(_cfg(real_csv, tmp_path))
    metrics = evaluate_probs(
        load_model(ddp / "last.pt").predict_proba(data["val_x"].numpy()), data["val_y"].numpy()
    )
    assert f"{metrics.accuracy:.5f}" == b[-1]["val_acc"]


def test_ranks_draw_their_own_dropout_and_checkpoint_it(real_csv, tmp_path):
    # same seed on every rank would give row j of each rank's slice the same dropout mask
    cfg = _cfg(real_csv, tmp_path, name="drop", epochs=1)
    cfg.model_kwargs = {"widths": [8, 16, 16, 16], "dropout": 0.3}
    train(cfg, nproc=2)
    ckpt = torch.load(tmp_path / "runs" / "drop" / "last.pt", weights_only=True)
    ranks = ckpt["rng"]["ranks"]
    assert len(ranks) == 2 and not torch.equal(ranks[0]["torch"], ranks[1]["torch"])
    # a resumed rank 1 continues rank 1's stream, not rank 0's
    parts = build_parts(cfg, load_splits(cfg), torch.device("cpu"), Dist())
    restore(ckpt, parts, rank=1)
    assert torch.equal(torch.get_rng_state(), ranks[1]["torch"])
    # a rank the saved run did not have keeps its own seeded stream, not rank 0's: rank 2 of
    # this run resumed with 3 processes, and rank 1 of a single-process run resumed with 2
    single = {**ckpt, "rng": {k: v for k, v in ckpt["rng"].items() if k != "ranks"}}
    for saved, rank in [(ckpt, 2), (single, 1)]:
        torch.manual_seed(distributed.rank_seed(cfg.seed, Dist(rank=rank, world=rank + 1)))
        own = torch.get_rng_state()
        restore(saved, parts, rank=rank)
        assert torch.equal(torch.get_rng_state(), own), rank
    restore(single, parts, rank=0)
    assert torch.equal(torch.get_rng_state(), single["rng"]["torch"])


def test_torchrun_entry_point_and_uneven_batches(real_csv, tmp_path):
    # no --name: a timestamped one; 420 rows in batches of 50 leave a last batch of 20
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    cmd += ["-m", "ferlab", "train", "--data", str(real_csv), "--out", str(tmp_path / "runs")]
    cmd += ["--model=vggnet_s", "--epochs=1", "--batch-size=50", "--set=threads=1"]
    cmd += ["--set=model_kwargs={widths: [8, 16, 16, 16]}"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = list((tmp_path / "runs").iterdir())
    assert len(runs) == 1, runs  # both ranks agreed on rank 0's timestamped name
    assert len(_rows(runs[0])) == 1 and (runs[0] / "best.pt").is_file()


def test_gather_rows_single_process_and_batch_divisibility(real_csv, tmp_path):
    t = torch.arange(10.0).reshape(5, 2)
    assert torch.equal(gather_rows(t, 5, Dist()), t)
    with pytest.raises(ValueError, match="batch_size 63 is not divisible by 2 processes"):
        train(_cfg(real_csv, tmp_path, batch_size=63), nproc=2)
    # refused in the parent, as one line, before any process starts
    with pytest.raises(ValueError, match=r"'vggnet_s': .*unexpected keyword argument 'hiden'"):
        train(_cfg(real_csv, tmp_path, model_kwargs={"hiden": 3}), nproc=2)
    train(_cfg(real_csv, tmp_path, name="once", epochs=1))
    with pytest.raises(FileExistsError, match="once already holds a run"):
        train(_cfg(real_csv, tmp_path, name="once", epochs=1), nproc=2)
    # with its last.pt deleted to save space, the run's best.pt is still not overwritten
    (tmp_path / "runs" / "once" / "last.pt").unlink()
    with pytest.raises(FileExistsError, match="once already holds a run"):
        train(_cfg(real_csv, tmp_path, name="once", epochs=1))
    # what only a worker can find comes back as the worker's one last line
    with pytest.raises(RuntimeError, match=r"^rank \d: .*no-such\.csv"):
        train(_cfg(tmp_path / "no-such.csv", tmp_path, name="nodata"), nproc=2)


def _teacher_probs_in_rank(teacher, images, out):
    d = distributed.init(torch.device("cpu"))
    probs = teacher_probs(teacher, images, d)
    torch.save(probs, out / f"rank{d.rank}.pt")
    distributed.close(d, finished=True)


def test_ranks_share_the_teachers_work(tmp_path, tiny_model):
    _, teacher = export_safetensors(tiny_model, tmp_path / "teacher")
    images = torch.randint(0, 256, (101, 48, 48), dtype=torch.uint8)  # odd: uneven slices
    launch(_teacher_probs_in_rank, 2, str(teacher), images, tmp_path)
    want = teacher_probs(str(teacher), images)
    for rank in (0, 1):  # every rank holds all 101 targets, in order
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        torch.testing.assert_close(got, want)


def _exit_in_rank_1():
    d = distributed.init(torch.device("cpu"))
    if d.rank == 1:
        os._exit(137)  # as the OOM killer leaves it: no exception, no traceback
    distributed.close(d, finished=False)  # rank 1 is gone: no barrier to meet


def test_a_rank_killed_outright_fails_as_one_line():
    with pytest.raises(RuntimeError, match=r"^rank 1: process died \(exit code 137\)$"):
        launch(_exit_in_rank_1, 2)


def test_threads_per_worker_counts_the_cores_this_process_may_use(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2}, raising=False)
    assert [distributed.threads_per_worker(w) for w in (1, 2, 4)] == [3, 1, 1]
    monkeypatch.delattr(os, "sched_getaffinity", raising=False)  # macOS, Windows
    assert distributed.threads_per_worker(4) == 16
