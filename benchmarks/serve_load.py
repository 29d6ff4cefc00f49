"""Load on a real `har serve`: concurrent uploads against one server process on 127.0.0.1.

    .venv/bin/python benchmarks/serve_load.py [--requests 50] [--concurrency 50] [--workers 1 2] [--work DIR]

Makes its own data: `har synth` (4 classes, 320x240 Xvid, about 2 s each), a 112 px 16-frame
store, and two runs: an LSTM head on random-init ResNet-18 features (backbone + head at predict
time) and a small-c3d video model. For each run and each --workers setting, a server is started
(`har serve RUN --workers N`), `--requests` uploads are sent from `--concurrency` client threads,
and each answer is checked against the same run's in-process predictor (`har predict`'s code) on
that file. The baseline, measured in the same run: the in-process predictor classifying the same
files one after another. Prints one JSON line per (run, workers): latency p50 / p95 / max,
throughput (videos/s) and its ratio to the baseline, and the errors (there must be none).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def har(*args, cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "cli", *map(str, args)], cwd=cwd, check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(ROOT), "HAR_HOME": str(cwd / "home")})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build(work: Path) -> dict[str, Path]:
    if not (work / "head" / "metrics.json").exists():
        har("synth", work / "syn", "--classes", 4, "--groups", 4, "--clips", 2, "--frames", 50, cwd=work)
        har("extract", "synthetic", "--root", work / "syn", "--frames", 16, "--size", 112, "--out", work / "f.zarr",
            "--workers", 1, cwd=work)
        har("features", "--store", work / "f.zarr", "--backbone", "resnet18", "--weights", "none",
            "--out", work / "feat.zarr", cwd=work)
        har("train-head", "lstm", "--features", work / "feat.zarr", "--epochs", 3, "--out", work / "head", cwd=work)
        har("train-e2e", "small-c3d", "--frames", work / "f.zarr", "--epochs", 1, "--out", work / "video",
            "--workers", 1, cwd=work)
    return {"lstm-on-resnet18": work / "head", "small-c3d": work / "video"}


def measure(run: Path, videos: list[Path], expected: dict, workers: int, requests: int, concurrency: int,
            baseline: float) -> dict:
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", str(run), "--port", str(port), "--workers",
                             str(workers), "--device", "cpu"], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(1200):
            try:
                httpx.get(url + "/healthz", timeout=1)
                break
            except httpx.HTTPError:
                if proc.poll() is not None:
                    raise SystemExit(proc.stderr.read())
                time.sleep(0.1)
        jobs = [videos[i % len(videos)] for i in range(requests)]
        payload = {v: v.read_bytes() for v in videos}

        def one(v: Path) -> tuple[float, str | None]:
            t0 = time.perf_counter()
            r = httpx.post(url + "/api/predict", files={"file": (v.name, payload[v])}, timeout=600)
            dt = time.perf_counter() - t0
            if r.status_code != 200:
                return dt, f"{r.status_code} {r.text[:100]}"
            got = r.json()["predictions"][0]["top"][0]["class"]
            return dt, None if got == expected[v] else f"{v.name}: {got} != {expected[v]}"

        httpx.post(url + "/api/predict", files={"file": (videos[0].name, payload[videos[0]])}, timeout=600)  # warm
        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as ex:
            res = list(ex.map(one, jobs))
        wall = time.perf_counter() - t0
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    lat = np.array([t for t, _ in res])
    errors = [e for _, e in res if e]
    return {"run": run.name, "workers": workers, "requests": requests, "concurrency": concurrency,
            "p50_s": round(float(np.percentile(lat, 50)), 3), "p95_s": round(float(np.percentile(lat, 95)), 3),
            "max_s": round(float(lat.max()), 3), "videos_per_s": round(requests / wall, 2),
            "baseline_videos_per_s": round(baseline, 2), "ratio_to_baseline": round(requests / wall / baseline, 2),
            "errors": len(errors), "first_errors": errors[:3]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="har-serve-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    runs = build(work)
    videos = sorted((work / "syn").glob("*/*.avi"))
    from trainers import predictor

    for name, run in runs.items():
        p = predictor.load(run, "cpu")
        expected = {v: p(v, 1)["top"][0]["class"] for v in videos}
        t0 = time.perf_counter()
        for v in videos:
            p(v, 5)
        baseline = len(videos) / (time.perf_counter() - t0)
        del p
        for w in a.workers:
            print(json.dumps({"model": name, **measure(run, videos, expected, w, a.requests, a.concurrency, baseline)}),
                  flush=True)


if __name__ == "__main__":
    main()
