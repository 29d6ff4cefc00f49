"""`har serve`: the API through FastAPI's TestClient, a real server process on 127.0.0.1 under 50
concurrent uploads, and the page in a real headless Chromium."""
from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from helpers import ROOT, har

pytest.importorskip("fastapi", reason="har serve needs the serve extra: pip install 'har[serve]'")
pytest.importorskip("multipart", reason="har serve needs python-multipart: pip install 'har[serve]'")
from fastapi.testclient import TestClient  # noqa: E402

from trainers import predictor, server  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def clips(root: Path) -> list[Path]:
    return sorted(root.glob("*/*.avi"))


@pytest.fixture(scope="module")
def client(colour_run):
    run, _ = colour_run
    cfg = server.ServeConfig((run,), device="cpu", max_upload_mb=2, max_seconds=20)
    asgi, app = server.create_app(cfg, server.load_runs(cfg))
    with TestClient(asgi) as c:
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

    from pipeline.video import write_video

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
        ({"file": ("x.avi", b"")}, {}, 415, "not a video file"),
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
    with TestClient(asgi) as c:
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
        assert "/" not in label and "\\" not in label and "\x00" not in label and len(label) <= server.NAME_LIMIT
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(run: Path, *args, env: dict | None = None):
    """`har serve RUN ARGS...` as a user starts it (a real uvicorn process on 127.0.0.1), once
    /healthz answers: yields (url, process); stopped with Ctrl-C (SIGINT) unless already gone."""
    import httpx

    port = free_port()
    log = tempfile.TemporaryFile("w+")  # a file, not a pipe: a chatty server never blocks on it
    proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", str(run), "--port", str(port), "--device", "cpu",
                             *map(str, args)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=log, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                log.seek(0)
                pytest.fail(f"har serve exited: {log.read()}")
            time.sleep(0.1)
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=30)
        log.close()


@pytest.fixture(scope="module")
def live(colour_run, tmp_path_factory):
    """`har serve` as a user starts it: a real uvicorn process on 127.0.0.1."""
    run, _ = colour_run
    tmp = tmp_path_factory.mktemp("servetmp")
    with serving(run, "--workers", 2, env={**os.environ, "TMPDIR": str(tmp)}) as (url, proc):
        yield url, proc, tmp


def test_a_real_server_answers_50_concurrent_uploads(live, colour_run):
    import httpx

    url, proc, tmp = live
    _, root = colour_run
    vids = clips(root)
    jobs = [vids[i % len(vids)] for i in range(50)]

    def one(v: Path) -> tuple[int, str, float]:
        t0 = time.perf_counter()
        r = httpx.post(url + "/api/predict", files={"file": (v.name, v.read_bytes())}, timeout=300)
        return r.status_code, r.json()["predictions"][0]["top"][0]["class"] if r.status_code == 200 else r.text, \
            time.perf_counter() - t0

    t0 = time.perf_counter()
    with ThreadPoolExecutor(50) as ex:
        results = list(ex.map(one, jobs))
    wall = time.perf_counter() - t0
    assert [s for s, _, _ in results] == [200] * 50
    assert [c for _, c, _ in results] == [v.parent.name for v in jobs]  # every one answered correctly
    lat = sorted(t for _, _, t in results)
    print(f"50 concurrent uploads: p50 {lat[24]:.2f} s, p95 {lat[47]:.2f} s, {50 / wall:.1f} videos/s")
    scratch = [p for p in tmp.iterdir() if p.name.startswith("har-serve-")]
    assert len(scratch) == 1 and list(scratch[0].iterdir()) == []  # no upload left behind
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=30) in (0, 130)
    assert not scratch[0].exists()


def test_a_full_queue_gets_503_with_retry_after_never_an_error(colour_run):
    """One worker and one queue place: of 12 uploads at once, those beyond get 503 and Retry-After;
    every other is answered correctly."""
    import httpx

    run, root = colour_run
    with serving(run, "--workers", 1, "--queue", 1) as (url, _):
        long = clips(root)[0]

        def one(v: Path):
            return v, httpx.post(url + "/api/predict", files={"file": (v.name, v.read_bytes())},
                                 data={"window": 0.2, "stride": 0.1}, timeout=300)
        with ThreadPoolExecutor(12) as ex:
            got = list(ex.map(one, [long] * 12))
        codes = [r.status_code for _, r in got]
        assert set(codes) <= {200, 503} and 503 in codes and 200 in codes, codes
        for v, r in got:
            if r.status_code == 503:
                assert r.headers["retry-after"] == "2" and "busy" in r.json()["detail"]
            else:
                assert r.json()["predictions"][0]["segments"][0]["label"] == v.parent.name


def test_a_busy_port_is_one_line_exit_2(colour_run):
    run, _ = colour_run
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = har("serve", run, "--port", s.getsockname()[1])
    assert r.returncode == 2 and "cannot listen on 127.0.0.1" in r.stderr and "Traceback" not in r.stderr


def chromium() -> tuple[str, str]:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not browser or not driver:
        pytest.skip("the browser test needs Debian's chromium and chromium-driver (apt-get install chromium "
                    "chromium-driver; .ci/run installs them)")
    pytest.importorskip("selenium", reason="the browser test needs selenium: pip install -e '.[test]'")
    return browser, driver


def test_the_page_in_a_real_headless_browser(colour_run, tmp_path):
    """Chromium loads the page, a video is chosen in its file input, Classify is pressed; the page
    shows the right top-1 class and the Grad-CAM pictures."""
    browser, driver_path = chromium()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    run, root = colour_run
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--window-size=1100,1400"):
        opts.add_argument(a)
    drv = None
    with serving(run) as (url, _):
        try:
            drv = webdriver.Chrome(service=Service(driver_path), options=opts)
            drv.get(url + "/")
            wait = WebDriverWait(drv, 120)
            wait.until(lambda d: d.find_element(By.ID, "run").get_attribute("value") == run.name)
            v = [c for c in clips(root) if c.parent.name == "Green"][0]
            drv.find_element(By.ID, "file").send_keys(str(v))
            wait.until(ec.element_to_be_clickable((By.ID, "go"))).click()
            top1 = wait.until(ec.visibility_of_element_located((By.ID, "top1")))
            assert top1.text == "Green"
            wait.until(ec.visibility_of_element_located((By.ID, "strip")))
            assert drv.find_element(By.ID, "strip").get_attribute("src").startswith("data:image/png;base64,")
            assert drv.find_element(By.ID, "status").text == ""
            # a long video with a window: the timeline shows its two parts in order
            import numpy as np
            from helpers import colour_frames

            from pipeline.video import write_video

            long = write_video(tmp_path / "green_then_blue.avi",
                               np.concatenate([colour_frames("Green", 75, 5), colour_frames("Blue", 75, 6)]))
            drv.find_element(By.ID, "file").send_keys(str(long))
            drv.find_element(By.ID, "window").send_keys("1")
            drv.find_element(By.ID, "go").click()
            wait.until(ec.visibility_of_element_located((By.ID, "tlbox")))
            wait.until(lambda d: d.find_element(By.ID, "status").text == "")
            band = [e.text for e in drv.find_elements(By.CSS_SELECTOR, "#timeline div")]
            assert band == ["Green", "Blue"], band
            if os.environ.get("HAR_SCREENSHOT"):  # docs/images/serve.png is made this way
                drv.save_screenshot(os.environ["HAR_SCREENSHOT"])
        finally:
            if drv is not None:
                drv.quit()
