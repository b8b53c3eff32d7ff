"""Micro-batching: face crops from concurrent requests classified in one model call.

A CNN classifies 64 faces in little more time than one, so a server that calls the model once
per request wastes most of it under load. :class:`MicroBatcher` lets the crops of requests
that arrive together share one ``predict_proba`` call.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np


class _Batch:
    """Crops waiting for one model call, and the futures of the requests they came from."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.parts: list[np.ndarray] = []
        self.futures: list[asyncio.Future] = []
        self.size = 0
        self.full = asyncio.Event()


class MicroBatcher:
    """Classifies face crops from concurrent requests together.

    A batch opens when crops arrive and none is open. It closes ``wait_ms`` later, or as soon as
    it holds ``max_batch`` faces; while the model is still busy with the previous batch it stays
    open, so that the requests arriving meanwhile ride along. One model call runs at a time, in a
    worker thread, so the event loop keeps answering (health checks, uploads) while it computes.

    Args:
        predict: ``uint8 (N, 48, 48) -> float32 (N, classes)``, e.g. ``model.predict_proba``.
        wait_ms: how long a batch waits for company; 0 calls the model once per request.
        max_batch: faces per batch, at most: a request that would overfill the open batch
            starts the next one (a single larger request goes alone; ``predict`` splits it).
        on_batch: called with the number of faces of every model pass (for metrics).
    """

    def __init__(
        self,
        predict: Callable[[np.ndarray], np.ndarray],
        wait_ms: float = 5.0,
        max_batch: int = 64,
        on_batch: Callable[[int], None] | None = None,
    ):
        if wait_ms < 0 or max_batch < 1:
            raise ValueError(f"need wait_ms >= 0 and max_batch >= 1, got {wait_ms}, {max_batch}")
        self.predict = predict
        self.wait = wait_ms / 1000
        self.max_batch = max_batch
        self.on_batch = on_batch
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="ferlab-model")
        self._open: _Batch | None = None
        self._running: Future | None = None  # the model call in progress
        self._tasks: set[asyncio.Task] = set()  # flush tasks, referenced until done

    async def classify(self, crops: np.ndarray) -> np.ndarray:
        """Probabilities for ``crops`` (N, 48, 48), computed alone or with other requests'."""
        if len(crops) == 0:
            return np.zeros((0, 0), np.float32)
        if self.wait == 0:
            return await asyncio.wrap_future(self._submit(crops))
        loop = asyncio.get_running_loop()
        batch = self._open
        if batch is not None and batch.loop is loop and batch.size + len(crops) > self.max_batch:
            self._open = None  # these crops would overfill it: it goes as it is
            batch.full.set()
            batch = None
        # a batch of another event loop (a test client's, since closed) is never joined
        if batch is None or batch.loop is not loop:
            batch = self._open = _Batch(loop)
            task = loop.create_task(self._flush(batch))  # not the request's: a timeout of one
            self._tasks.add(task)  # request must not cancel the others' model call
            task.add_done_callback(self._tasks.discard)
        future = loop.create_future()
        batch.parts.append(crops)
        batch.futures.append(future)
        batch.size += len(crops)
        if batch.size >= self.max_batch:
            self._open = None
            batch.full.set()
        return await future

    def _submit(self, crops: np.ndarray) -> Future:
        if self.on_batch is not None:  # a call of more than max_batch faces runs in passes
            for start in range(0, len(crops), self.max_batch):
                self.on_batch(min(self.max_batch, len(crops) - start))
        self._running = self._executor.submit(self.predict, crops)
        return self._running

    async def _flush(self, batch: _Batch) -> None:
        with contextlib.suppress(TimeoutError):  # timed out: the batch goes as it is
            await asyncio.wait_for(batch.full.wait(), self.wait)
        # the model is busy: keep collecting until it is free or the batch is full
        while self._running is not None and not self._running.done() and self._open is batch:
            await asyncio.wait([asyncio.wrap_future(self._running)])
        if self._open is batch:
            self._open = None
        try:
            probs = await asyncio.wrap_future(self._submit(np.concatenate(batch.parts)))
        except Exception as e:  # every request of the batch gets the model's error
            for future in batch.futures:
                if not future.done():
                    future.set_exception(e)
            return
        start = 0
        for part, future in zip(batch.parts, batch.futures, strict=True):
            if not future.done():  # done = cancelled: that request timed out
                future.set_result(probs[start : start + len(part)])
            start += len(part)

    def close(self) -> None:
        """Stop the model thread once the current call ends (pending calls are dropped)."""
        self._executor.shutdown(wait=False, cancel_futures=True)
