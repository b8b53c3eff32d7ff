"""Reports over sets of runs: the report's per-class tables, comparisons, plots.

``build_report(root)`` reads every ``result.json`` under ``root`` (written by experiment
trials), groups them into variants and writes report.md, report.html, results.csv,
results.json and the plots. Everything is read from files, never from memory of a run.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .config import recipe_changes
from .data import EMOTIONS
from .history import read_history
from .markdown_page import markdown_page
from .outputs import write_text
from .stats import Summary, summarize, welch

METRICS = ("precision", "recall", "f1")
SUITE_FILE = "suite.json"  # what ``ferlab experiment`` ran: name, baseline, variants, notes


@dataclass
class TrialResult:
    variant: str
    seed: int
    run_dir: Path
    metrics: dict[str, Any]
    history: list[dict[str, str]] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)
    split: str = ""  # what it was evaluated on: test or val

    def per_class(self, metric: str) -> list[float]:
        return [self.metrics["per_class"][c][metric] for c in EMOTIONS]


def read_json(path: Path, what: str, *keys: str) -> dict[str, Any]:
    """A JSON object with ``keys``, or one line naming the file."""
    try:
        r = json.loads(path.read_text())
        for key in keys:
            r[key]  # a KeyError here names what is missing
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not {what} ({type(e).__name__}: {e})") from None
    return r


def collect(root: str | Path) -> tuple[list[TrialResult], list[dict[str, str]]]:
    """Finished trials (result.json) and failed ones (error.json) under ``root``."""
    root = Path(root)
    results, failures = [], []
    for path in sorted(root.rglob("result.json")):
        r = read_json(path, "a trial result", "metrics")
        if not isinstance(r["metrics"], dict) or "per_class" not in r["metrics"]:
            raise ValueError(f"{path}: not a trial result (no metrics.per_class)")
        variant = r.get("variant") or path.parent.parent.name
        results.append(
            TrialResult(
                variant,
                int(r.get("seed", 0)),
                path.parent,
                r["metrics"],
                read_history(path.parent),
                r.get("config", {}),
                str(r.get("split", "")),
            )
        )
    for path in sorted(root.rglob("error.json")):
        if not (path.parent / "result.json").is_file():
            err = read_json(path, "a trial error", "error")
            failures.append({"run": str(path.parent.relative_to(root)), "error": err["error"]})
    return results, failures


def group(results: list[TrialResult]) -> dict[str, list[TrialResult]]:
    out: dict[str, list[TrialResult]] = {}
    for r in results:
        out.setdefault(r.variant, []).append(r)
    return out


def _fmt(v: float, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.2%}" if pct else f"{v:.4f}"


def _var(v: float, pct: bool = False) -> str:
    """A variance in the square of its neighbours' unit (pt² beside percentages): at four
    decimals of a fraction, a real spread printed as 0.0000."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v * 1e4:.3g} pt²" if pct else f"{v:.3g}"


def stats_table(trials: list[TrialResult]) -> list[str]:
    """The report's table: rows Max/Min/Std/Variance/Mean per metric, columns labels 0..6."""
    head = "| metric | stat | " + " | ".join(f"{i} {e}" for i, e in enumerate(EMOTIONS)) + " |"
    lines = [head, "|---|---|" + "---|" * len(EMOTIONS)]
    for metric in METRICS:
        per_class = [
            summarize([t.per_class(metric)[c] for t in trials]) for c in range(len(EMOTIONS))
        ]
        for stat in ("max", "min", "std", "var", "mean"):
            name = {"std": "Std", "var": "Variance"}.get(stat, stat.capitalize())
            fmt = _var if stat == "var" else _fmt
            cells = " | ".join(fmt(getattr(s, stat)) for s in per_class)
            lines.append(f"| {metric} | {name} | {cells} |")
    return lines


def accuracy_line(s: Summary) -> str:
    return (
        f"| {s.n} | {_fmt(s.mean, True)} | {_fmt(s.std, True)} | {_var(s.var, True)} | "
        f"{_fmt(s.min, True)} | {_fmt(s.max, True)} | {_fmt(s.sem, True)} |"
    )


