"""Stores on object storage, against a real S3-compatible server on 127.0.0.1 (moto in server mode,
tests/conftest.py `s3_server`): extract -> features -> train-head through s3:// equal the local
chain array for array; a kill -9 resumes; a second writer is refused; a publish a kill
interrupted is finished by the next run and never read half-way; nothing but har's own store is
ever replaced; the store stays a plain Zarr group any reader opens."""
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import dask_cluster, har, har_process

from pipeline.core import location
from pipeline.stores import swap
from pipeline.core.location import Url
from pipeline.stages.extract import recorded_sources
from pipeline.stores.store import StoreReader

ROOT = str(Path(__file__).resolve().parents[2])
SMALL = ["--frames", 4, "--size", 32, "--workers", 1]


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    """8 short videos (2 classes x 2 groups x 2 clips): every request to the S3 server costs, so the
    tests that need no more use this."""
    from pipeline.datasets.synth import SynthConfig, generate

    root = tmp_path_factory.mktemp("tiny")
    generate(root, SynthConfig(classes=2, groups=2, clips=2, frames=12, width=64, height=48))
    return root


def arrays(path) -> dict:
    import zarr

    g = zarr.open_group(str(path), mode="r")   # a plain Zarr reader, not har's
    return {k: np.asarray(g[k][...]) for k in sorted(_array_names(g))}


def _array_names(g, prefix=""):
    for k, v in g.members():
        if hasattr(v, "shape"):
            yield prefix + k
        else:
            yield from _array_names(v, prefix + k + "/")


