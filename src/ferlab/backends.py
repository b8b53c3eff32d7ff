"""Where experiment trials run: one after another, in worker processes, or on Ray.

Every backend calls ``experiments.run_trial(cfg, split, threads)`` once per trial; a trial
that raises is already recorded in its ``error.json`` and does not stop the others.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any

from .config import TrainConfig
from .distributed import threads_per_worker
from .experiments import Trial, run_trial

log = logging.getLogger(__name__)


def _status(done: int, failed: int, running: int, total: int, last: str, t0: float) -> None:
    finished = done + failed
    # throughput so far, so parallel workers are accounted for
    eta = (time.monotonic() - t0) / finished * (total - finished) if finished else None
    log.info(
        "[%d done, %d failed, %d running, %d left%s] %s",
        done,
        failed,
        running,
        total - finished - running,
        f", suite ETA {eta / 60:.0f} min" if eta is not None else "",
        last,
    )


def run_local(todo: list[tuple[TrainConfig, Trial]], split: str, workers: int = 1) -> None:
    total, done, failed, t0 = len(todo), 0, 0, time.monotonic()
    if workers <= 1:
        for cfg, trial in todo:
            _status(done, failed, 1, total, f"running {trial.variant}/seed{trial.seed}", t0)
            try:
                run_trial(cfg, split)
                done += 1
            except Exception as e:
                failed += 1
                log.error("trial %s/seed%d failed: %s", trial.variant, trial.seed, e)
        _status(done, failed, 0, total, "finished", t0)
        return
    threads = threads_per_worker(workers)
    # spawn, not fork: a forked process inherits torch's thread pool in an unsafe state
    with ProcessPoolExecutor(
        workers, mp_context=mp.get_context("spawn"), initializer=_init_worker
    ) as pool:
        futures: dict[Any, Trial] = {
            pool.submit(run_trial, cfg, split, threads): trial for cfg, trial in todo
        }
        pending = set(futures)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            for f in finished:
                trial = futures[f]
                try:
                    f.result()  # a killed worker raises BrokenProcessPool here
                    done += 1
                except Exception as e:
                    failed += 1
                    log.error("trial %s/seed%d failed: %s", trial.variant, trial.seed, e)
                    _record_crash(trial, e)
                _status(
                    done,
                    failed,
                    min(len(pending), workers),
                    total,
                    f"{trial.variant}/seed{trial.seed} finished",
                    t0,
                )


def _init_worker() -> None:
    """Workers log one line per epoch (prefixed by pid); no interleaved progress bars."""
    os.environ["FERLAB_PROGRESS"] = "0"
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s [%(process)d] %(message)s", datefmt="%H:%M:%S"
    )


def run_ray(
    todo: list[tuple[TrainConfig, Trial]], split: str, workers: int = 1, address: str | None = None
) -> None:
    try:
        import ray
    except ImportError:
        raise ValueError("the ray backend needs Ray: pip install 'ferlab[ray]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        cpus = max(1, int(ray.available_resources().get("CPU", 1)) // max(workers, 1))
        gpus = 1 if ray.available_resources().get("GPU", 0) >= 1 else 0
        remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(run_trial)
        refs = {remote.remote(cfg, split, cpus): trial for cfg, trial in todo}
        total, done, failed, t0 = len(refs), 0, 0, time.monotonic()
        pending = list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            trial = refs[ready[0]]
            try:
                ray.get(ready[0])
                done += 1
            except Exception as e:  # RayTaskError or a dead worker
                failed += 1
                log.error("trial %s/seed%d failed: %s", trial.variant, trial.seed, e)
                _record_crash(trial, e)
            finished = f"{trial.variant}/seed{trial.seed} finished"
            _status(done, failed, len(pending), total, finished, t0)
    finally:
        if started:
            ray.shutdown()


def _record_crash(trial: Trial, error: BaseException) -> None:
    """A worker killed outright never wrote error.json: write it for the report."""
    import json

    from .data import atomic_write_bytes

    if not (trial.run_dir / "error.json").is_file():
        payload = {"error": f"{type(error).__name__}: {error}", "traceback": ""}
        atomic_write_bytes(trial.run_dir / "error.json", json.dumps(payload).encode())
