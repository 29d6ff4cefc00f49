"""`har serve`'s app in this process (FastAPI's TestClient): what it answers, what it refuses and
with which line, the form's bounds, the Host check, server-side faults. A real server process
(concurrency, clients that hang up or stall, Ctrl-C, the page in a browser):
test_serve_process.py."""
from __future__ import annotations

import base64
import contextlib
import io
import json
import shutil
import time
from pathlib import Path

import pytest
from helpers import har

pytest.importorskip("fastapi", reason="har serve needs the serve extra: pip install 'har[serve]'")
pytest.importorskip("multipart", reason="har serve needs python-multipart: pip install 'har[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from trainers.inference import forms, predictor, server  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def clips(root: Path) -> list[Path]:
    return sorted(root.glob("*/*.avi"))


@pytest.fixture(scope="module")
def client(colour_run):
    run, _ = colour_run
    cfg = server.ServeConfig((run,), device="cpu", max_upload_mb=2, max_seconds=20)
    asgi, app = server.create_app(cfg, server.load_runs(cfg))
    with TestClient(asgi, base_url="http://127.0.0.1") as c:
        c.scratch = Path(app.state.scratch)
        yield c
    assert not c.scratch.exists()  # the server's temporary folder goes with it


def test_predict_answers_what_har_predict_json_says(client, colour_run):
    run, root = colour_run
    p = predictor.load(run, "cpu")
    for v in clips(root)[::5]:
        r = client.post("/api/predict", files={"file": (v.name, v.read_bytes(), "video/x-msvideo")}, data={"top": 2})
        assert r.status_code == 200, r.text
        doc = r.json()
        assert doc["run"] == run.name and len(doc["predictions"]) == 1
        want = p(v, 2)
        got = doc["predictions"][0]
        assert got["video"] == v.name and got["clips"] == want["clips"]
        assert [t["class"] for t in got["top"]] == [t["class"] for t in want["top"]]
        assert [t["probability"] for t in got["top"]] == pytest.approx([t["probability"] for t in want["top"]], abs=1e-6)
        assert got["top"][0]["class"] == v.parent.name
    r = har("predict", clips(root)[0], "--run", run, "--top", 2, "--json")
    cli = json.loads(r.stdout)["predictions"][0]
    assert set(cli) == set(got)  # the same keys as the command line's JSON
    assert list(client.scratch.iterdir()) == []  # every upload removed


def test_predict_with_a_window_gives_the_timeline(client, tmp_path):
    import numpy as np
    from helpers import colour_frames

    from pipeline.decoding.video import write_video

    v = write_video(tmp_path / "long.mp4", np.concatenate([colour_frames("Green", 75, 1), colour_frames("Red", 100, 2)]))
    r = client.post("/api/predict", files={"file": ("long.mp4", v.read_bytes())}, data={"window": 1, "stride": 0.5})
    assert r.status_code == 200, r.text
    p = r.json()["predictions"][0]
    assert [s["label"] for s in p["segments"]] == ["Green", "Red"]
    assert abs(p["segments"][0]["end"] - 3.0) <= 1.0
    assert all({"start", "end", "top"} <= set(w) for w in p["windows"])
    assert "probabilities" not in p and "files" not in p
    r = client.post("/api/predict", files={"file": ("long.mp4", v.read_bytes())}, data={"stride": 0.5})
    assert r.status_code == 422 and "stride needs window" in r.json()["detail"]
    r = client.post("/api/predict", files={"file": ("long.mp4", v.read_bytes())}, data={"window": 3600, "stride": 1})
    assert r.status_code == 422 and "at most 64 windows overlap" in r.json()["detail"]  # bounded memory


def test_bad_uploads_get_4xx_with_a_message_never_500(client, colour_run):
    _, root = colour_run
    good = clips(root)[0].read_bytes()
    cases = [
        ({"file": ("clip.avi", b"hello, I am text in a video's clothes" * 4)}, {}, 415, "not a video file"),
        ({"file": ("clip.avi", b"RIFF\0\0\0\0AVI LIST" + bytes(600))}, {}, 422, "not a readable container"),
        ({"file": ("clip.avi", good[: len(good) // 3])}, {}, 422, "clip.avi"),   # truncated
        ({"file": ("song.wav", b"RIFF\0\0\0\0WAVEfmt " + bytes(600))}, {}, 415, "not a video file"),
        ({"file": ("x.avi", b"")}, {}, 422, "'x.avi' is empty"),
        ({}, {"top": 2}, 422, "file"),
        ({"file": ("x.avi", good)}, {"top": 0}, 422, "top"),
        ({"file": ("x.avi", good)}, {"run": "../../etc"}, 422, "unknown run"),
        ({"file": ("x.avi", good)}, {"window": -1}, 422, "window"),
        ({"file": ("x.avi", bytes(3 * 2**20))}, {}, 413, "up to 2 MB"),
        ({"file": ("zz.avi", good.replace(b"XVID", b"ZZZZ").replace(b"xvid", b"zzzz"))}, {}, 422, "unsupported"),
    ]
    for files, data, status, words in cases:
        r = client.post("/api/predict", files=files, data=data)
        assert r.status_code == status, (files.get("file", [""])[0], data, r.status_code, r.text[:300])
        assert words in json.dumps(r.json()), r.text
        assert "/tmp" not in r.text and str(client.scratch) not in r.text  # no server path told
    assert list(client.scratch.iterdir()) == []
    # a body without Content-Length (chunked) is counted as it arrives and cut at the limit
    def chunks():
        yield b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.avi\"\r\n\r\n"
        for _ in range(40):
            yield bytes(100_000)
    r = client.post("/api/predict", content=chunks(), headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 413 and "up to 2 MB" in r.json()["detail"]
    assert list(client.scratch.iterdir()) == []


def test_the_duration_limit_is_413(colour_run, tmp_path):
    run, root = colour_run
    cfg = server.ServeConfig((run,), device="cpu", max_seconds=0.5)
    asgi, _ = server.create_app(cfg, server.load_runs(cfg))
    with TestClient(asgi, base_url="http://127.0.0.1") as c:
        r = c.post("/api/predict", files={"file": ("a.avi", clips(root)[0].read_bytes())})
    assert r.status_code == 413 and "--max-seconds" in r.json()["detail"]


def test_client_file_names_are_labels_never_paths(client, colour_run, tmp_path):
    _, root = colour_run
    for name in ("../../../../tmp/evil.avi", "/etc/passwd", "..\\..\\x.avi", "a\x00b.avi", "x" * 600 + ".avi"):
        r = client.post("/api/predict", files={"file": (name, clips(root)[0].read_bytes())})
        if "\x00" in name and r.status_code == 400:  # a NUL in a multipart header: the parser refuses it
            continue
        assert r.status_code == 200, (name[:40], r.text)
        label = r.json()["predictions"][0]["video"]
        assert "/" not in label and "\\" not in label and "\x00" not in label and len(label) <= forms.NAME_LIMIT
    assert not Path("/tmp/evil.avi").exists()


def test_runs_health_schema_page_and_explain(client, colour_run):
    run, root = colour_run
    assert client.get("/healthz").json() == {"status": "ok", "runs": 1}
    info = client.get("/api/runs").json()["runs"][0]
    assert info["name"] == run.name and info["classes"] == ["Blue", "Green", "Red"] and info["kind"] == "head"
    assert info["test"]["top1"] == json.loads((run / "metrics.json").read_text())["test"]["top1"]
    assert info["split"]["name"] == "groups"
    schema = client.get("/openapi.json").json()
    assert {"/api/predict", "/api/explain", "/api/runs", "/healthz"} <= set(schema["paths"])
    page = client.get("/").text
    assert '<input type="file"' in page and "api/predict" in page
    v = clips(root)[-1]
    r = client.post("/api/explain", files={"file": (v.name, v.read_bytes())})
    assert r.status_code == 200, r.text
    e = r.json()
    assert e["class"] == v.parent.name and e["method"] == "gradcam" and len(e["importance"]) == 8
    from PIL import Image

    for key, fmt in (("png", "PNG"), ("gif", "GIF")):
        head, data = e[key].split(",", 1)
        assert head == f"data:image/{key};base64"
        assert Image.open(io.BytesIO(base64.b64decode(data))).format == fmt
    r = client.post("/api/explain", files={"file": (v.name, v.read_bytes())}, data={"method": "filters"})
    assert r.status_code == 422 and "allowed" in r.json()["detail"]
    assert list(client.scratch.iterdir()) == []


def test_serve_refuses_bad_settings_with_one_line(colour_run, tmp_path):
    run, _ = colour_run
    for args, words in ((["--workers", 0], "--workers 0"), (["--port", 70000], "--port 70000"),
                        (["--max-upload-mb", 0], "--max-upload-mb"), ([], None)):
        target = [run] if args or words else [tmp_path / "no_run"]
        r = har("serve", *target, *args)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        if words:
            assert words in r.stderr
    assert server.ServeConfig((run,)).host == "127.0.0.1"


# ---- a network service: bounded cost, trusted hosts, plain answers to faults -------------------------

def post(client, v: Path, **data):
    return client.post("/api/predict", files={"file": (v.name, v.read_bytes())}, data=data)


def test_a_window_spans_frames_and_a_request_has_a_window_budget(client, colour_run, tmp_path):
    """A window shorter than MIN_WINDOW_FRAMES frames is refused naming the frame period; more
    windows than one per 2 s of --max-seconds (here 20 s: 16) is 413; the limit is exactly there."""
    from helpers import colour_frames

    from pipeline.decoding.video import write_video
    from trainers.inference import timeline

    _, root = colour_run
    v = clips(root)[0]  # 30 frames at 25 fps
    for window in (1e-9, 0.001, 0.2, 0.31):
        r = post(client, v, window=window)
        assert r.status_code == 422, (window, r.text)
        assert f"at least {timeline.MIN_WINDOW_FRAMES} frames" in r.json()["detail"] and "0.04 s" in r.json()["detail"]
    assert post(client, v, window=0.32).status_code == 200  # 8 frames: allowed
    long = write_video(tmp_path / "long.avi", colour_frames("Red", 250, 3))  # 10 s
    r = post(client, long, window=0.4, stride=0.1)   # 97 windows
    assert r.status_code == 413 and "up to 16 a request" in r.json()["detail"], r.text
    r = post(client, long, window=1.2, stride=0.6)   # 16 windows: the budget
    assert r.status_code == 200 and len(r.json()["predictions"][0]["windows"]) == 16, r.text
    assert server.ServeConfig((v,), max_seconds=3600).max_windows == 1800
    assert list(client.scratch.iterdir()) == []


def test_the_form_is_parsed_here_with_bounds(client, colour_run):
    """Only the known fields, each once and short; a body that is not multipart or ends early is
    a 4xx in one line; nothing is left in the scratch folder."""
    _, root = colour_run
    good = clips(root)[0].read_bytes()
    cases = [
        ({"file": ("a.avi", good)}, {"path": "/etc/passwd"}, 422, "unknown form field 'path'"),
        ({"file": ("a.avi", good)}, {"run": "x" * 5000}, 422, "longer than 1024 bytes"),
        ({"file": ("a.avi", good)}, {"top": "many"}, 422, "top 'many' is out of range"),
        ({"file": ("a.avi", good)}, {"window": "nan"}, 422, "window 'nan'"),
        ({"file": ("a.avi", good)}, {"window": "inf"}, 422, "window 'inf'"),
    ]
    for files, data, status, words in cases:
        r = client.post("/api/predict", files=files, data=data)
        assert r.status_code == status and words in r.json()["detail"], (data, r.text[:200])
    r = client.post("/api/predict", files=[("file", ("a.avi", good)), ("file", ("b.avi", good))])
    assert r.status_code == 422 and "given twice" in r.json()["detail"]
    body = b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.avi\"\r\n\r\n" + good[:4000]
    r = client.post("/api/predict", content=body, headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400 and "ended before" in r.json()["detail"]
    r = client.post("/api/predict", content=b"garbage", headers={"content-type": "multipart/form-data; boundary=x"})
    assert r.status_code == 400 and "multipart" in r.json()["detail"]
    assert list(client.scratch.iterdir()) == []


def test_a_foreign_host_header_is_refused(colour_run):
    """A DNS-rebinding page names its own host: refused. localhost and the bound address pass, and
    --allow-host adds a name."""
    run, _ = colour_run
    cfg = server.ServeConfig((run,), device="cpu", allow_hosts=("har.example.org",))
    asgi, _ = server.create_app(cfg, server.load_runs(cfg))
    for base, code in (("http://evil.example", 400), ("http://127.0.0.1.evil.example", 400),
                       ("http://localhost:8000", 200), ("http://127.0.0.1", 200), ("http://har.example.org", 200),
                       ("http://x.har.example.org", 400), ("http://[::1]:8000", 200), ("http://10.1.2.3:8000", 200),
                       ("http://[fe80::1]", 200), ("http://localhost.evil.example", 400)):
        with TestClient(asgi, base_url=base) as c:
            assert c.get("/api/runs").status_code == code, base
    assert server.ServeConfig((run,)).hosts() == ["localhost"]  # and any address: none can be rebound
    for bad in ("a b", "*example.org", "ex*.org", "::1", ""):
        r = har("serve", run, "--allow-host", bad)
        assert r.returncode == 2 and f"--allow-host {bad!r} is not a host name" in r.stderr, r.stderr


def test_server_faults_are_one_line_and_models_are_loaded_at_start(colour_run, tmp_path, monkeypatch):
    """The run folder replaced or deleted while serving changes nothing (every model was loaded at
    start, explain's too); a full disk while storing an upload or making its folder is 507, the
    server's folder removed under it (its name taken by a link) is made afresh; a damaged metrics.json shows
    no metrics instead of stopping the server; a run changed while it loads is refused."""
    import errno

    run, root = colour_run
    mine = tmp_path / "run"
    shutil.copytree(run, mine)
    (mine / "metrics.json").write_text('{"split": "groups", "test": [1]}')
    cfg = server.ServeConfig((mine,), device="cpu")
    asgi, app = server.create_app(cfg, server.load_runs(cfg))
    v = [c for c in clips(root) if c.parent.name == "Blue"][0]
    with TestClient(asgi, base_url="http://127.0.0.1") as c:
        info = c.get("/api/runs").json()["runs"][0]
        assert info["test"] == {} and len(info["fingerprint"]) == 16  # split: config.json's
        shutil.rmtree(mine)
        mine.mkdir()
        (mine / "best.pt").write_bytes(b"not a checkpoint")
        for path in ("/api/predict", "/api/explain"):
            r = c.post(path, files={"file": (v.name, v.read_bytes())})
            assert r.status_code == 200, r.text
            top = r.json()["predictions"][0]["top"][0]["class"] if path == "/api/predict" else r.json()["class"]
            assert top == "Blue"

        def full(*a, **k):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(forms, "open", full, raising=False)   # the upload is written by the form reader
        r = c.post("/api/predict", files={"file": (v.name, v.read_bytes())})
        assert r.status_code == 507 and r.json()["detail"] == "the server's disk is full; try again later"
        assert list(Path(app.state.scratch).iterdir()) == []
        monkeypatch.undo()
        monkeypatch.setattr(server.tempfile, "mkdtemp", full)   # the disk full before the upload's folder
        r = c.post("/api/predict", files={"file": (v.name, v.read_bytes())})
        assert r.status_code == 507 and r.json()["detail"] == "the server's disk is full; try again later"
        monkeypatch.undo()
        first = Path(app.state.scratch)
        shutil.rmtree(first)   # a /tmp cleaner ages the server's folder away, and another user takes its
        squat = tmp_path / "squat"   # name: a link to a folder of theirs. The server makes a fresh one
        squat.mkdir()
        first.symlink_to(squat)
        r = c.post("/api/predict", files={"file": (v.name, v.read_bytes())})
        assert r.status_code == 200, r.text
        now = Path(app.state.scratch)
        assert now != first and now.stat().st_mode & 0o777 == 0o700 and list(squat.iterdir()) == []
        first.unlink()
    monkeypatch.undo()

    from trainers.inference import explain
    real = explain.load

    def racing(run_dir, device):  # another training run rewrites best.pt while this one loads
        with open(Path(run_dir) / "best.pt", "ab") as f:
            f.write(b"\0")
        return real(run_dir, device)
    monkeypatch.setattr(explain, "load", racing)
    again = tmp_path / "run2"
    shutil.copytree(run, again)
    with pytest.raises(ValueError, match="changed while it was loading"):
        server.load_runs(server.ServeConfig((again,), device="cpu"))


def forged(v: Path, tmp: Path, rate: int | None = None, length: int | None = None) -> Path:
    """`v` (an AVI) with its stream header claiming another frame rate or frame count."""
    import struct

    b = bytearray(v.read_bytes())
    i = b.index(b"strh") + 8
    if rate is not None:
        struct.pack_into("<II", b, i + 20, 1, rate)   # dwScale, dwRate
    if length is not None:
        struct.pack_into("<I", b, i + 32, length)     # dwLength
    out = tmp / f"forged_{rate}_{length}.avi"
    out.write_bytes(bytes(b))
    return out


def test_a_forged_header_buys_no_work(client, colour_run, tmp_path):
    """A header that claims thousands of frames a second (which would make a long video short and
    a tiny window many frames) is 422; one that claims billions of frames is 413 at once; the
    window budget is counted, never listed."""
    _, root = colour_run
    v = clips(root)[0]
    t0 = time.perf_counter()
    r = post(client, forged(v, tmp_path, rate=2_000_000), window=1e-5, stride=1.5625e-7)
    assert r.status_code == 422 and "declares 2e+06 frames per second; allowed: up to 1000" in r.json()["detail"]
    r = post(client, forged(v, tmp_path, length=4_000_000_000), window=1, stride=0.5)
    assert r.status_code == 413 and "--max-seconds" in r.json()["detail"]
    r = post(client, forged(v, tmp_path, length=4_000_000_000))
    assert r.status_code == 413
    assert time.perf_counter() - t0 < 10
    assert list(client.scratch.iterdir()) == []


@pytest.mark.parametrize("why", ["client left", "server stopping"])
def test_a_queued_job_withdrawn_is_answered_as_stopped_work_not_as_an_internal_error(why):
    """The one worker is busy; the next job waits in the pool's queue when its client leaves (499)
    or the server stops (503): withdrawn before it ran, answered as stopped work (the withdrawn
    future settles a loop turn later: reading it at once was an InvalidStateError, a 500)."""
    import asyncio
    import threading

    from trainers.inference.workload import Workload

    work = Workload(workers=1, queue=4, uploads=4, per_client=4, client_uploads=2)
    release, ran = threading.Event(), []

    async def scenario():
        busy = work.predicting.submit(release.wait, 10)   # the only worker, held
        if why == "server stopping":
            asyncio.get_running_loop().call_later(0.3, work.stop_all)

        async def gone():
            return why == "client left"
        try:
            with pytest.raises(forms.Refused) as e:
                await work.run(gone, work.predicting, ran.append, "queued job")
        finally:
            release.set()
            busy.result()
        return e.value.status

    try:
        assert asyncio.run(scenario()) == (499 if why == "client left" else 503)
    finally:
        work.shutdown()
    assert ran == []   # withdrawn from the queue: it never ran


def test_a_request_cancelled_while_its_job_runs_stops_the_job():
    """The request's own task cancelled (its connection torn down) while its job runs: the job is
    stopped at its next check, not left running on a worker no request holds any more."""
    import asyncio
    import threading

    from pipeline.decoding import video
    from trainers.inference.workload import Workload

    work = Workload(workers=1, queue=4, uploads=4, per_client=4, client_uploads=2)
    started, ended = threading.Event(), []

    def job():
        started.set()
        try:
            for _ in range(200):   # 10 s of work unless stopped
                video.check_stop()
                time.sleep(0.05)
            ended.append("ran to the end")
        except video.Cancelled:
            ended.append("stopped")

    async def scenario():
        async def never_gone():
            return False
        task = asyncio.ensure_future(work.run(never_gone, work.predicting, job))
        while not started.is_set():
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, forms.Refused):
            await task

    t0 = time.perf_counter()
    try:
        asyncio.run(scenario())
        work.predicting.shutdown(wait=True)
    finally:
        work.shutdown()
    assert ended == ["stopped"] and time.perf_counter() - t0 < 5 and not work.jobs


def test_an_upload_arriving_steadily_is_answered_503_once_the_server_stops(tmp_path):
    """Ctrl-C while a body arrives steadily (a chunk every 50 ms, well within every stall rule):
    the upload is refused 503 within a chunk or two, not read to its end."""
    import asyncio
    import threading

    from starlette.requests import Request

    body = (b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.avi\"\r\n\r\n"
            + b"RIFF\0\0\0\0AVI LIST" + b"\0" * 40_000 + b"\r\n--x--\r\n")   # an AVI by its first bytes
    parts = [body[i:i + 1000] for i in range(0, len(body), 1000)]   # 2 s of body at one part per 50 ms
    stopping, sent = threading.Event(), []

    async def arrive():
        await asyncio.sleep(0.05)
        sent.append(1)
        return {"type": "http.request", "body": parts[len(sent) - 1], "more_body": len(sent) < len(parts)}

    scope = {"type": "http", "method": "POST", "path": "/api/predict", "headers":
             [(b"content-type", b"multipart/form-data; boundary=x")], "query_string": b""}

    async def scenario():
        asyncio.get_running_loop().call_later(0.3, stopping.set)
        with pytest.raises(forms.Refused) as e:
            await forms.receive(Request(scope, arrive), tmp_path, ("file",), 60, stopping)
        return e.value

    refused = asyncio.run(scenario())
    assert refused.status == 503 and len(sent) < len(parts) / 2, (refused.status, len(sent), len(parts))
