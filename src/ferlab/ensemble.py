"""Ensembles: the weighted mean of several members' temperature-calibrated probabilities.

Each member gets one temperature T, fitted on held-out faces (PublicTest) by minimising the
negative log-likelihood of softmax(log p / T) (Guo et al., "On Calibration of Modern Neural
Networks", 2017), so an over-confident member does not outvote better-calibrated ones. The
weights are equal, or fitted on the same faces by minimising the NLL of the mixture; a fitted
combination is scored honestly by cross-fitting (``crossfit_accuracy``).

Saved as a manifest ``<stem>.json`` ({"kind": "ensemble", "members": [{"file", "temperature",
"weight"}], "tta", ...}) and the members' safetensors exports in the folder ``<stem>/``;
``load_model`` reads the manifest.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .classifier import check_faces
from .data import atomic_write_bytes
from .transforms import check_tta

KIND = "ensemble"


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising the NLL of ``labels`` under softmax(log(probs) / T)."""
    logp = torch.from_numpy(np.log(np.clip(probs, 1e-12, 1.0))).double()
    y = torch.from_numpy(np.asarray(labels)).long()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)  # T = exp(log_t) > 0
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def nll() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(logp / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(nll)
    return float(log_t.detach().exp())


def fit_weights(calibrated: np.ndarray, labels: np.ndarray) -> list[float]:
    """Mixture weights (>= 0, summing to 1) minimising the NLL of ``labels`` under
    sum_i w_i p_i, for calibrated member probabilities ``(members, N, 7)``."""
    rows = np.arange(len(labels))
    p_true = torch.from_numpy(np.clip(calibrated[:, rows, labels], 1e-12, 1.0)).double()
    z = torch.zeros(len(calibrated), dtype=torch.float64, requires_grad=True)  # w = softmax(z)
    opt = torch.optim.LBFGS([z], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def nll() -> torch.Tensor:
        opt.zero_grad()
        loss = -(z.softmax(0) @ p_true).log().mean()  # convex in w: one optimum
        loss.backward()
        return loss

    opt.step(nll)
    return z.detach().softmax(0).tolist()


def fit_combination(
    probs: np.ndarray, labels: np.ndarray, weighted: bool = False
) -> tuple[list[float], list[float]]:
    """Each member's temperature, then the weights (equal unless ``weighted``)."""
    temperatures = [fit_temperature(p, labels) for p in probs]
    if not weighted:
        return temperatures, [1 / len(probs)] * len(probs)
    calibrated = np.stack([calibrate(p, t) for p, t in zip(probs, temperatures, strict=True)])
    return temperatures, fit_weights(calibrated, labels)


def crossfit_accuracy(
    probs: np.ndarray, labels: np.ndarray, weighted: bool = False, seed: int = 0
) -> float:
    """Accuracy of the combination on ``labels`` when each half of them (stratified by class)
    is scored with temperatures and weights fitted on the other half: the fitted parameters
    never see the faces they are scored on, unlike the accuracy on the faces they were fitted
    to, which flatters a combination with more parameters."""
    rng = np.random.default_rng(seed)
    half = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        half[idx[::2]] = True
    correct = 0
    for fit_on in (half, ~half):
        temperatures, weights = fit_combination(probs[:, fit_on], labels[fit_on], weighted)
        ens = combine(probs[:, ~fit_on], temperatures, weights)
        correct += int((ens.argmax(1) == labels[~fit_on]).sum())
    return correct / len(labels)


def combine(probs: np.ndarray, temperatures: list[float], weights: list[float]) -> np.ndarray:
    """float32 ``(N, 7)``: the weighted mean of ``(members, N, 7)`` calibrated probabilities."""
    calibrated = [calibrate(p, t) for p, t in zip(probs, temperatures, strict=True)]
    return np.tensordot(np.asarray(weights), np.stack(calibrated), 1).astype(np.float32)


def calibrate(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(probs) / temperature), float32."""
    logp = torch.from_numpy(np.log(np.clip(probs, 1e-12, 1.0), dtype=np.float32))
    return (logp / temperature).softmax(1).numpy()


class Ensemble:
    """Members with ``predict_proba``, averaged after calibration; a Classifier look-alike."""

    def __init__(
        self,
        members: list[Any],
        temperatures: list[float] | None = None,
        tta: str = "none",
        meta: dict | None = None,
        weights: list[float] | None = None,
    ):
        if not members:
            raise ValueError("an ensemble needs at least one member")
        classes = {tuple(m.classes) for m in members}
        if len(classes) != 1:
            raise ValueError(f"ensemble members disagree on classes: {sorted(classes)}")
        self.members = list(members)
        self.temperatures = list(temperatures or [1.0] * len(members))
        if len(self.temperatures) != len(self.members):
            n, k = len(self.members), len(self.temperatures)
            raise ValueError(f"{n} members but {k} temperatures")
        bad = [t for t in self.temperatures if not (np.isfinite(t) and t > 0)]
        if bad:  # T = 0 gives NaN, T < 0 turns the ranking upside down
            raise ValueError(f"temperatures must be finite and > 0, got {bad}")
        self.weights = normalize_weights(weights or [1.0] * len(self.members), len(self.members))
        self.tta = check_tta(tta)
        self.classes = classes.pop()
        self.name = KIND
        self.meta = meta or {}

    @property
    def runtime(self) -> str:
        """The members' runtime: "onnx", "torch", or both as "onnx+torch"."""
        return "+".join(sorted({getattr(m, "runtime", "torch") for m in self.members}))

    def member_probs(self, faces: np.ndarray, batch_size: int = 256, tta: str | None = None):
        """Each member's uncalibrated probabilities, ``(members, N, 7)``."""
        faces = check_faces(faces)
        t = check_tta(tta, self.tta)
        return np.stack([m.predict_proba(faces, batch_size, tta=t) for m in self.members])

    def combine(self, member_probs: np.ndarray) -> np.ndarray:
        return combine(member_probs, self.temperatures, self.weights)

    def predict_proba(
        self, faces: np.ndarray, batch_size: int = 256, tta: str | None = None
    ) -> np.ndarray:
        """float32 ``(N, 7)``: the weighted mean of the members' calibrated probabilities."""
        return self.combine(self.member_probs(faces, batch_size, tta))

    def predict(self, faces: np.ndarray, **kw) -> np.ndarray:
        return self.predict_proba(faces, **kw).argmax(1)

    def fit(
        self, faces: np.ndarray, labels: np.ndarray, batch_size: int = 256, weighted: bool = False
    ) -> np.ndarray:
        """Fit every member's temperature (and, if ``weighted``, the weights) on held-out
        ``faces``; returns the members' probabilities."""
        probs = self.member_probs(faces, batch_size)
        self.temperatures, self.weights = fit_combination(probs, labels, weighted)
        return probs


def normalize_weights(weights: list[float], n: int) -> list[float]:
    w = [float(x) for x in weights]
    if len(w) != n:
        raise ValueError(f"{n} members but {len(w)} weights")
    if not all(np.isfinite(x) and x >= 0 for x in w) or sum(w) <= 0:
        raise ValueError(f"weights must be finite, >= 0 and not all 0, got {w}")
    return [x / sum(w) for x in w]


def build_ensemble(
    members: list[Any],
    data: str,
    split: str = "PublicTest",
    tta: str = "none",
    weighted: bool = False,
) -> tuple[Ensemble, dict[str, Any]]:
    """An ensemble calibrated (and, if ``weighted``, weighted) on the held-out validation
    split, and the split's accuracy of each member and of the ensemble, fitted on all of it and
    cross-fitted (``crossfit_accuracy``). The split is the one the members were trained
    with (a stratified split of their data, say), recorded in the ensemble's ``config`` so
    that evaluating it later scores the same held-out faces."""
    from .evaluate import evaluate_probs, held_out

    part, (mode, seed, ignore) = held_out(members, data, split, "calibrate")
    # resolved: evaluating the manifest from another directory must find the same split (it
    # is saved relative to the manifest)
    config = {"data": str(Path(data).resolve()), "split": mode, "seed": seed}
    config["ignore_unknown"] = ignore
    ens = Ensemble(members, tta=tta, meta={"config": config})
    probs = ens.fit(part.images, part.labels, weighted=weighted)
    accuracy = {
        "members": [evaluate_probs(p, part.labels).accuracy for p in probs],
        "ensemble": round(evaluate_probs(ens.combine(probs), part.labels).accuracy, 4),
        "crossfit": round(crossfit_accuracy(probs, part.labels, weighted), 4),
    }
    return ens, accuracy


def save_ensemble(ensemble: Ensemble, path: str | Path, extra: dict | None = None) -> Path:
    """Write ``<stem>.json`` and the members as fp16 safetensors under ``<stem>/``.

    A failure leaves any previous ensemble at ``path`` as it was: every member is checked
    first, the members are written to a temporary sibling folder, and the previous
    ``<stem>/`` is kept aside until the new manifest is written (so no member of an earlier,
    larger ensemble stays behind). A ``<stem>/`` holding anything but members is refused.
    """
    from .export import _stem, check_exportable, export_safetensors

    members = [check_exportable(m, f"member {i}") for i, m in enumerate(ensemble.members)]
    folder = _stem(path)
    out = folder.with_name(folder.name + ".json")
    if folder.is_dir():  # `--out runs` would otherwise replace the user's runs
        others = [f.name for f in folder.iterdir() if not MEMBER_FILE.fullmatch(f.name)]
        if others:
            raise ValueError(
                f"{folder}: holds {', '.join(sorted(others)[:3])}, not only ensemble members; "
                "choose another --out"
            )
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    old = tmp.with_suffix(".old")
    try:
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700 folders; outputs are meant to be shared
        entries = []
        fitted = zip(members, ensemble.temperatures, ensemble.weights, strict=True)
        for i, (m, t, w) in enumerate(fitted):
            _, meta = export_safetensors(m, tmp / f"member{i}")
            # the member's JSON holds its weights' hash: a manifest left over members that a
            # later, killed save replaced is refused on load instead of mixing temperatures
            digest = hashlib.sha256(meta.read_bytes()).hexdigest()
            entry = {"file": f"{folder.name}/{meta.name}", "temperature": t, "weight": w}
            entries.append(entry | {"sha256": digest})
        manifest = {"kind": KIND, "members": entries, "tta": ensemble.tta}
        manifest |= {**ensemble.meta, **(extra or {})}  # what it was calibrated on, and notes
        if "config" in manifest:
            manifest["config"] = _data_path(manifest["config"], out.parent, relative=True)
        data = (json.dumps(manifest, indent=2) + "\n").encode()
        if folder.is_dir():  # a folder cannot be os.replace'd over a full one
            os.replace(folder, old)
        try:
            os.replace(tmp, folder)
            atomic_write_bytes(out, data)
        except BaseException:  # put the previous members back: its manifest names them
            if not tmp.exists():
                os.replace(folder, tmp)
            if old.is_dir():
                os.replace(old, folder)
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return out


def _data_path(config: Any, folder: Path, relative: bool) -> Any:
    """``config`` with its data path relative to the manifest's ``folder`` (to save) or
    absolute (as loaded). Relative to the manifest, not to the current folder: the manifest
    carries no path of the machine it was made on, and still finds its data when both move
    together (a clone with its data beside it)."""
    data = config.get("data") if isinstance(config, dict) else None
    if not isinstance(data, str) or Path(data).is_absolute() != relative:
        return config
    try:  # Windows: no relative path between drives; keep the absolute one
        data = os.path.relpath(data, folder) if relative else str((folder / data).resolve())
    except ValueError:
        return config
    return {**config, "data": data}


MEMBER_FILE = re.compile(r"member\d+\.(json|safetensors)")


def is_manifest(path: Path) -> bool:
    if path.suffix != ".json" or not path.is_file():
        return False
    try:
        doc = json.loads(path.read_text())
    except ValueError:
        return False
    return isinstance(doc, dict) and doc.get("kind") == KIND


def load_ensemble(path: str | Path, device: str = "cpu") -> Ensemble:
    from .export import load_safetensors_model

    path = Path(path)
    try:
        info = json.loads(path.read_text())
    except ValueError as e:  # UnicodeDecodeError too
        raise ValueError(f"{path}: not an ensemble manifest ({e})") from None
    members = info.get("members") if isinstance(info, dict) else None
    if not isinstance(members, list) or not members:
        raise ValueError(f"{path}: an ensemble manifest needs a non-empty 'members' list")
    try:
        files = [path.parent / m["file"] for m in members]
        temps = [float(m["temperature"]) for m in members]
        weights = [float(m["weight"]) for m in members if "weight" in m]
    except (KeyError, TypeError, ValueError) as e:
        need = "each member needs 'file' and a numeric 'temperature' (and 'weight', if any)"
        raise ValueError(f"{path}: {need} ({type(e).__name__}: {e})") from None
    if weights and len(weights) != len(members):  # a default of 1 beside fractions means nothing
        raise ValueError(f"{path}: {len(weights)} of {len(members)} members have a 'weight'")
    for f, m in zip(files, members, strict=True):
        if Path(m["file"]).is_absolute() or ".." in Path(m["file"]).parts:
            # save_ensemble writes members beside the manifest; a manifest from elsewhere
            # must not make its reader open files anywhere on the machine
            raise ValueError(f"{path}: member file {m['file']!r} must lie in the manifest's folder")
        digest = m.get("sha256")  # manifests saved before the hash was written have none
        if digest and f.is_file() and hashlib.sha256(f.read_bytes()).hexdigest() != digest:
            raise ValueError(f"{path}: {f.name} is not the member it was calibrated with")
    models = [load_safetensors_model(f, device) for f in files]
    meta = {k: v for k, v in info.items() if k not in ("kind", "members", "tta")}
    if "config" in meta:
        meta["config"] = _data_path(meta["config"], path.parent.resolve(), relative=False)
    try:
        return Ensemble(models, temps, info.get("tta", "none"), meta, weights)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
