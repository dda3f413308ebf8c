"""Load benchmark of ``refdiff serve`` (export/serve.py) on a local Ray cluster.

For each number of replicas R and request batch size b: C client threads POST
``{"seed": i, "batch": b, "format": "npy"}`` to the Serve proxy on 127.0.0.1 until
``--requests`` requests are done or ``--seconds`` have passed (bounded in count and time),
and the run reports requests/s, samples/s and the p50/p99 request latency.  The same requests
are timed against one in-process :class:`refdiff.export.OrtSampler` called back to back (no
HTTP, no batching) right before each cell: the ratio serve/in-process is of adjacent
measurements, so a noisy neighbour's load drifts less between them.

The clients run in this process and share the machine's cores with the replicas, the Serve
proxy and Ray's own processes: on a 2-core machine the figures are a lower bound of what
dedicated replicas do (docs/scale.md scales them on paper).

    python -m benchmarks.bench_serve [--replicas 1,2] [--batches 1,16,256] [--clients 8]
        [--requests 400] [--seconds 12] [--steps 50] [--json FILE]
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import sys
import threading
import time

import numpy as np


def _pct(lat: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(lat), q)) if lat else float("nan")


def _summary(lat: list[float], wall: float, batch: int) -> dict:
    n = len(lat)
    return {
        "requests": n,
        "seconds": round(wall, 3),
        "req_per_s": n / wall if wall > 0 else float("nan"),
        "samples_per_s": n * batch / wall if wall > 0 else float("nan"),
        "p50_ms": 1e3 * _pct(lat, 50),
        "p99_ms": 1e3 * _pct(lat, 99),
    }


def in_process(model: bytes, batch: int, requests: int, seconds: float) -> dict:
    """One OrtSampler, requests back to back (the serving floor without HTTP or batching)."""
    import refdiff.export as ex

    s = ex.OrtSampler(model, mode="graph", provider="cpu", threads=1)
    s.sample(shape=batch, seed=0)  # warm-up
    lat, t0 = [], time.perf_counter()
    for i in range(requests):
        t = time.perf_counter()
        s.sample(shape=batch, seed=i)
        lat.append(time.perf_counter() - t)
        if time.perf_counter() - t0 > seconds:
            break
    return _summary(lat, time.perf_counter() - t0, batch)


def load(url: str, batch: int, clients: int, requests: int, seconds: float) -> dict:
    """C threads posting until ``requests`` are done or ``seconds`` passed."""
    from refdiff.export.serve import post_sample

    for i in range(3):  # warm-up (sessions, connections)
        post_sample(url, {"seed": i, "batch": batch, "format": "npy"}, timeout=60)
    lock = threading.Lock()
    lat: list[float] = []
    errors: list[object] = []
    counter = iter(range(requests))
    t0 = time.perf_counter()
    deadline = t0 + seconds

    def client() -> None:
        while time.perf_counter() < deadline:
            with lock:
                i = next(counter, None)
            if i is None:
                return
            t = time.perf_counter()
            st, x = post_sample(url, {"seed": i, "batch": batch, "format": "npy"}, timeout=60)
            dt = time.perf_counter() - t
            with lock:
                (lat.append(dt) if st == 200 else errors.append(x))

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    out = _summary(lat, time.perf_counter() - t0, batch)
    out["errors"] = len(errors)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--replicas", default="1,2")
    p.add_argument("--batches", default="1,16,256")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--requests", type=int, default=400)
    p.add_argument("--seconds", type=float, default=12.0)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--batch-wait-ms", type=float, default=2.0)
    p.add_argument("--json", default=None, help="write the figures here (atomically)")
    a = p.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    import refdiff.export as ex
    from ray import serve
    from refdiff.export.serve import sampler_app

    from refdiff._io import write_json
    from refdiff.schedule import make_schedule

    base = make_schedule("linear", a.steps)
    model = ex.mixture_denoiser_model(ex.builtin_mixture("ring8"), base).SerializeToString()
    batches = [int(b) for b in a.batches.split(",")]
    replicas = [int(r) for r in a.replicas.split(",")]
    print(f"model: exact ring8 mixture denoiser, DDPM {a.steps} steps, whole-sampler graph, CPU")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    base_rows: dict[int, list[dict]] = {b: [] for b in batches}
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    url = f"http://127.0.0.1:{port}/bench/sample"
    rows = []
    try:
        for r in replicas:
            app = sampler_app(
                model,
                replicas=r,
                cpus_per_replica=min(1.0, os.cpu_count() / r),
                threads=1,
                batch_wait_s=a.batch_wait_ms / 1000,
                max_batch=max(batches),
                max_rows_per_run=max(8192, max(batches)),
            )
            serve.run(app, name="bench", route_prefix="/bench")
            for b in batches:  # the in-process floor right before each cell (shared machine)
                base = in_process(model, b, a.requests, a.seconds)
                base_rows[b].append(base)
                row = load(url, b, a.clients, a.requests, a.seconds)
                row.update(replicas=r, batch=b, clients=a.clients)
                row["in_process_req_per_s"] = base["req_per_s"]
                row["ratio_req_per_s"] = row["req_per_s"] / base["req_per_s"]
                rows.append(row)
    finally:
        serve.shutdown()
        ray.shutdown()
    print(
        f"\n{'replicas':>8} {'batch':>6} {'req/s':>8} {'samples/s':>10} {'p50 ms':>8} "
        f"{'p99 ms':>8} {'in-proc req/s':>13} {'serve/in-proc':>13}"
    )
    for row in rows:
        print(
            f"{row['replicas']:>8} {row['batch']:>6} {row['req_per_s']:>8.1f} "
            f"{row['samples_per_s']:>10.0f} {row['p50_ms']:>8.1f} {row['p99_ms']:>8.1f} "
            f"{row['in_process_req_per_s']:>13.1f} {row['ratio_req_per_s']:>13.2f}"
        )
    print("\nin-process OrtSampler (one call per request, back to back), before each cell:")
    for bsz, bs in base_rows.items():
        for b in bs:
            print(
                f"  batch {bsz:>5}: {b['req_per_s']:.1f} req/s, p50 {b['p50_ms']:.2f} ms, "
                f"p99 {b['p99_ms']:.2f} ms"
            )
    if a.json:
        write_json(
            a.json,
            {
                "steps": a.steps,
                "clients": a.clients,
                "in_process": {str(k): v for k, v in base_rows.items()},
                "serve": rows,
                "cores": os.cpu_count(),
                "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
