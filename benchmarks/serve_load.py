"""Load on a real `har serve`: concurrent uploads against one server process on 127.0.0.1.

    .venv/bin/python benchmarks/serve_load.py [--requests 50] [--concurrency 50] [--workers 1 2] [--work DIR]
    .venv/bin/python benchmarks/serve_load.py --hostile [--requests 100] [--work DIR]

Makes its own data: `har synth` (4 classes, 320x240 Xvid, about 2 s each), a 112 px 16-frame
store, and two runs: an LSTM head on random-init ResNet-18 features (backbone + head at predict
time) and a small-c3d video model. For each run and each --workers setting, a server is started
(`har serve RUN --workers N`), `--requests` uploads are sent from `--concurrency` client threads,
and each answer is checked against the same run's in-process predictor (`har predict`'s code) on
that file. The baseline, measured in the same run: the in-process predictor classifying the same
files one after another. Prints one JSON line per (run, workers): latency p50 / p95 / max,
throughput (videos/s) and its ratio to the baseline, and the errors (there must be none).

`--hostile` (the lstm run, 2 workers, the server's other limits at their defaults but
`--body-timeout 10`): `--requests` good clients at once, each from an address of its own
(127.0.1.x: the loopback network is a /8), with mixed sizes (the clips, and every tenth a 20 s
video asked for its timeline, 1 s windows every 0.5 s); a good client told 503 or 429 waits its
Retry-After and asks again, as clients should. Beside them 5 clients ask for minutes of timeline
work and hang up after 2 s, and 5 send all but the last 100 bytes of their body and stall.
Reported: every good answer checked (top-1, or the timeline's segment labels), p50 / p95 (retries
included), the retries, what the slow bodies got (408), and the server's CPU seconds in the 3 s
after the last answer (idle: nothing runs for the clients that left).
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


def ready(url: str, proc: subprocess.Popen) -> None:
    """Wait until the server answers /healthz (its stderr when it exits instead)."""
    import httpx

    for _ in range(1200):
        try:
            httpx.get(url + "/healthz", timeout=1)
            return
        except httpx.HTTPError:
            if proc.poll() is not None:
                raise SystemExit(proc.stderr.read())
            time.sleep(0.1)


def measure(run: Path, videos: list[Path], expected: dict, workers: int, requests: int, concurrency: int,
            baseline: float) -> dict:
    import httpx

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", str(run), "--port", str(port), "--workers",
                             str(workers), "--device", "cpu", "--uploads", str(concurrency), "--per-client",
                             str(concurrency)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        ready(url, proc)
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


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def hostile(run: Path, videos: list[Path], work: Path, requests: int) -> dict:
    """Good clients of mixed sizes, 5 that hang up, 5 slow bodies, against one server."""
    import httpx

    from pipeline.decoding.video import decode_all, write_video
    from trainers.inference import predictor, timeline

    long = work / "long.avi"
    if not long.exists():
        write_video(long, np.concatenate([decode_all(v) for v in videos[:10]]), fps=25)
    very_long = work / "very_long.avi"
    if not very_long.exists():
        write_video(very_long, np.concatenate([decode_all(long)] * 8), fps=25)
    p = predictor.load(run, "cpu")
    expected = {v: p(v, 1)["top"][0]["class"] for v in videos}
    timing = timeline.Timing(1.0, 0.5)
    want_segments = [s["label"] for s in p.timeline(long, 1, timing)["segments"]]
    del p
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", str(run), "--port", str(port), "--workers", "2",
                             "--device", "cpu", "--body-timeout", "10", "--max-seconds", "36000"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    payload = {v: v.read_bytes() for v in [*videos, long, very_long]}
    try:
        ready(url, proc)

        retries = []

        def good(i: int) -> tuple[float, str | None]:
            v = long if i % 10 == 9 else videos[i % len(videos)]
            data = {"window": 1, "stride": 0.5} if v == long else {}
            t0 = time.perf_counter()
            transport = httpx.HTTPTransport(local_address=f"127.0.1.{i + 1}")
            with httpx.Client(transport=transport, timeout=900) as c:
                while (r := c.post(url + "/api/predict", files={"file": (v.name, payload[v])}, data=data)
                       ).status_code in (429, 503) and "retry-after" in r.headers:
                    retries.append(r.status_code)
                    time.sleep(float(r.headers["retry-after"]))
            dt = time.perf_counter() - t0
            if r.status_code != 200:
                return dt, f"{r.status_code} {r.text[:100]}"
            got = r.json()["predictions"][0]
            if v == long:
                labels = [s["label"] for s in got["segments"]]
                return dt, None if labels == want_segments else f"timeline {labels} != {want_segments}"
            return dt, None if got["top"][0]["class"] == expected[v] else f"{v.name}: {got['top'][0]['class']}"

        def hang_up(i: int) -> str:
            transport = httpx.HTTPTransport(local_address=f"127.0.2.{i + 1}")
            try:
                with httpx.Client(transport=transport, timeout=httpx.Timeout(60, read=2)) as c:
                    r = c.post(url + "/api/predict", files={"file": ("very_long.avi", payload[very_long])},
                               data={"window": 0.32, "stride": 0.04})
                return f"answered {r.status_code}"
            except httpx.ReadTimeout:
                return "hung up"

        def slow(i: int) -> str:
            v = videos[0]
            body = (b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.avi\"\r\n\r\n"
                    + payload[v] + b"\r\n--x--\r\n")
            with socket.create_connection(("127.0.0.1", port), source_address=(f"127.0.3.{i + 1}", 0)) as s:
                s.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                          b"boundary=x\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:-100])
                s.settimeout(60)
                return s.recv(64).decode(errors="replace").split("\r\n")[0]

        t0 = time.perf_counter()
        with ThreadPoolExecutor(requests + 10) as ex:
            bad = [ex.submit(hang_up, i) for i in range(5)] + [ex.submit(slow, i) for i in range(5)]
            res = list(ex.map(good, range(requests)))
            bad = [f.result() for f in bad]
        wall = time.perf_counter() - t0
        time.sleep(0.5)
        c0 = cpu_seconds(proc.pid)
        time.sleep(3)
        idle_cpu = cpu_seconds(proc.pid) - c0
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    lat = np.array([t for t, _ in res])
    errors = [e for _, e in res if e]
    return {"run": run.name, "workers": 2, "good_requests": requests, "timeline_requests": requests // 10,
            "hung_up": bad[:5], "slow_bodies": bad[5:], "errors": len(errors), "first_errors": errors[:3],
            "retries": {str(k): retries.count(k) for k in sorted(set(retries))},
            "p50_s": round(float(np.percentile(lat, 50)), 3), "p95_s": round(float(np.percentile(lat, 95)), 3),
            "max_s": round(float(lat.max()), 3), "wall_s": round(wall, 1),
            "cpu_seconds_in_3s_after": round(idle_cpu, 3)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=50)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--hostile", action="store_true", help="good clients of mixed sizes, 5 that hang up, 5 slow bodies")
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="har-serve-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    runs = build(work)
    videos = sorted((work / "syn").glob("*/*.avi"))
    if a.hostile:
        print(json.dumps({"model": "lstm-on-resnet18", **hostile(runs["lstm-on-resnet18"], videos, work, a.requests)}))
        return
    from trainers.inference import predictor

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
