"""Requests to object storage per command: the chain on an S3-compatible server, each request counted.

    .venv/bin/python benchmarks/s3_requests.py [--videos 8] [--work /tmp/har-s3-requests] [--json FILE]

A request to S3 costs 20-50 ms of latency (moto, the server this runs on 127.0.0.1, about 11 ms),
so how many requests a command sends decides its time on object storage as much as its bytes.
A `har synth` set (2 classes x `--videos`/4 groups x 2 clips, 12 frames at 64x48) is extracted
to s3://, then, each in this process through har's CLI (typer's runner, as the tests do):

    har extract synthetic --root DATA --out s3://B/frames.zarr --frames 4 --size 32 --workers 1
    har extract ... again                        (up to date: reads the store's records only)
    har features --store s3://B/frames.zarr --out s3://B/feats.zarr --backbone resnet18 --weights none --resize stored
    har status s3://B/frames.zarr s3://B/feats.zarr
    har train-head lstm --features s3://B/feats.zarr --epochs 3 --split random

Every call s3fs makes (`S3FileSystem._call_s3`: one per request) is counted by operation; the Dask
workers of the extraction are processes of their own, so their chunk writes are not in the counts
(the same before and after any change of the reading side). Prints one JSON line per command:
requests, by operation, seconds.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--videos", type=int, default=8, help="videos in the set (a multiple of 4)")
    p.add_argument("--work", type=Path, default=Path("/tmp/har-s3-requests"))
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args()
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    import boto3
    import s3fs
    from moto.server import ThreadedMotoServer

    from helpers import har
    from pipeline.datasets.synth import SynthConfig, generate

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    a.work.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=a.work))   # this run's HAR_HOME and head run: fresh each time
    os.environ.update({"AWS_ENDPOINT_URL": f"http://{host}:{port}", "AWS_ACCESS_KEY_ID": "bench",
                       "AWS_SECRET_ACCESS_KEY": "bench", "AWS_REGION": "us-east-1",
                       "HAR_HOME": str(scratch / "home")})
    boto3.client("s3", endpoint_url=os.environ["AWS_ENDPOINT_URL"]).create_bucket(Bucket="requests-bench")
    data = a.work / f"data{a.videos}"
    if not data.exists():
        generate(data, SynthConfig(classes=2, groups=max(1, a.videos // 4), clips=2, frames=12, width=64, height=48))
    calls: collections.Counter = collections.Counter()
    real = s3fs.S3FileSystem._call_s3

    async def counted(self, method, *args, **kwargs):
        calls[method] += 1
        return await real(self, method, *args, **kwargs)

    s3fs.S3FileSystem._call_s3 = counted
    frames, feats = "s3://requests-bench/frames.zarr", "s3://requests-bench/feats.zarr"
    extract = ["extract", "synthetic", "--root", data, "--out", frames, "--frames", 4, "--size", 32, "--workers", 1]
    steps = [("extract", extract), ("extract again", extract),
             ("features", ["features", "--store", frames, "--out", feats, "--backbone", "resnet18", "--weights", "none",
                           "--resize", "stored"]),
             ("status", ["status", frames, feats]),
             ("train-head", ["train-head", "lstm", "--features", feats, "--out", scratch / "run", "--epochs", 3,
                             "--tracker", "none", "--split", "random"])]
    rows = []
    try:
        for name, args in steps:
            calls.clear()
            t = time.perf_counter()
            ran = har(*args)
            if ran.returncode != 0:
                raise SystemExit(f"{name} failed: {ran.stderr}")
            rows.append({"step": name, "videos": a.videos, "requests": sum(calls.values()),
                         "by_operation": dict(calls.most_common()), "seconds": round(time.perf_counter() - t, 2)})
            print(json.dumps(rows[-1]), flush=True)
    finally:
        server.stop()
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