def build_report(
    root: str | Path,
    baseline: str = "",
    title: str = "",
    notes: str = "",
    out: str | Path | None = None,
    order: list[str] | None = None,
    only: list[str] | None = None,
) -> list[Path]:
    """Write report.md, report.html, results.csv, results.json and plots/ for the trials
    under ``root``, into ``out`` (default: ``root``). ``only``: report these variants (a
    suite's own), not others left under ``root`` by an earlier version of the suite.
    Settings not given come from ``root/suite.json`` where ``ferlab experiment`` wrote it,
    so a rebuilt report compares against the same baseline."""
    root = Path(root)
    dest = Path(out) if out is not None else root
    if (root / SUITE_FILE).is_file():
        suite = read_json(root / SUITE_FILE, "a suite record", "name", "variants")
        baseline, title = baseline or suite.get("baseline", ""), title or suite["name"]
        notes, order = notes or suite.get("notes", ""), order or suite["variants"]
        only = suite["variants"] if only is None else only
    results, failures = collect(root)
    if only is not None:
        results = [r for r in results if r.variant in only]
        failures = [f for f in failures if f["run"].split("/")[0] in only]
    if not results and not failures:
        raise ValueError(f"{root}: no result.json or error.json found; nothing to report")
    groups = group(results)
    variants = sorted({*groups, *(f["run"].split("/")[0] for f in failures)})
    if baseline and baseline not in variants:  # a typo must not compare against another
        raise ValueError(f"baseline {baseline!r}: no such variant under {root}; {variants}")
    # a baseline whose every trial failed: compare against the first that finished
    base = baseline if baseline in groups else next(iter(groups), "")
    # the baseline first, then the suite's own order where given, then the rest by name
    rank = {v: i for i, v in enumerate(dict.fromkeys([base, *(order or [])]))}
    groups = dict(sorted(groups.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))
    _check_comparable(groups)
    figures = _figures(dest, groups, base)
    md = _markdown(groups, failures, base, title or root.name, notes, figures)
    files = [
        write_text(dest / "report.md", md),
        write_text(dest / "report.html", markdown_page(md, dest)),
        write_text(dest / "results.csv", _csv(results)),
        write_text(dest / "results.json", json.dumps(_json(groups, failures, base), indent=2)),
    ]
    return files + [dest / f for f in figures.values()]


def _check_comparable(groups: dict[str, list[TrialResult]]) -> None:
    """The runs of a variant must share one recipe, and all runs one report split: a smoke
    run's 2-epoch trial pooled with full ones, or val compared with test, would mislead; so
    would a seed counted twice (a copied trial folder), which shrinks the spread."""
    for v, ts in groups.items():
        first: dict[int, Path] = {}
        for t in ts:
            if first.setdefault(t.seed, t.run_dir) != t.run_dir:
                raise ValueError(
                    f"{v}: {first[t.seed]} and {t.run_dir} are both seed {t.seed} "
                    "(a copy?); remove one"
                )
        for t in ts[1:]:
            changed = recipe_changes(ts[0].config, t.config)
            if changed:
                raise ValueError(
                    f"{v}: {ts[0].run_dir} and {t.run_dir} were trained with other "
                    f"{', '.join(changed)}; remove the runs that do not belong"
                )
    splits = sorted({t.split for ts in groups.values() for t in ts})
    if len(splits) > 1:
        raise ValueError(f"the runs were evaluated on different splits {splits}; not comparable")


def _markdown(groups, failures, base, title, notes, figures) -> str:
    acc = {v: summarize([t.metrics["accuracy"] for t in ts]) for v, ts in groups.items()}
    lines = [f"# {title}", ""]
    if notes:
        lines += [notes.strip(), ""]
    lines += [_budget(groups), ""]
    lines += [
        "## Accuracy",
        "",
        f"Baseline for comparisons: `{base}`. Std and variance are sample statistics "
        "(ddof=1); SEM = Std / sqrt(n); p from Welch's t-test; CI is the 95% interval "
        "of the difference to the baseline.",
        "",
        "| variant | n | mean | Std | Variance | Min | Max | SEM | macro-F1 | "
        "vs baseline | 95% CI | p |",
        "|---" * 12 + "|",
    ]
    for v, ts in groups.items():
        s = acc[v]
        f1 = summarize([t.metrics["macro_f1"] for t in ts])
        c = welch(
            [t.metrics["accuracy"] for t in groups[base]], [t.metrics["accuracy"] for t in ts]
        )
        vs = "-" if v == base else f"{c.diff * 100:+.2f} pt"
        ci = "-" if v == base or math.isnan(c.low) else f"[{c.low * 100:+.2f}, {c.high * 100:+.2f}]"
        p = "-" if v == base or math.isnan(c.p) else f"{c.p:.3g}"
        lines.append(f"| {v} |{accuracy_line(s)[1:-1]}| {_fmt(f1.mean)} | {vs} | {ci} | {p} |")
    # from the trials' own configs: a budget flag given to some variants only shows here
    if len(groups) > 1:
        base_cfg = groups[base][0].config
        lines += ["", "What each variant changes from the baseline's recipe:", ""]
        for v, ts in groups.items():
            if v != base:
                cfg = ts[0].config
                changes = [f"{k} {cfg.get(k)!r}" for k in recipe_changes(base_cfg, cfg)]
                lines.append(f"- {v}: {', '.join(changes) or 'nothing'}")
    for key in ("curves", "f1"):
        if key in figures:
            lines += ["", f"![{key}]({figures[key]})"]
    lines += ["", "## Per-class statistics", ""]
    for v, ts in groups.items():
        lines += [
            f"### {v}",
            "",
            f"{len(ts)} run(s), seeds {sorted(t.seed for t in ts)}.",
            "",
            "Accuracy:",
            "",
            "| n | Mean | Std | Variance | Min | Max | SEM |",
            "|---|---|---|---|---|---|---|",
            accuracy_line(acc[v]),
            "",
            "Per class (labels 0..6):",
            "",
            *stats_table(ts),
            "",
        ]
        if f"confusion_{v}" in figures:
            lines += [f"![confusion {v}]({figures[f'confusion_{v}']})", ""]
    for key, label in (("batch_size", "batch sizes"), ("lr", "learning rates")):
        if f"val_loss_{key}" in figures:
            lines += [
                f"## Validation loss: {label}",
                "",
                f"![{key}]({figures[f'val_loss_{key}']})",
                "",
            ]
    if failures:
        lines += ["## Failed trials", "", "| run | error |", "|---|---|"]
        # one table row each: a traceback's newlines and pipes would end the row
        lines += [
            f"| {f['run']} | {' '.join(f['error'].split()).replace('|', '/')} |" for f in failures
        ]
    return "\n".join(lines) + "\n"


