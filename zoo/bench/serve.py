"""`zoo bench serve`: requests per second and latency of `zoo serve` on localhost, against the model called directly.

    zoo bench serve --model vit_mnist.mnist5k --requests 400 --max-seconds 15 --rounds 3

For each setting the same request (the handler's sample: an MNIST digit for image models, a short text
otherwise) is sent by `concurrency` client threads over keep-alive connections until `--requests`
answers or `--max-seconds` have passed, whichever comes first:
    direct      the handler's predict on one input at a time, in a loop, in this process (no HTTP)
    unbatched   zoo serve --max-batch-size 1
    batched     zoo serve --max-batch-size B --batch-timeout T (dynamic batching)
at concurrency 1, 8 and 32 (direct: 1). Latency is measured per request by the client (p50/p95/p99);
throughput is answered requests / wall time. Both servers run for the whole bench and the settings are
interleaved over --rounds rounds (the servers' order alternates), so load changes fall on both alike; the
table is the median over rounds. The server binds to 127.0.0.1 only. Model workers and the
direct loop use the same number of torch threads (--threads). Results: runs/bench/serve_<model>.csv (medians)
and serve_<model>_rounds.csv (every round).
"""
from __future__ import annotations

import argparse
import os
import statistics
import threading
import time
from pathlib import Path


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between order statistics."""
    if not values:
        return float("nan")
    v = sorted(values)
    pos = (len(v) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (pos - lo)


def summarise(latencies: list[float], seconds: float, errors: int) -> dict:
    ms = [x * 1000 for x in latencies]
    return {"requests": len(ms), "errors": errors, "seconds": round(seconds, 3),
            "throughput_rps": round(len(ms) / seconds, 2) if seconds > 0 else float("nan"),
            "mean_ms": round(statistics.fmean(ms), 2) if ms else float("nan"),
            "p50_ms": round(percentile(ms, 50), 2), "p95_ms": round(percentile(ms, 95), 2),
            "p99_ms": round(percentile(ms, 99), 2)}


def direct_loop(handler, payload: dict, requests: int, max_seconds: float, warmup: int = 5) -> dict:
    """handler.predict on one checked input at a time: what serving adds its overhead to."""
    items = handler.check(payload)["items"]
    for _ in range(warmup):
        handler.predict(items)
    latencies = []
    start = time.perf_counter()
    while len(latencies) < requests and time.perf_counter() - start < max_seconds:
        t = time.perf_counter()
        handler.predict(items)
        latencies.append(time.perf_counter() - t)
    return summarise(latencies, time.perf_counter() - start, 0)


def load(url: str, payload: dict, concurrency: int, requests: int, max_seconds: float, warmup: int = 3) -> dict:
    """`concurrency` threads, each with its own keep-alive session, post `payload` until the budget is spent."""
    import requests as http

    lock = threading.Lock()
    latencies: list[float] = []
    errors = [0]
    sent = [0]
    deadline = [0.0]

    def worker():
        with http.Session() as s:
            for _ in range(warmup):
                s.post(url, json=payload, timeout=60)
            barrier.wait()
            while True:
                with lock:
                    if sent[0] >= requests or time.perf_counter() > deadline[0]:
                        return
                    sent[0] += 1
                t = time.perf_counter()
                try:
                    ok = s.post(url, json=payload, timeout=60).status_code == 200
                except OSError:
                    ok = False
                dt = time.perf_counter() - t
                with lock:
                    if ok:
                        latencies.append(dt)
                    else:
                        errors[0] += 1

    barrier = threading.Barrier(concurrency + 1)
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(concurrency)]
    for th in threads:
        th.start()
    deadline[0] = time.perf_counter() + 1e9
    barrier.wait()
    start = time.perf_counter()
    deadline[0] = start + max_seconds
    for th in threads:
        th.join(max_seconds + 120)
    return summarise(latencies, time.perf_counter() - start, errors[0])


def run_bench(model: str, concurrency=(1, 8, 32), requests: int = 400, max_seconds: float = 20.0, max_batch_size: int = 16,
              batch_timeout: float = 0.01, threads: int = 1, rounds: int = 3, log_dir: str | None = None) -> list[dict]:
    """One row per (round, mode, concurrency). Both servers run for the whole bench and the settings are
    interleaved round by round (the order of the two servers alternates), so that a change in the machine's
    load falls on both alike; `summary_rows` takes the medians over rounds."""
    import torch

    from ..runs import load_run
    from ..serve.handlers import handler_for
    from ..serve.launch import ServerProcess
    from ..serve.limits import Limits

    torch.set_num_threads(threads)
    run = load_run(model)
    handler = handler_for(run, Limits())
    payload = handler.sample()
    base = {"model": run.name, "use": handler.use, "threads": threads}
    settings = {"unbatched": (1, 0.0), "batched": (max_batch_size, batch_timeout)}
    servers = {}
    rows = []
    try:
        for mode, (mbs, timeout) in settings.items():
            log = Path(log_dir) / f"serve_{mode}.log" if log_dir else None
            servers[mode] = ServerProcess(model, "--max-batch-size", str(mbs), "--batch-timeout", str(timeout),
                                          "--threads", str(threads), "--max-items", "64", log=log,
                                          env={"OMP_NUM_THREADS": str(threads)})
        for server in servers.values():
            server.wait(300)
        for r in range(rounds):
            rows.append({**base, "round": r, "mode": "direct", "max_batch_size": "", "batch_timeout": "", "concurrency": 1,
                         **direct_loop(handler, payload, requests, max_seconds)})
            print(_line(rows[-1]), flush=True)
            order = list(settings) if r % 2 == 0 else list(settings)[::-1]
            for c in concurrency:
                for mode in order:
                    mbs, timeout = settings[mode]
                    rows.append({**base, "round": r, "mode": mode, "max_batch_size": mbs, "batch_timeout": timeout,
                                 "concurrency": c, **load(servers[mode].url + "/predict", payload, c, requests, max_seconds)})
                    print(_line(rows[-1]), flush=True)
    finally:
        for server in servers.values():
            server.stop()
    return rows


def summary_rows(rows: list[dict]) -> list[dict]:
    """Per (mode, concurrency): the median over rounds of throughput and of each latency percentile."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["mode"], r["concurrency"]), []).append(r)
    out = []
    for (mode, c), rs in groups.items():
        first = rs[0]
        out.append({"model": first["model"], "mode": mode, "max_batch_size": first["max_batch_size"],
                    "batch_timeout": first["batch_timeout"], "concurrency": c, "rounds": len(rs),
                    "requests": sum(r["requests"] for r in rs), "errors": sum(r["errors"] for r in rs),
                    **{k: round(statistics.median(r[k] for r in rs), 2)
                       for k in ("throughput_rps", "p50_ms", "p95_ms", "p99_ms")},
                    "throughput_rps_min": min(r["throughput_rps"] for r in rs),
                    "throughput_rps_max": max(r["throughput_rps"] for r in rs)})
    return out


