"""Experiment suites: a base config, named variants, repeats (seeds), run as ordinary trainings.

Each trial (variant, seed) is a training run in ``<out>/<suite>/<variant>/seed<k>/`` followed
by one evaluation on the suite's report split, saved as ``result.json``. A trial with a
``result.json`` is never run again, so a killed suite continues where it stopped and a new
variant runs only its own trials. A failing trial writes ``error.json`` and the others go on.
"""

from __future__ import annotations

import json
import logging
import re
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import TrainConfig, load_yaml_mapping, recipe_changes
from .data import atomic_write_bytes
from .report import SUITE_FILE, read_json

log = logging.getLogger(__name__)
SUITE_KEYS = {
    "name",
    "base",
    "base_config",
    "variants",
    "repeats",
    "report_split",
    "baseline",
    "out",
    "notes",
}


@dataclass
class Suite:
    name: str
    base: dict[str, Any]  # TrainConfig overrides shared by every variant
    variants: dict[str, dict[str, Any]]  # name -> overrides; may hold its own `repeats`
    repeats: int = 3
    report_split: str = "test"  # split evaluated once per finished trial: test (PrivateTest) or val
    baseline: str = ""  # variant compared against; "" = the first
    out: str = "runs/experiments"
    notes: str = ""

    @classmethod
    def from_yaml(cls, path: str | Path) -> Suite:
        path = Path(path)
        raw = load_yaml_mapping(path)
        unknown = sorted(set(raw) - SUITE_KEYS)
        if unknown:
            raise ValueError(f"{path}: unknown suite key(s) {unknown}; valid: {sorted(SUITE_KEYS)}")
        variants = raw.get("variants") or {"baseline": {}}
        for key, value in [("base", raw.get("base") or {}), ("variants", variants)]:
            if not isinstance(value, dict):  # before .update() or .items() breaks on it
                raise ValueError(f"{path}: {key}: expected a mapping, got {value!r}")
        for key, value in variants.items():
            if value is not None and not isinstance(value, dict):
                raise ValueError(f"{path}: variant {key}: expected a mapping, got {value!r}")
        base: dict[str, Any] = {}
        if raw.get("base_config"):
            base.update(load_yaml_mapping((path.parent / raw["base_config"]).resolve()))
        base.update(raw.get("base") or {})
        suite = cls(
            raw.get("name", path.stem),
            base,
            {k: dict(v or {}) for k, v in variants.items()},
            raw.get("repeats", 3),
            raw.get("report_split", "test"),
            raw.get("baseline", ""),
            raw.get("out", "runs/experiments"),
            raw.get("notes", ""),
        )
        try:
            suite.validate()
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        return suite

    def validate(self) -> None:
        for key in ("name", "report_split", "baseline", "out", "notes"):
            if not isinstance(getattr(self, key), str):
                raise ValueError(f"{key}: expected a string, got {getattr(self, key)!r}")
        if "repeats" in self.base:  # it would be read as a training setting, and ignored
            raise ValueError("base: repeats is set for the suite or per variant, not in base")
        counts = [("repeats", self.repeats)]
        counts += [
            (f"{k}: repeats", v["repeats"]) for k, v in self.variants.items() if "repeats" in v
        ]
        for where, n in counts:
            if isinstance(n, bool) or not isinstance(n, int) or n < 1:
                raise ValueError(f"{where}: expected a whole number at least 1, got {n!r}")
        for name in self.variants:  # a folder name, and the report's row
            # not "." or "..": those run in the suite's folder or its parent
            ok = isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9_.-]+", name)
            if not ok or not name.strip("."):
                raise ValueError(f"variant {name!r}: expected a name of letters, digits, _ . -")
        for where, values in [("base", self.base), *self.variants.items()]:
            fixed = sorted({"seed", "out", "name"} & set(values))
            if fixed:  # each trial sets them: seeds count from 0, runs go under the suite
                raise ValueError(f"{where}: {', '.join(fixed)} cannot be set in a suite")
        if self.report_split not in ("test", "val"):
            raise ValueError(f"report_split must be test or val, got {self.report_split!r}")
        if self.baseline and self.baseline not in self.variants:
            raise ValueError(f"baseline {self.baseline!r} is not a variant: {list(self.variants)}")
        for name in self.variants:
            self.config(name, 0)  # unknown keys fail now, not hours into the suite

    @property
    def baseline_name(self) -> str:
        return self.baseline or next(iter(self.variants))

    def config(self, variant: str, seed: int, **budget: Any) -> TrainConfig:
        values = {**self.base, **self.variants[variant]}
        values.pop("repeats", None)
        values.update({k: v for k, v in budget.items() if v is not None})
        values.update(seed=seed, out=str(Path(self.out) / self.name / variant), name=f"seed{seed}")
        return TrainConfig.from_dict(values)

    def trials(
        self, repeats: int | None = None, variants: Sequence[str] | None = None
    ) -> list[Trial]:
        chosen = list(variants) if variants else list(self.variants)
        missing = sorted(set(chosen) - set(self.variants))
        if missing:
            raise ValueError(f"unknown variant(s) {missing}; suite has {list(self.variants)}")

        def count(variant: str) -> int:
            own = self.variants[variant].get("repeats")
            if repeats is None:
                return self.repeats if own is None else own
            # --repeats scales the suite; a variant's own repeats (an expensive one's) caps it
            return repeats if own is None else min(repeats, own)

        n = {v: count(v) for v in chosen}
        # Seed-major: a suite stopped early has every variant once before any twice.
        return [
            Trial(v, seed, Path(self.out) / self.name / v / f"seed{seed}")
            for seed in range(max(n.values(), default=0))
            for v in chosen
            if seed < n[v]
        ]