def _budget(groups: dict[str, list[TrialResult]]) -> str:
    """The budget as the trials' own configs record it, so it can never disagree with them."""
    trials = [t for ts in groups.values() for t in ts]

    def values(key: str) -> str:
        return ", ".join(sorted({str(t.config.get(key, "?")) for t in trials}))

    runs = ", ".join(f"{v} {len(ts)}" for v, ts in groups.items())
    splits = ", ".join(sorted({t.split or "?" for t in trials}))
    return (
        f"Budget: at most {values('epochs')} epoch(s) per trial on a stratified "
        f"{values('subset')} of the training split; runs per variant: {runs}. Each trial's "
        f"best checkpoint is evaluated once on the {splits} split."
    )


def _csv(results: list[TrialResult]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(
        ["variant", "seed", "class", "precision", "recall", "f1", "support", "accuracy", "macro_f1"]
    )
    for t in results:
        for c in EMOTIONS:
            pc = t.metrics["per_class"][c]
            w.writerow(
                [
                    t.variant,
                    t.seed,
                    c,
                    repr(pc["precision"]),
                    repr(pc["recall"]),
                    repr(pc["f1"]),
                    pc["support"],
                    repr(t.metrics["accuracy"]),
                    repr(t.metrics["macro_f1"]),
                ]
            )
    return buf.getvalue()


def _json(groups, failures, base) -> dict[str, Any]:
    out: dict[str, Any] = {"baseline": base, "variants": {}, "failed": failures}
    for v, ts in groups.items():
        acc = [t.metrics["accuracy"] for t in ts]
        c = welch([t.metrics["accuracy"] for t in groups[base]], acc)
        out["variants"][v] = {
            "runs": [
                {
                    "seed": t.seed,
                    "dir": str(t.run_dir),
                    "accuracy": t.metrics["accuracy"],
                    "macro_f1": t.metrics["macro_f1"],
                }
                for t in ts
            ],
            "accuracy": {**summarize(acc).__dict__, "sem": summarize(acc).sem},
            "vs_baseline": c.__dict__,
            "per_class": {
                m: [
                    summarize([t.per_class(m)[i] for t in ts]).__dict__
                    for i in range(len(EMOTIONS))
                ]
                for m in METRICS
            },
        }
    return _no_nan(out)


def _no_nan(x: Any) -> Any:
    """JSON has no NaN: undefined statistics (one run's std) become null."""
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_no_nan(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _figures(root: Path, groups: dict[str, list[TrialResult]], base: str) -> dict[str, str]:
    from .plots import (
        f1_bars_figure,
        mean_confusion_figure,
        save_figure,
        val_loss_figure,
        variant_curves_figure,
    )

    plots = root / "plots"
    out: dict[str, str] = {}

    def save(key: str, fig) -> None:
        save_figure(fig, plots / f"{key}.png")
        out[key] = f"plots/{key}.png"

    histories = {v: [t.history for t in ts if t.history] for v, ts in groups.items()}
    if any(histories.values()):
        save("curves", variant_curves_figure(histories))
    save("f1", f1_bars_figure({v: [t.per_class("f1") for t in ts] for v, ts in groups.items()}))
    for v, ts in groups.items():
        key = "confusion_" + re.sub(r"[^A-Za-z0-9_.-]", "_", v)
        save(key, mean_confusion_figure([np.asarray(t.metrics["confusion"]) for t in ts], v))
        out[f"confusion_{v}"] = out.pop(key)
    for key in ("batch_size", "lr"):
        chosen = {
            v: h
            for v, h in histories.items()
            if h and _only_differs_in(groups[v], groups[base], key)
        }
        if len(chosen) > 1:
            save(f"val_loss_{key}", val_loss_figure(chosen, key))
    return out


def _only_differs_in(trials: list[TrialResult], base: list[TrialResult], key: str) -> bool:
    """Is this variant the baseline's recipe with at most ``key`` changed?"""
    a, b = trials[0].config, base[0].config
    return key in a and set(recipe_changes(a, b)) <= {key}
