"""Load test of `ferlab serve`: requests/s and latency under concurrent clients, with and
without micro-batching.

    python benchmarks/serve_load.py                                # shipped model, 8 and 32 clients
    python benchmarks/serve_load.py --model runs/x/best.pt --seconds 10 --clients 4 16
    python benchmarks/serve_load.py --no-detect                    # a face crop: the model alone

For each --batch-wait-ms value it starts `ferlab serve` on 127.0.0.1 (a free port, nowhere
else), waits for /readyz, then for each --clients value runs that many client threads posting a
real photo (scikit-image's astronaut, one face) over keep-alive connections for --seconds, and
at most --max-requests in all. It prints a Markdown table and exits 1 if any request failed.
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from ferlab.media import demo_image

HOST = "127.0.0.1"  # the load never leaves this machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def multipart(data: bytes, name: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return (
        head + data + f"\r\n--{boundary}--\r\n".encode(),
        f"multipart/form-data; boundary={boundary}",
    )


def start_server(args: argparse.Namespace, wait_ms: float) -> tuple[subprocess.Popen, int]:
    port = free_port()
    cmd = [sys.executable, "-m", "ferlab", "serve", "--host", HOST, "--port", str(port)]
    cmd += ["--batch-wait-ms", str(wait_ms), "--runtime", args.runtime, "--detector", args.detector]
    cmd += ["--model", args.model] if args.model else []
    env = {k: v for k, v in os.environ.items() if k != "FERLAB_API_KEY"}
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"`{' '.join(cmd)}` exited with {proc.returncode}")
        try:
            if get(port, "/readyz")[0] == 200:
                return proc, port
        except OSError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError("the server did not become ready in 180 s")


def get(port: int, path: str) -> tuple[int, str]:
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request("GET", path)
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def batch_stats(port: int) -> tuple[float, float]:
    """(faces classified, model calls) so far, from /metrics."""
    text = get(port, "/metrics")[1]
    values = [re.search(rf"^ferlab_batch_size_{k} (\S+)$", text, re.M) for k in ("sum", "count")]
    return tuple(float(m.group(1)) if m else 0.0 for m in values)  # type: ignore[return-value]


def client(port: int, path: str, body: bytes, ctype: str, until: float, budget, out: list) -> None:
    """Post until the deadline or the shared request budget runs out; record (ok, seconds)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    while time.monotonic() < until and budget():
        t0 = time.perf_counter()
        try:
            conn.request("POST", path, body, {"Content-Type": ctype})
            r = conn.getresponse()
            ok = r.status == 200 and json.loads(r.read()).get("faces") is not None
        except (OSError, http.client.HTTPException, ValueError):
            ok = False
            conn.close()
            conn = http.client.HTTPConnection(HOST, port, timeout=60)
        out.append((ok, time.perf_counter() - t0))
    conn.close()


def run_load(port: int, clients: int, args: argparse.Namespace, body: bytes, ctype: str) -> dict:
    path = "/v1/predict" + ("?no_detect=true" if args.no_detect else "")
    left = [args.max_requests]
    lock = threading.Lock()

    def budget() -> bool:
        with lock:
            left[0] -= 1
            return left[0] >= 0

    results: list[tuple[bool, float]] = []
    faces0, calls0 = batch_stats(port)
    t0 = time.perf_counter()
    until = time.monotonic() + args.seconds
    with ThreadPoolExecutor(clients) as pool:
        for _ in range(clients):
            pool.submit(client, port, path, body, ctype, until, budget, results)
    elapsed = time.perf_counter() - t0
    faces, calls = batch_stats(port)
    ms = np.array([s for ok, s in results if ok]) * 1000
    pct = np.percentile(ms, [50, 95, 99]) if len(ms) else [float("nan")] * 3
    return {
        "requests": len(results),
        "rps": len(ms) / elapsed,
        "p50": pct[0],
        "p95": pct[1],
        "p99": pct[2],
        "errors": sum(1 for ok, _ in results if not ok),
        "batch": (faces - faces0) / max(calls - calls0, 1),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default=None, help="model path or shipped name [default: shipped]")
    p.add_argument("--runtime", default="torch", help="torch or onnx")
    p.add_argument("--detector", default="haar")
    p.add_argument("--seconds", type=float, default=30.0, help="per setting and client count")
    p.add_argument("--clients", type=int, nargs="+", default=[8, 32])
    p.add_argument("--batch-wait-ms", type=float, nargs="+", default=[0.0, 5.0])
    p.add_argument("--max-requests", type=int, default=100_000, help="per run, at most")
    p.add_argument("--no-detect", action="store_true", help="post a face crop: the model alone")
    args = p.parse_args()
    photo = demo_image()
    if args.no_detect:
        photo = photo[66:161, 177:272]  # her face, as Haar frames it
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, format="JPEG", quality=90)
    body, ctype = multipart(buf.getvalue(), "astronaut.jpg")
    what = "face crop, no detection" if args.no_detect else f"512x512 photo, {args.detector}"
    print(f"model {args.model or 'shipped default'} ({args.runtime}), {what}, ", end="")
    print(f"{args.seconds:g} s per run, {os.cpu_count()} CPUs\n")
    print(
        "| batch wait ms | clients | requests | req/s | p50 ms | p95 ms | p99 ms | errors |", end=""
    )
    print(" faces per model call |\n|---|---|---|---|---|---|---|---|---|")
    errors = 0
    for wait_ms in args.batch_wait_ms:
        proc, port = start_server(args, wait_ms)
        try:
            warm = argparse.Namespace(**{**vars(args), "seconds": min(2.0, args.seconds)})
            run_load(port, max(args.clients), warm, body, ctype)  # threads, kernels, detectors
            for n in args.clients:
                r = run_load(port, n, args, body, ctype)
                errors += r["errors"]
                print(
                    f"| {wait_ms:g} | {n} | {r['requests']} | {r['rps']:.1f} | {r['p50']:.0f} | "
                    f"{r['p95']:.0f} | {r['p99']:.0f} | {r['errors']} | {r['batch']:.1f} |",
                    flush=True,
                )
        finally:
            proc.terminate()
            proc.wait(30)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