def content(path) -> dict:
    """A frame store's arrays but where its sources were read from (an object's ETag, a file's times
    and inode): the same dataset on S3 and on disk gives the same content."""
    where = ("source/mtime_ns", "source/ctime_ns", "source/inode", "source/etag")
    return {k: v for k, v in arrays(path).items() if k not in where}


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_extract_features_train_head_through_s3_equal_the_local_chain(tiny_root, tmp_path, bucket):
    import torch

    url = f"{bucket}/ucf/frames.zarr"
    ran = har("extract", "synthetic", "--root", tiny_root, "--out", url, *SMALL)
    assert ran.returncode == 0, ran.stderr
    assert har("extract", "synthetic", "--root", tiny_root, "--out", tmp_path / "f.zarr", *SMALL).returncode == 0
    assert_same(arrays(url), arrays(tmp_path / "f.zarr"))
    with StoreReader(url) as r:
        assert r.attrs["complete"] is True and r.attrs["kind"] == "frames"
    again = har("extract", "synthetic", "--root", tiny_root, "--out", url, *SMALL)
    assert again.returncode == 0 and "up to date" in again.stdout
    # nothing of the run is left beside the store: no lock object, no working store
    assert sorted(p.name for p in Url(f"{bucket}/ucf").iterdir()) == ["frames.zarr"]

    feats = f"{bucket}/ucf/feats.zarr"
    common = ["--backbone", "resnet18", "--weights", "none", "--resize", "stored"]
    ran = har("features", "--store", url, "--out", feats, *common)
    assert ran.returncode == 0, ran.stderr
    assert har("features", "--store", tmp_path / "f.zarr", "--out", tmp_path / "x.zarr", *common).returncode == 0
    a, b = arrays(feats), arrays(tmp_path / "x.zarr")
    assert_same(a, b)
    ran = har("status", url, feats)   # both current: the frame store's sources, the features' frame store
    assert ran.returncode == 0 and ran.stdout.count("current") == 2 and url in ran.stdout, ran.stdout + ran.stderr

    train = ["--epochs", 3, "--tracker", "none", "--seed", 3, "--split", "random"]   # 2 groups: too few to split by
    ran = har("train-head", "lstm", "--features", feats, "--out", tmp_path / "run-s3", *train)
    assert ran.returncode == 0, ran.stderr
    assert har("train-head", "lstm", "--features", tmp_path / "x.zarr", "--out", tmp_path / "run-l", *train).returncode == 0
    wa, wb = (torch.load(tmp_path / d / "best.pt", weights_only=True)["model"] for d in ("run-s3", "run-l"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert har("evaluate", tmp_path / "run-s3").returncode == 0


def test_status_over_s3_reads_each_object_once_with_no_head_before_it(tiny_root, bucket, monkeypatch):
    """A request to object storage costs 20-50 ms on S3: `har status` over a store reads each array's
    metadata once (zarr reads it on every lookup, and the checks look arrays up several times) and
    reads objects without a HEAD for their size first (s3fs's default before every whole read)."""
    import collections

    import s3fs

    url = f"{bucket}/f.zarr"
    assert har("extract", "synthetic", "--root", tiny_root, "--out", url, *SMALL).returncode == 0
    calls: collections.Counter = collections.Counter()
    real = s3fs.S3FileSystem._call_s3

    async def counted(self, method, *args, **kwargs):
        calls[method, kwargs.get("Key")] += 1
        return await real(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counted)
    ran = har("status", url)
    assert ran.returncode == 0 and "current" in ran.stdout, ran.stdout + ran.stderr
    store_key = url.split("/", 3)[3]
    arrays = {k: n for (m, k), n in calls.items() if m == "get_object" and k.startswith(store_key + "/")
              and k.endswith("/zarr.json")}
    assert len(arrays) >= 10 and max(arrays.values()) == 1, arrays   # status, frames, label, ... each once
    heads = [k for (m, k), n in calls.items() if m == "head_object" and k.startswith(store_key + "/")]
    assert heads == [], heads                                           # no object of the store HEADed
    assert sum(calls.values()) < 100, calls   # 8 videos, 27 arrays: 77 requests now, 555 before


def test_publishing_a_store_copies_each_object_without_a_head_for_its_size(tiny_root, bucket, monkeypatch):
    """Object storage has no rename: a finished store is copied object by object (server-side). s3fs
    asks for each object's size before copying it (a HEAD each) unless its listings cache holds it:
    har lists the working store once and copies without them, and deletes it after by that listing."""
    import s3fs

    calls: list = []
    real = s3fs.S3FileSystem._call_s3

    async def logged(self, method, *args, **kwargs):
        calls.append((method, kwargs["CopySource"]["Key"] if method == "copy_object" else kwargs.get("Key", kwargs.get("Prefix"))))
        return await real(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", logged)
    url = f"{bucket}/p.zarr"
    assert har("extract", "synthetic", "--root", tiny_root, "--out", url, *SMALL).returncode == 0
    copied = {k for m, k in calls if m == "copy_object"}
    assert len(copied) > 20 and all(k.startswith("p.zarr.partial.zarr/") for k in copied), copied
    assert {k.split("/", 1)[1] for k in copied} == set(Url(url).files())   # every object of the store, once
    chunks = {k for k in copied if not k.endswith("zarr.json")}   # (zarr HEADs a group's zarr.json as it makes an array)
    assert len(chunks) > 10 and not chunks & {k for m, k in calls if m == "head_object"}
    first_copy = next(i for i, (m, _) in enumerate(calls) if m == "copy_object")   # the listing precedes it
    assert not [k for m, k in calls[first_copy:] if m == "list_objects_v2" and k.startswith("p.zarr.partial.zarr")]
    ran = har("status", url)                                        # and the copy is whole
    assert ran.returncode == 0 and "current" in ran.stdout, ran.stdout + ran.stderr


def _pending_fraction(url: str):
    import zarr

    try:
        s = zarr.open_group(url, mode="r")["status"][...]
        return float((s == 0).mean())
    except Exception:
        return None


def test_kill_9_mid_extract_to_s3_then_rerun_equals_uninterrupted(synthetic_root, tmp_path, bucket):
    url = f"{bucket}/k.zarr"
    cmd = [sys.executable, "-m", "cli", "extract", "synthetic", "--root", str(synthetic_root), "--out", url,
           "--frames", "12", "--size", "96", "--views", "2", "--scheduler", "synchronous"]
    partial_kills, locks_left, delay = 0, 0, 1.5
    for _ in range(30):
        p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        if p.poll() is not None:
            break
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        # the killed writer's lock stays for the next run to take over (none where the kill landed
        # before its create, or inside a takeover between the dead lock's delete and the new create)
        locks_left += Url(url + ".lock").exists()
        frac = _pending_fraction(url + ".partial.zarr")
        if frac is not None and 0 < frac < 1:
            partial_kills += 1
            if partial_kills >= 2:
                break
        delay += 0.4
    assert partial_kills >= 1, "no kill landed half-way through; the test did not test resuming"
    assert locks_left >= 1, "no killed writer left its lock; the test did not test taking one over"
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert not Url(url + ".partial.zarr").exists() and not Url(url + ".lock").exists()
    ref = har("extract", "synthetic", "--root", synthetic_root, "--out", tmp_path / "ref.zarr", "--frames", 12,
              "--size", 96, "--views", 2, "--scheduler", "synchronous")
    assert ref.returncode == 0
    assert_same(arrays(url), arrays(tmp_path / "ref.zarr"))


def test_a_second_writer_is_refused_until_the_first_is_gone(tiny_root, bucket):
    url = f"{bucket}/w.zarr"
    with swap.WriterLock(Url(url)):
        ran = har("extract", "synthetic", "--root", tiny_root, "--out", url, *SMALL)
        assert ran.returncode == 2 and "is being written by pid" in ran.stderr and "second writer is refused" in ran.stderr
        assert not Url(url).exists()
    # a lock left by a writer that is no longer running (same host, dead pid) is taken over
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import json
    import socket

    Url(url + ".lock").write_bytes(json.dumps({"host": socket.gethostname(), "pid": dead.pid,
                                               "heartbeat": time.time()}).encode())
    ran = har("extract", "synthetic", "--root", tiny_root, "--out", url, *SMALL)
    assert ran.returncode == 0, ran.stderr
    # and one whose heartbeat stopped long ago, from another host
    Url(url + ".lock").write_bytes(json.dumps({"host": "elsewhere", "pid": 1, "heartbeat": time.time() - 3600}).encode())
    assert har("extract", "synthetic", "--root", tiny_root, "--out", url, *SMALL, "--force").returncode == 0


@pytest.mark.parametrize("first", [False, True], ids=["update", "first-publish"])
def test_a_publish_killed_before_its_marker_is_never_read_and_the_next_run_finishes_it(tiny_root, bucket,
                                                                                         tmp_path, monkeypatch, first):
    from pipeline.stores import inputs, store
    from pipeline.stages.extract import ExtractConfig, Recipe, extract

    url = Url(f"{bucket}/p.zarr")
    small = Recipe(frames=4, height=32, width=32)
    if not first:   # an earlier version is there (else the killed publish is the store's first)
        extract(ExtractConfig("synthetic", small, root=tiny_root, out=url, scheduler="synchronous"))
    other = Recipe(frames=5, height=32, width=32)
    fs = url.fs
    real_copy = fs.cp_file

    def copy(src, dst, *a, **kw):   # the kill lands just before the completion marker is copied
        if isinstance(src, str) and src.endswith(".partial.zarr/zarr.json"):
            raise KeyboardInterrupt
        return real_copy(src, dst, *a, **kw)

    monkeypatch.setattr(fs, "cp_file", copy)
    with pytest.raises(KeyboardInterrupt):
        extract(ExtractConfig("synthetic", other, root=tiny_root, out=url, scheduler="synchronous", force=True))
    monkeypatch.setattr(fs, "cp_file", real_copy)
    # half-copied: readers refuse it rather than read a mix of the two versions
    with pytest.raises(store.StoreError, match="unfinished"):
        inputs.open_input(url, "frames", "")
    ran = har("features", "--store", url, "--backbone", "resnet18", "--weights", "none")
    assert ran.returncode == 2 and "unfinished" in ran.stderr
    # the next run of the same command finishes the publish and finds the store up to date
    res = extract(ExtractConfig("synthetic", other, root=tiny_root, out=url, scheduler="synchronous", force=False))
    assert res.up_to_date and not Url(str(url) + ".partial.zarr").exists()
    ref = extract(ExtractConfig("synthetic", other, root=tiny_root, out=tmp_path / "r.zarr", scheduler="synchronous"))
    assert_same(arrays(url), arrays(ref.store))


def test_nothing_but_a_har_store_is_replaced_on_s3(tiny_root, bucket):
    theirs = Url(f"{bucket}/mine/notes.txt")
    theirs.write_bytes(b"not har's")
    for out in (f"{bucket}/mine", f"{bucket}/mine/notes.txt"):
        ran = har("extract", "synthetic", "--root", tiny_root, "--out", out, *SMALL, "--force")
        assert ran.returncode == 2 and "not a har frames store" in ran.stderr
    assert theirs.read_bytes() == b"not har's" and [p.name for p in Url(f"{bucket}/mine").iterdir()] == ["notes.txt"]
    # a frame store is not replaced by a feature store either, and no store goes over its own input
    frames = f"{bucket}/f.zarr"
    assert har("extract", "synthetic", "--root", tiny_root, "--out", frames, *SMALL).returncode == 0
    ran = har("features", "--store", frames, "--out", frames, "--backbone", "resnet18", "--weights", "none")
    assert ran.returncode == 2 and "input of this command" in ran.stderr
    ran = har("extract", "synthetic", "--root", tiny_root, "--out", frames, "--format", "hdf5", *SMALL)
    assert ran.returncode == 2


def test_an_unreachable_or_unknown_bucket_is_one_line(tiny_root, s3_server):
    ran = har("extract", "synthetic", "--root", tiny_root, "--out", "s3://no-such-bucket-here/x.zarr", *SMALL)
    assert ran.returncode == 2 and "no-such-bucket-here" in ran.stderr and "Traceback" not in ran.stderr
    assert "internal error" not in ran.stderr
    # a wrong endpoint (nothing listens there) or a key with glob characters (a delete would reach
    # other keys): one line each, exit 2
    from helpers import har_process

    ran = har_process("extract", "synthetic", "--root", tiny_root, "--out", "s3://b/x.zarr", *SMALL,
                      env={"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_MAX_ATTEMPTS": "1"}, timeout=300)
    assert ran.returncode == 2 and "object storage" in ran.stderr and "AWS_ENDPOINT_URL" in ran.stderr, ran.stderr
    ran = har("extract", "synthetic", "--root", tiny_root, "--out", "s3://b/exp[1]/x.zarr", *SMALL)
    assert ran.returncode == 2 and "glob characters" in ran.stderr


def test_two_dask_worker_processes_write_the_s3_store(tiny_root, tmp_path, bucket):
    from pipeline.stages.extract import ExtractConfig, Recipe, extract

    recipe = Recipe(sampling="clip", frames=6, stride=2, height=32, width=40, views=1)
    with dask_cluster(tmp_path) as address:
        dist = extract(ExtractConfig("synthetic", recipe, root=tiny_root, out=location.of(f"{bucket}/d.zarr"),
                                     scheduler=address))
    local = extract(ExtractConfig("synthetic", recipe, root=tiny_root, out=tmp_path / "l.zarr",
                                  scheduler="synchronous"))
    assert dist.ok == local.ok == 8
    assert_same(arrays(f"{bucket}/d.zarr"), arrays(tmp_path / "l.zarr"))


def test_a_dataset_on_s3_extracts_as_the_same_dataset_on_disk_and_one_changed_object_is_redone(
        tiny_root, tmp_path, bucket):
    import shutil

    root = Url(f"{bucket}/datasets/synth[v1]")   # glob characters in a key are read as they are
    root.fs.put(str(tiny_root) + "/", root.key + "/", recursive=True)
    ran = har("extract", "synthetic", "--root", root, "--out", f"{bucket}/s.zarr", *SMALL)
    assert ran.returncode == 0, ran.stderr
    assert har("extract", "synthetic", "--root", tiny_root, "--out", tmp_path / "l.zarr", *SMALL).returncode == 0
    assert_same(content(f"{bucket}/s.zarr"), content(tmp_path / "l.zarr"))
    with StoreReader(f"{bucket}/s.zarr") as r:
        sources = recorded_sources(r)
        assert r.attrs["lineage"]["inputs"]["root"] == str(root) and all(s.etag for s in sources)
    again = har("extract", "synthetic", "--root", root, "--out", f"{bucket}/s.zarr", *SMALL)
    assert "up to date" in again.stdout
    # one video replaced by another's bytes: only it is decoded again, as with a local root
    local = tmp_path / "copy"
    shutil.copytree(tiny_root, local)
    first, other = "Grow/v_Grow_g01_c01.avi", "Grow/v_Grow_g02_c02.avi"   # tiny_root: Grow and Shrink
    shutil.copy(local / other, local / first)
    (root / first).write_bytes((local / other).read_bytes())
    ran = har("extract", "synthetic", "--root", root, "--out", f"{bucket}/s.zarr", *SMALL)
    assert ran.returncode == 0 and "1 decoded, 7 reused" in ran.stdout, ran.stdout
    assert har("extract", "synthetic", "--root", local, "--out", tmp_path / "l2.zarr", *SMALL).returncode == 0
    assert_same(content(f"{bucket}/s.zarr"), content(tmp_path / "l2.zarr"))
    # a store is never written over, around or inside the dataset's prefix
    for out in (f"{bucket}/datasets", f"{root}/x.zarr"):
        ran = har("extract", "synthetic", "--root", root, "--out", out, *SMALL)
        assert ran.returncode == 2 and "dataset root" in ran.stderr, out


def test_a_video_model_trains_from_an_s3_frame_store_as_from_disk(synthetic_root, tmp_path, bucket):
    import torch

    common = ["--sampling", "clip", "--frames", 8, "--size", "36x40", "--workers", 1]
    assert har("extract", "synthetic", "--root", synthetic_root, "--out", f"{bucket}/c.zarr", *common).returncode == 0
    assert har("extract", "synthetic", "--root", synthetic_root, "--out", tmp_path / "c.zarr", *common).returncode == 0
    train = ["--epochs", 1, "--batch-size", 4, "--crop", 32, "--tracker", "none", "--precision", "fp32"]
    ran = har("train-e2e", "small-cnn-rnn", "--frames", f"{bucket}/c.zarr", "--workers", 2, "--out", tmp_path / "a",
              *train)
    assert ran.returncode == 0, ran.stderr
    assert har("train-e2e", "small-cnn-rnn", "--frames", tmp_path / "c.zarr", "--workers", 0, "--out", tmp_path / "b",
               *train).returncode == 0
    wa, wb = (torch.load(tmp_path / d / "best.pt", weights_only=True)["model"] for d in ("a", "b"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_gs_and_az_writer_locks_are_one_conditional_create_and_old_libraries_are_refused(monkeypatch):
    """gs:// and az:// take the writer lock with fsspec's pipe_file(mode="create") (gcsfs:
    ifGenerationMatch=0, adlfs: If-None-Match: *). No GCS or Azure emulator with preconditions runs
    here, so their filesystem is memory://'s, whose create mode refuses an existing key as theirs do:
    what is tested is har's side (the mode it asks for, a refusal read as 'held', the version floor,
    their errors as one line)."""
    import fsspec
    from fsspec.asyn import get_loop
    from fsspec.implementations.memory import MemoryFileSystem
    from importlib import metadata

    class Store(MemoryFileSystem):   # memory://'s objects, with the failures a cloud library raises
        fail = None
        zonal = False
        loop = get_loop()

        def pipe_file(self, path, value, mode="overwrite", **kw):
            if self.fail == "lost-reply":       # the create landed; its retry is answered 'exists'
                super().pipe_file(path, value, mode=mode, **kw)
                raise FileExistsError(path)
            if self.fail is not None:
                raise self.fail
            return super().pipe_file(path, value, mode=mode, **kw)

        async def _is_zonal_bucket(self, bucket):
            return self.zonal

    mem = Store(skip_instance_cache=True)
    real_fs_of, real_version = location._fs_of, metadata.version
    monkeypatch.setattr(location, "_fs_of", lambda scheme, pid: mem if scheme in ("gs", "az") else real_fs_of(scheme, pid))
    versions = {"gcsfs": "2026.10.1", "adlfs": "2026.8.0"}
    monkeypatch.setattr(metadata, "version", lambda name: versions[name] if name in versions else real_version(name))
    try:
        for url in ("gs://bucket/w.zarr", "az://container/w.zarr", "memory://bucket/w.zarr"):
            with swap.WriterLock(Url(url)):
                assert Url(url + ".lock").exists()
                with pytest.raises(swap.StoreError, match="second writer is refused"):
                    with swap.WriterLock(Url(url)):
                        pass
            assert not Url(url + ".lock").exists()
            with swap.WriterLock(Url(url)):   # released: the next writer takes it
                pass
        # a create whose reply was lost and whose retry found it: the writer's own lock, not another's
        mem.fail = "lost-reply"
        with swap.WriterLock(Url("gs://bucket/lost.zarr")):
            assert Url("gs://bucket/lost.zarr.lock").exists()
        assert not Url("gs://bucket/lost.zarr.lock").exists()
        # the libraries' errors are one line naming the URL
        for err, said in [(OSError("Forbidden: 403"), "could not write the writer lock (OSError: Forbidden"),
                          (PermissionError("denied"), "could not write the writer lock"),
                          (FileNotFoundError("bucket"), "does not exist")]:
            mem.fail = err
            with pytest.raises(location.LocationError, match=r"gs://bucket/e.zarr.lock: .*" + re.escape(said)):
                Url("gs://bucket/e.zarr.lock").put_if_absent(b"{}")
        mem.fail, mem.zonal = None, True
        with pytest.raises(location.LocationError, match="zonal"):
            Url("gs://bucket/z.zarr.lock").put_if_absent(b"{}")
        mem.zonal = False
        # libraries before the versions whose create mode was read: refused before any request
        for package, have, url in [("gcsfs", "2024.2.0", "gs://bucket/o.zarr.lock"),
                                   ("gcsfs", "2026.10.1.dev3", "gs://bucket/o.zarr.lock"),
                                   ("adlfs", "2024.7.0", "az://container/o.zarr.lock")]:
            old, versions[package] = versions[package], have
            with pytest.raises(location.LocationError, match=rf"{package} {re.escape(have)} has no atomic create"):
                Url(url).put_if_absent(b"{}")
            versions[package] = old
        versions["gcsfs"] = "2026.10.2rc1"   # later than the floor, pre-release or not
        assert Url("gs://bucket/new.zarr.lock").put_if_absent(b"{}")
        assert not mem.exists("bucket/o.zarr.lock") and not mem.exists("container/o.zarr.lock")
    finally:
        for key in ("bucket", "container"):
            if fsspec.filesystem("memory").exists(key):
                fsspec.filesystem("memory").rm(key, recursive=True)


@pytest.mark.parametrize("info", [{"size": 3, "ETag": '"abc"'},            # s3fs
                                  {"size": 3, "etag": "abc"}],             # gcsfs, adlfs
                         ids=["s3fs", "gcsfs-adlfs"])
def test_an_unchanged_object_keeps_its_hash_unread_whatever_its_library_names_the_etag(info):
    from pipeline.core import lineage

    class Root:   # a listing as the library returns it; opening an object fails the test
        key, fs = "b/a.avi", None

        def listing(self):
            return {"a.avi": info}

        def __truediv__(self, rel):
            return self

        def open(self, *a, **kw):
            raise AssertionError("a.avi was read again although its size and ETag are unchanged")

    Root.fs = Root()

    known = {"a.avi": lineage.Source("a.avi", 3, 0, "f" * 64, etag="abc")}
    (got,) = lineage._object_fingerprints(Root(), ["a.avi"], known, 1)
    assert (got.sha256, got.etag, got.problem) == ("f" * 64, "abc", "")


def test_an_hdf5_file_on_object_storage_is_one_line_not_a_traceback(bucket, tmp_path):
    import h5py

    with h5py.File(tmp_path / "frames.h5", "w") as f:
        f.create_dataset("video", data=np.zeros(3))
    url = f"{bucket}/frames.h5"
    Url(url).write_bytes((tmp_path / "frames.h5").read_bytes())
    ran = har("features", "--store", url, "--backbone", "resnet18", "--out", tmp_path / "f.zarr")
    assert ran.returncode == 2 and "an HDF5 store cannot be read from object storage" in ran.stderr, ran.stderr
    assert "Traceback" not in ran.stderr and not (tmp_path / "f.zarr").exists()


# ---- an object-store URL that names no bucket: one line everywhere, nothing made locally -------------

NO_BUCKET = ["s3://", "gs://", "s3:///x.zarr", "S3://", "gcs:////", "az:///", "memory://"]
COMMANDS = [  # every kind of place a location is taken: --out, --root, --store, --features, --frames, positionals
    ("status", "URL"), ("status", "--verify", "URL"), ("extract", "synthetic", "--root", "URL", "--out", "o.zarr"),
    ("extract", "synthetic", "--out", "URL"), ("extract", "folder", "--root", "ROOT", "--out=URL"),
    ("features", "--store", "URL", "--backbone", "resnet18"), ("features", "--store", "f.zarr", "--out", "URL"),
    ("train-head", "mean", "--features", "URL"), ("train-e2e", "r3d_18", "--frames", "URL"),
    ("synth", "URL"), ("predict", "URL", "--run", "r"), ("evaluate", "URL"), ("demo", "--out", "URL"),
]


@pytest.mark.parametrize("args, url", [(args, "s3://") for args in COMMANDS] + [(COMMANDS[0], u) for u in NO_BUCKET[1:]]
                         + [(args, u) for args in COMMANDS[2:4] + COMMANDS[9:10] for u in ("gs://", "s3:///x.zarr")],
                         ids=lambda a: " ".join(a) if isinstance(a, tuple) else a)
def test_a_url_with_no_bucket_is_one_line_everywhere_and_makes_nothing(tmp_path, synthetic_root, args, url):
    """pathlib reads s3:// as a local folder `s3:` (and s3:///x as the bucket x): har used to make
    ./s3: and exit 0."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    ran = har(*[url if a == "URL" else f"--out={url}" if a == "--out=URL" else synthetic_root if a == "ROOT" else a
                for a in args], cwd=cwd)
    lines = [ln for ln in ran.stderr.splitlines() if ln.strip()]
    assert ran.returncode == 2 and len(lines) == 1 and "Traceback" not in ran.stderr, ran.stderr
    assert lines[0].startswith("error: ") and f"{url} names no bucket; allowed: " in lines[0], lines[0]
    assert list(cwd.iterdir()) == [] and not (tmp_path / "har_home").exists()


def test_a_url_with_no_bucket_is_refused_by_a_real_har_process(tmp_path):
    ran = har_process("status", "s3://", cwd=tmp_path)
    assert (ran.returncode, ran.stderr.strip()) == (2, "error: s3:// names no bucket; allowed: s3://BUCKET/KEY")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["s3://", "s3:///x", "gs://", "s3:////x/y", "memory://"])
def test_a_location_with_no_bucket_is_refused_by_the_one_parser(where):
    from pathlib import Path

    for spelled in (where, Path(where)) if where.count("/") == 2 else (where,):  # a Path reads s3:// as s3:
        with pytest.raises(location.LocationError, match="names no bucket"):
            location.of(spelled)
    with pytest.raises(location.LocationError, match="names no bucket"):
        Url(where)
    assert location.of("s3://b/x.zarr") == Url("s3://b/x.zarr") and location.of(Path("s3://b/x")) == Url("s3://b/x")