@dataclass
class Trial:
    variant: str
    seed: int
    run_dir: Path

    @property
    def done(self) -> bool:
        return (self.run_dir / "result.json").is_file()

    @property
    def failed(self) -> bool:
        return (self.run_dir / "error.json").is_file() and not self.done


def changed_settings(saved: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """The recipe fields on which a saved config (checked first) differs from ``cfg``."""
    TrainConfig.from_dict(saved)  # an unknown key or bad value: one line, named by callers
    return recipe_changes(saved, cfg.to_dict())


def _check_finished(suite: Suite, trial: Trial, cfg: TrainConfig) -> None:
    """A finished trial counts only if it trained what the suite asks for now, on the split
    it reports: a smoke run's 4-epoch trials must not be averaged into the full suite."""
    path = trial.run_dir / "result.json"
    result = read_json(path, "a trial result", "metrics")
    try:
        changed = changed_settings(result.get("config", {}), cfg)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    if result.get("split") != suite.report_split:
        changed.append("report_split")
    if changed:
        raise ValueError(
            f"{trial.run_dir}: finished with other {', '.join(changed)}; delete it to retrain, "
            "restore the suite's settings, or give the suite another --out"
        )


def run_trial(cfg: TrainConfig, report_split: str, threads: int = 0) -> dict[str, Any]:
    """Train (resuming a killed trial), evaluate best.pt once on ``report_split``, save."""
    import torch

    from .checkpoint import load_checkpoint
    from .classifier import load_model
    from .evaluate import evaluate_probs, load_split
    from .train import train

    if threads:
        torch.set_num_threads(threads)
    run_dir = Path(cfg.out) / cfg.name
    (run_dir / "error.json").unlink(missing_ok=True)
    try:
        # the split to report, before hours of training: one that holds no faces fails now
        part = load_split(cfg.data, report_split, cfg.split, cfg.seed, cfg.ignore_unknown)
        if (run_dir / "last.pt").is_file():
            # a resumed run keeps the recipe in its last.pt (what train() resumes with):
            # refuse one the suite no longer asks for, or result.json would describe
            # settings that were not trained
            changed = changed_settings(load_checkpoint(run_dir / "last.pt")["config"], cfg)
            if changed:
                raise ValueError(
                    f"{run_dir}: was started with other {', '.join(changed)}; "
                    "delete it to retrain, or restore the suite's settings"
                )
            train(cfg, resume=run_dir)
        else:
            train(cfg)
        clf = load_model(run_dir / "best.pt")
        metrics = evaluate_probs(clf.predict_proba(part.images), part.labels)
        result = {
            "variant": run_dir.parent.name,
            "seed": cfg.seed,
            "split": report_split,
            "metrics": metrics.to_dict(),
            "config": cfg.to_dict(),
        }
        atomic_write_bytes(run_dir / "result.json", json.dumps(result, indent=2).encode())
        return result
    except Exception as e:  # a failed trial is recorded, the suite goes on
        error = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        atomic_write_bytes(run_dir / "error.json", json.dumps(error, indent=2).encode())
        raise


def run_suite(
    suite: Suite,
    backend: str = "local",
    workers: int = 1,
    address: str | None = None,
    repeats: int | None = None,
    variants: Sequence[str] | None = None,
    **budget: Any,
) -> list[Trial]:
    """Run the suite's unfinished trials; returns every trial (done, failed or skipped).
    Writes ``suite.json`` beside them, so that ``ferlab report`` rebuilds the same report."""
    if backend not in ("local", "ray"):  # before suite.json, and with nothing left to run
        raise ValueError(f"unknown backend {backend!r}; expected local or ray")
    trials = suite.trials(repeats, variants)
    todo = []
    for t in trials:
        cfg = suite.config(t.variant, t.seed, **budget)
        if t.done:
            _check_finished(suite, t, cfg)
        else:
            todo.append((cfg, t))
    record = {
        "name": suite.name,
        "baseline": suite.baseline_name,
        "variants": list(suite.variants),
        "notes": suite.notes,
    }
    root = Path(suite.out) / suite.name
    root.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(root / SUITE_FILE, json.dumps(record, indent=2).encode())
    log.info(
        "%s: %d trials, %d done, %d to run",
        suite.name,
        len(trials),
        len(trials) - len(todo),
        len(todo),
    )
    if todo:
        from .backends import run_local, run_ray

        if backend == "local":
            run_local(todo, suite.report_split, workers)
        else:
            run_ray(todo, suite.report_split, workers, address)
    return trials
