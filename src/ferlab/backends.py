"""Where experiment trials run: one after another, in worker processes, or on Ray.

Every backend calls ``experiments.run_trial(cfg, split, threads)`` once per trial; a trial
that raises is already recorded in its ``error.json`` and does not stop the others. Neither
does one that kills its worker process: the backend records that.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import multiprocessing.connection
import os
import signal
import sys
import time
from collections.abc import Callable
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
    # one process per trial, not a pool: a trial that kills its process (os._exit, the OOM
    # killer) then fails alone, where it would break a ProcessPoolExecutor and every trial
    # in it. spawn, not fork: a forked process inherits torch's thread pool in an unsafe state
    ctx = mp.get_context("spawn")
    queue = list(todo)
    running: dict[Any, tuple[Any, Trial]] = {}
    while queue or running:
        while queue and len(running) < workers:
            cfg, trial = queue.pop(0)
            # a previous attempt's error must not pass for this one's if it dies at start
            (trial.run_dir / "error.json").unlink(missing_ok=True)
            p = ctx.Process(target=_trial_process, args=(run_trial, cfg, split, threads))
            p.start()
            running[p.sentinel] = (p, trial)
        for sentinel in mp.connection.wait(list(running)):
            p, trial = running.pop(sentinel)
            p.join()
            if p.exitcode == 0 or trial.done:  # done: it died on its way out
                done += 1
            else:
                failed += 1
                why = _record_crash(trial, f"worker process died ({_exit(p.exitcode)})")
                log.error("trial %s/seed%d failed: %s", trial.variant, trial.seed, why)
            finished = f"{trial.variant}/seed{trial.seed} finished"
            # the next trial starts at once: count it as running
            _status(done, failed, min(len(running) + len(queue), workers), total, finished, t0)


def _trial_process(run: Callable[..., Any], cfg: TrainConfig, split: str, threads: int) -> None:
    """A worker: one line per epoch (prefixed by pid), no interleaved progress bars."""
    os.environ["FERLAB_PROGRESS"] = "0"
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s [%(process)d] %(message)s", datefmt="%H:%M:%S"
    )
    try:
        run(cfg, split, threads)
    except Exception:
        sys.exit(1)  # run_trial has written error.json; the exit code tells the parent


def _exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


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
                _record_crash(trial, f"{type(e).__name__}: {e}")
            finished = f"{trial.variant}/seed{trial.seed} finished"
            _status(done, failed, len(pending), total, finished, t0)
    finally:
        if started:
            ray.shutdown()


def _record_crash(trial: Trial, error: str) -> str:
    """The trial's error: from its error.json, or ``error``, written there if the trial died
    before it could write one (killed outright), so the report lists it."""
    import json

    from .data import atomic_write_bytes

    path = trial.run_dir / "error.json"
    if path.is_file():
        return json.loads(path.read_text())["error"]
    atomic_write_bytes(path, json.dumps({"error": error, "traceback": ""}).encode())
    return error