def _line(r: dict) -> str:
    return (f"{r['mode']:9s} batch {r['max_batch_size'] or '-'!s:>3s} c={r['concurrency']:<3d} {r['requests']:5d} req "
            f"{r['throughput_rps']:8.1f} req/s  p50 {r['p50_ms']:7.1f} ms  p95 {r['p95_ms']:7.1f} ms  p99 {r['p99_ms']:7.1f} ms"
            + (f"  errors {r['errors']}" if r["errors"] else ""))


def main(argv: list[str]) -> int:
    from .cli import DEFAULT_OUT, _ints, fresh_stem, write_rows

    p = argparse.ArgumentParser(allow_abbrev=False, prog="zoo bench serve", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="vit_mnist", help="what zoo serve --model takes (default: vit_mnist, random weights)")
    p.add_argument("--concurrency", type=_ints, default=(1, 8, 32))
    p.add_argument("--requests", type=int, default=400, help="answered requests per setting, at most")
    p.add_argument("--max-seconds", type=float, default=20.0, help="wall time per setting, at most")
    p.add_argument("--max-batch-size", type=int, default=16, help="dynamic batch of the batched server")
    p.add_argument("--batch-timeout", type=float, default=0.01)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the model workers and of the direct loop")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds over all settings; the table shows medians")
    p.add_argument("--out", help="CSV path (default: runs/bench/serve_<model name>.csv); an existing file is never "
                                 "replaced: the next free name <name>_2.csv ... is taken")
    a = p.parse_args(argv)
    if a.requests < 1 or a.max_seconds <= 0 or a.rounds < 1 or min(a.concurrency, default=0) < 1:
        raise ValueError("--requests, --max-seconds, --rounds and every --concurrency must be positive")
    rows = run_bench(a.model, a.concurrency, a.requests, a.max_seconds, a.max_batch_size, a.batch_timeout, a.threads,
                     a.rounds)
    out = Path(a.out or f"{DEFAULT_OUT}/serve_{rows[0]['model']}.csv")
    out = out.with_name(fresh_stem(out.parent, out.stem, (out.suffix, "_rounds" + out.suffix)) + out.suffix)
    load_avg = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    for r in rows:
        r["load_avg_1m_end"] = round(load_avg, 2)
        r["cores"] = os.cpu_count()
    write_rows(rows, out.with_name(out.stem + "_rounds.csv"))
    summary = summary_rows(rows)
    for r in summary:
        r["load_avg_1m_end"] = round(load_avg, 2)
        r["cores"] = os.cpu_count()
    write_rows(summary, out)
    print(f"medians over {a.rounds} interleaved round(s):")
    for r in summary:
        print("  " + _line(r) + f"  (range {r['throughput_rps_min']:.1f}-{r['throughput_rps_max']:.1f} req/s)")
    print(f"wrote {out} and {out.with_name(out.stem + '_rounds.csv')} (load average {load_avg:.1f} on {os.cpu_count()} cores at the end)")
    return 0
