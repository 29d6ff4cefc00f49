"""How har's costs grow with the dataset: the same chain at several sizes, per-video costs compared.

    .venv/bin/python benchmarks/scale.py [--sizes 1010 13320] [--work /tmp/har-scale] [--pool 200]
        [--seconds 7] [--features] [--epochs 5]

For every size N: a `folder` dataset of N UCF-like videos (320x240, 25 fps, MPEG-4/Xvid AVI at
1.2 Mbit/s, `--seconds` long, keyframe every 12 frames) in 101 class folders with _gGG_ groups, as
UCF101 lays them out. The videos are hard links to a pool of `--pool` distinct videos made once by
`har synth` (encoding 13,320 videos would take longer than extracting them, and the decode cost
per video is the same for a link), so each dataset costs the pool's bytes on disk. Then, through
har's CLI (the `har` beside sys.executable), each step timed with the peak memory of its process
tree (psutil, every 0.2 s):

    har extract folder --root N/data --out N/frames.zarr      (default recipe: 16 frames at 112 px)
    har extract ... again                                     (the no-op rerun: hashes unread, nothing decoded)
    har status N/frames.zarr                                  (is the store current?)
    har features --store ... --backbone resnet18 --weights none --resize stored   (with --features)
    har train-head lstm --features ... --epochs E             (with --features)

`--dataset kinetics400` lays the videos out as Kinetics' official download does instead: 400
classes, `annotations/train.csv` and `val.csv` in the official format (label, youtube_id,
time_start, time_end, split), `train/<id>_<start>_<end>.avi` flat, and `--missing` of the listed
clips never downloaded. `--noop-decoder` runs every extraction on a dask cluster this script
starts (`--workers` processes, one thread each) whose workers preload benchmarks/noop_decoder.py:
the decode returns blank samples, all the rest is har's, so 240,000 videos measure har's own
per-video overheads (indexing, hashing, graph and scheduling, lineage, store metadata) in minutes:

    .venv/bin/python benchmarks/scale.py --dataset kinetics400 --noop-decoder --sizes 24000 240000 \
        --seconds 1 --pool 40 --extract-args="--frames 8 --size 32"

Every size also times `extract_one_changed`: one source replaced by another's bytes, then the
rerun (only it is decoded). Reported per step and size: wall seconds, per-video milliseconds, peak RSS (largest process and
the sum over the tree), store bytes and file count; and the ratio of per-video cost at each size
to the smallest size's (1.0 = linear). Labels do not match content (classes are assigned in turn),
so training accuracy is chance: only costs are measured. Prints one JSON line per step and a final
JSON summary (also written to --json FILE).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

CLASSES, GROUPS = 101, 25


def log(msg: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def har_exe() -> str:
    return str(Path(sys.executable).with_name("har"))


def pool_videos(work: Path, n: int, seconds: float) -> list[Path]:
    """n distinct UCF-like videos (har synth: 10 classes x groups x 4 clips), made once."""
    from pipeline.datasets.synth import SynthConfig, generate

    root = work / f"pool-{n}-{seconds:g}s"
    done = root / ".done"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        groups = max(1, -(-n // 40))
        log(f"generating {10 * groups * 4} pool videos in {root}")
        generate(root, SynthConfig(classes=10, groups=groups, clips=4, frames=int(seconds * 25), gop=12))
        done.touch()
    videos = sorted(p for p in root.rglob("*.avi"))
    return videos[:n]


def layout(work: Path, size: int, pool: list[Path]) -> Path:
    """A UCF101-like folder dataset of `size` hard links to the pool videos."""
    data = work / str(size) / "data"
    marker = data / ".done"
    if marker.exists():
        return data
    shutil.rmtree(data, ignore_errors=True)
    per_class = [size // CLASSES + (1 if c < size % CLASSES else 0) for c in range(CLASSES)]
    i = 0
    for c, count in enumerate(per_class):
        folder = data / f"Class{c:03d}"
        folder.mkdir(parents=True)
        for k in range(count):
            g, clip = k % GROUPS + 1, k // GROUPS + 1
            os.link(pool[i % len(pool)], folder / f"v_Class{c:03d}_g{g:02d}_c{clip:02d}.avi")
            i += 1
    marker.touch()
    return data


def kinetics_layout(work: Path, size: int, pool: list[Path], missing: float, name: str) -> Path:
    """A Kinetics-like dataset: `size` downloaded clips (hard links to the pool) of 400 classes in
    the official annotation CSVs (train and val, 9:1), and `missing` of as many again listed but
    absent (missing downloads)."""
    import csv

    data = work / f"{name}-{size}" / "data"
    marker = data / ".done"
    if marker.exists():
        return data
    shutil.rmtree(data, ignore_errors=True)
    (data / "annotations").mkdir(parents=True)
    lost = int(round(size * missing / (1 - missing)))
    never = {k * (size + lost) // lost for k in range(lost)}   # listed, never downloaded: evenly spread
    rows: dict[str, list] = {"train": [], "val": []}
    for i in range(size + lost):
        part = "val" if i % 10 == 9 else "train"
        yid, start = f"k{i:010d}", 10 * (i % 7)
        rows[part].append((f"class {i % 400:03d}", yid, start, start + 10, part))
        if i not in never:
            (data / part).mkdir(exist_ok=True)
            os.link(pool[i % len(pool)], data / part / f"{yid}_{start:06d}_{start + 10:06d}.avi")
    for part, rs in rows.items():
        with open(data / "annotations" / f"{part}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["label", "youtube_id", "time_start", "time_end", "split"])
            w.writerows(rs)
    marker.touch()
    return data


def noop_cluster(workers: int):
    """A local dask cluster whose workers decode nothing (benchmarks/noop_decoder.py)."""
    from dask.distributed import LocalCluster

    return LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None,
                        scheduler_kwargs={"dashboard": False, "dashboard_address": ":0"},
                        preload=[str(HERE / "noop_decoder.py")], silence_logs=40)


def run_step(name: str, cmd: list[str], env: dict, ok=(0,)) -> dict:
    import psutil

    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = {"max_proc": 0, "tree": 0}
    stop = threading.Event()

    def sample():
        try:
            root = psutil.Process(p.pid)
        except psutil.NoSuchProcess:
            return
        while not stop.wait(0.2):
            try:
                procs = [root, *root.children(recursive=True)]
                rss = []
                for q in procs:
                    try:
                        rss.append(q.memory_info().rss)
                    except psutil.NoSuchProcess:
                        pass
                peak["max_proc"] = max(peak["max_proc"], max(rss, default=0))
                peak["tree"] = max(peak["tree"], sum(rss))
            except psutil.NoSuchProcess:
                return

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out, err = p.communicate()
    stop.set()
    t.join()
    wall = time.perf_counter() - t0
    if p.returncode not in ok:
        raise SystemExit(f"{name} failed ({p.returncode}):\n{err[-3000:]}")
    return {"step": name, "wall_s": round(wall, 2), "peak_rss_max_proc_mib": round(peak["max_proc"] / 2**20),
            "peak_rss_tree_mib": round(peak["tree"] / 2**20), "stdout_tail": out.strip().splitlines()[-6:]}


def store_stats(path: Path) -> dict:
    files = [f for f in path.rglob("*") if f.is_file()]
    meta = path / "zarr.json"
    return {"store_bytes": sum(f.stat().st_size for f in files), "store_files": len(files),
            "root_zarr_json_bytes": meta.stat().st_size if meta.exists() else None,
            "metadata_bytes": sum(f.stat().st_size for f in files if f.name == "zarr.json")}


def replace_one(data: Path) -> None:
    """One source replaced by another's bytes (a new inode and content): the rerun decodes only it."""
    import filecmp

    videos = sorted(p for p in data.rglob("*.avi"))
    victim = videos[len(videos) // 2]
    donor = next(v for v in videos if not filecmp.cmp(v, victim, shallow=False))
    victim.unlink()
    shutil.copy(donor, victim)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", nargs="+", type=int, default=[1010, 13320])
    ap.add_argument("--work", type=Path, default=Path("/tmp/har-scale"))
    ap.add_argument("--pool", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=7.0)
    ap.add_argument("--features", action="store_true", help="also har features (resnet18, CPU) and train-head")
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--dataset", choices=("folder", "kinetics400"), default="folder",
                    help="folder: UCF101's layout; kinetics400: the official CSVs and split folders")
    ap.add_argument("--missing", type=float, default=0.05, help="kinetics400: share of listed clips not downloaded")
    ap.add_argument("--noop-decoder", action="store_true", help="decode nothing (benchmarks/noop_decoder.py)")
    ap.add_argument("--workers", type=int, default=2, help="--noop-decoder: processes of its dask cluster")
    ap.add_argument("--extract-args", default="", help="more har extract options, e.g. \"--frames 8 --size 32\"")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    work = a.work.absolute()
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HAR_HOME": str(work / "home")}
    har = har_exe()
    t0 = time.perf_counter()
    pool = pool_videos(work, a.pool, a.seconds)
    pool_s = time.perf_counter() - t0
    rows = []
    cluster = client = None
    if a.noop_decoder:
        from dask.distributed import Client

        cluster = noop_cluster(a.workers)
        client = Client(cluster)
    extract_cmd = [*a.extract_args.split(), *(["--scheduler", cluster.scheduler_address] if cluster else [])]
    for size in sorted(a.sizes):
        if a.dataset == "folder":
            data = layout(work, size, pool)
        else:
            data = kinetics_layout(work, size, pool, a.missing, a.dataset)
        base_dir = data.parent
        frames, feats = base_dir / "frames.zarr", base_dir / "feats.zarr"
        for p in (frames, feats, base_dir / "run"):
            shutil.rmtree(p, ignore_errors=True)
        extract = [har, "extract", a.dataset, "--root", str(data), "--out", str(frames), *extract_cmd]
        steps = [("extract", extract, (0, 3)), ("extract_noop", extract, (0, 3)),
                 ("status", [har, "status", str(frames)], (0, 3)),
                 ("extract_one_changed", extract, (0, 3))]
        if a.features:
            steps += [("features", [har, "features", "--store", str(frames), "--backbone", "resnet18", "--weights",
                                    "none", "--resize", "stored", "--out", str(feats)], (0,)),
                      ("train_head", [har, "train-head", "lstm", "--features", str(feats), "--epochs", str(a.epochs),
                                      "--tracker", "none", "--out", str(base_dir / "run")], (0,))]
        for name, cmd, ok in steps:
            log(f"{size}: {name}")
            if name == "extract_one_changed":
                replace_one(data)
            r = run_step(name, cmd, env, ok)
            if client is not None:
                import resource

                peaks = client.run(lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
                r["worker_peak_rss_mib"] = round(max(peaks.values()) / 1024)   # since the cluster started
            r.update(size=size, per_video_ms=round(1000 * r["wall_s"] / size, 3))
            if name == "extract":
                r.update(store_stats(frames))
            if name == "features":
                r.update(store_stats(feats))
            rows.append(r)
            print(json.dumps(r), flush=True)
    base = min(a.sizes)
    by = {(r["size"], r["step"]): r for r in rows}
    for r in rows:
        b = by.get((base, r["step"]))
        r["per_video_vs_smallest"] = round(r["per_video_ms"] / b["per_video_ms"], 3) if b and b["per_video_ms"] else None
    commit = subprocess.run(["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or None
    if client is not None:
        client.close()
        cluster.close()
    summary = {"bench": "scale", "dataset": a.dataset, "noop_decoder": a.noop_decoder, "extract_args": a.extract_args,
               "sizes": sorted(a.sizes), "pool": a.pool, "seconds": a.seconds, "pool_s": round(pool_s, 1),
               "rows": [{k: v for k, v in r.items() if k != "stdout_tail"} for r in rows], "commit": commit,
               "cpus": os.cpu_count(), "machine": platform.machine()}
    line = json.dumps(summary)
    print(line, flush=True)
    if a.json:
        a.json.write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
