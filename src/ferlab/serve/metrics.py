"""Request metrics in Prometheus' text exposition format, and one JSON access-log line per request.

Written by hand: three counters and two histograms do not need ``prometheus_client``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import defaultdict
from typing import Any

access_log = logging.getLogger("ferlab.serve.access")

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)  # seconds
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)  # faces per model call


def _labels(**kw: str) -> str:
    def esc(v: str) -> str:
        return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

    return ",".join(f'{k}="{esc(v)}"' for k, v in kw.items())


class Histogram:
    """Cumulative-bucket histogram, one series per label set."""

    def __init__(self, name: str, help: str, buckets: tuple[float, ...]):
        self.name, self.help, self.buckets = name, help, buckets
        self.counts: dict[str, list[int]] = defaultdict(lambda: [0] * (len(buckets) + 1))
        self.sums: dict[str, float] = defaultdict(float)

    def observe(self, value: float, labels: str = "") -> None:
        counts = self.counts[labels]
        for i, bound in enumerate(self.buckets):
            if value <= bound:
                counts[i] += 1
        counts[-1] += 1  # +Inf, also the count
        self.sums[labels] += value

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for labels, counts in sorted(self.counts.items()):
            sep = "," if labels else ""
            for bound, n in zip((*self.buckets, "+Inf"), counts, strict=True):
                le = bound if isinstance(bound, str) else f"{bound:g}"
                lines.append(f'{self.name}_bucket{{{labels}{sep}le="{le}"}} {n}')
            braces = f"{{{labels}}}" if labels else ""
            lines.append(f"{self.name}_sum{braces} {self.sums[labels]:.6f}")
            lines.append(f"{self.name}_count{braces} {counts[-1]}")
        return lines


class Metrics:
    """Request counts by path and status, latency and batch-size histograms, faces seen."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[str, int] = defaultdict(int)
        self.faces = 0
        self.latency = Histogram(
            "ferlab_http_request_duration_seconds",
            "Time from request to response, by route.",
            LATENCY_BUCKETS,
        )
        self.batches = Histogram(
            "ferlab_batch_size", "Faces classified per model pass.", BATCH_BUCKETS
        )

    def observe_request(
        self, method: str, path: str, status: int, seconds: float, faces: int
    ) -> None:
        with self._lock:
            self.requests[_labels(method=method, path=path, status=str(status))] += 1
            self.latency.observe(seconds, _labels(path=path))
            self.faces += faces

    def observe_batch(self, size: int) -> None:
        with self._lock:
            self.batches.observe(size)

    def render(self, ready: bool) -> str:
        """The exposition text (``text/plain; version=0.0.4``)."""
        name = "ferlab_http_requests_total"
        with self._lock:
            lines = [
                f"# HELP {name} HTTP requests by method, route and status.",
                f"# TYPE {name} counter",
            ]
            lines += [f"{name}{{{k}}} {v}" for k, v in sorted(self.requests.items())]
            lines += self.latency.render() + self.batches.render()
            lines += [
                "# HELP ferlab_faces_total Faces found in all requests.",
                "# TYPE ferlab_faces_total counter",
                f"ferlab_faces_total {self.faces}",
            ]
        lines += [
            "# HELP ferlab_model_ready 1 once the model is loaded.",
            "# TYPE ferlab_model_ready gauge",
            f"ferlab_model_ready {int(ready)}",
        ]
        return "\n".join(lines) + "\n"


def configure_access_log() -> None:
    """Access lines go to stderr as bare JSON (no timestamp prefix): one object per line."""
    if not access_log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        access_log.addHandler(handler)
        access_log.setLevel(logging.INFO)
        access_log.propagate = False


def route_path(scope: dict) -> str:
    """The path the app routes on: under ``--root-path /fer`` uvicorn puts the prefix into
    ``scope["path"]`` and Starlette strips it before routing, so checks must strip it too."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :] or "/"
    return path


class ObserveMiddleware:
    """ASGI middleware: API key check on /v1/, then metrics and a JSON access-log line.

    The endpoint reports the faces it found in ``request.state.faces``. Routes are labelled by
    their template (unknown paths as "other") so that metrics stay a fixed, small set.
    """

    def __init__(self, app: Any, metrics: Metrics, routes: set[str], check_key: Any = None):
        self.app, self.metrics, self.routes, self.check_key = app, metrics, routes, check_key

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500
        state = scope.setdefault("state", {})

        async def send_and_record(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            denied = self.check_key(scope) if self.check_key else None
            if denied is not None:
                await denied(scope, receive, send_and_record)
            else:
                await self.app(scope, receive, send_and_record)
        finally:
            self._record(scope, status, time.perf_counter() - t0, int(state.get("faces", 0)))

    def _record(self, scope: dict, status: int, seconds: float, faces: int) -> None:
        path = route_path(scope)
        route = path if path in self.routes else "/static" if path.startswith("/static/") else ""
        self.metrics.observe_request(scope["method"], route or "other", status, seconds, faces)
        line = {"time": round(time.time(), 3), "method": scope["method"], "path": scope["path"]}
        line.update(status=status, ms=round(seconds * 1000, 2), faces=faces)
        access_log.info(json.dumps(line))
