"""`har serve` as a user starts it: a real uvicorn process on 127.0.0.1 under 50 concurrent uploads,
a full queue, clients that hang up, stall or open connections and send nothing, one address's
share, Ctrl-C while work runs, a busy port, and the page in a real headless Chromium. The app's
answers in this process: test_serve.py."""
from __future__ import annotations

import contextlib
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

from test_serve import clips  # noqa: E402
from trainers.inference import middleware, server  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


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
    # 50 uploads at once from one address: one address holds at most half the upload places, so 100
    # places and 50 requests per client (defaults 8)
    with serving(run, "--workers", 2, "--uploads", 100, "--per-client", 50,
                 env={**os.environ, "TMPDIR": str(tmp)}) as (url, proc):
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
                                 data={"window": 0.4, "stride": 0.1}, timeout=300)
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

            from pipeline.decoding.video import write_video

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


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def long_video(tmp_path_factory):
    """Three minutes of 64 x 48 video: with 0.32 s windows every 0.04 s, ~4,500 windows of work."""
    import numpy as np
    from helpers import colour_frames

    from pipeline.decoding.video import write_video

    frames = colour_frames("Green", 250, 7)
    return write_video(tmp_path_factory.mktemp("long") / "long.avi", np.concatenate([frames] * 18))


LONG = {"window": 0.32, "stride": 0.04}


def test_work_for_a_client_that_hung_up_is_stopped(colour_run, long_video):
    """One worker: a client asks for minutes of work and hangs up; the worker is free again within
    seconds (the next client is answered at once) and the CPU goes back to idle."""
    import httpx

    run, root = colour_run
    with serving(run, "--workers", 1, "--max-seconds", 36000) as (url, proc):
        try:
            httpx.post(url + "/api/predict", files={"file": ("long.avi", long_video.read_bytes())}, data=LONG,
                       timeout=httpx.Timeout(60, read=3))
            pytest.fail("the long job finished within 3 s: it cannot show cancellation")
        except httpx.ReadTimeout:
            left = time.perf_counter()
        v = clips(root)[0]
        r = httpx.post(url + "/api/predict", files={"file": (v.name, v.read_bytes())}, timeout=60)
        waited = time.perf_counter() - left
        assert r.status_code == 200 and r.json()["predictions"][0]["top"][0]["class"] == v.parent.name
        assert waited < 5, f"the next client waited {waited:.1f} s: the abandoned job kept the worker"
        time.sleep(0.5)
        c0 = cpu_seconds(proc.pid)
        time.sleep(2)
        assert cpu_seconds(proc.pid) - c0 < 0.3  # idle: nothing runs for the client that left


def test_slow_bodies_hold_no_more_than_their_places_and_time_out(colour_run, tmp_path):
    """Two upload places: two clients that send all but the last bytes hold them; a third upload
    gets 503 before its body is read, and nothing is spooled outside the server's scratch folder;
    after --body-timeout the slow ones get 408 and the server takes uploads again."""
    import httpx

    run, root = colour_run
    good = clips(root)[0].read_bytes()
    body = (b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.avi\"\r\n\r\n" + good
            + b"\r\n--x--\r\n")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    with serving(run, "--uploads", 2, "--body-timeout", 4, env={**os.environ, "TMPDIR": str(tmpdir)}) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        slow = []
        for i in range(2):  # two clients (an address each: one alone may hold half the places)
            s = socket.create_connection(("127.0.0.1", port), source_address=(f"127.0.3.{i + 1}", 0))
            s.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                      b"boundary=x\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:-100])
            slow.append(s)
        time.sleep(1)
        t0 = time.perf_counter()
        r = httpx.post(url + "/api/predict", files={"file": ("b.avi", good)}, timeout=30)
        assert r.status_code == 503 and r.headers["retry-after"] == "2", r.text
        assert time.perf_counter() - t0 < 2
        outside = [p for p in tmpdir.iterdir() if not p.name.startswith("har-serve-")]
        assert outside == []  # nothing spooled into the system's temporary folder
        for s in slow:
            s.settimeout(15)
            answer = b""
            while b"--body-timeout" not in answer and (chunk := s.recv(4096)):
                answer += chunk
            answer = answer.decode()
            assert answer.startswith("HTTP/1.1 408") and "--body-timeout" in answer, answer[:300]
            s.close()
        r = httpx.post(url + "/api/predict", files={"file": ("b.avi", good)}, timeout=30)
        assert r.status_code == 200
        r = httpx.get(url + "/api/runs", headers={"Host": "rebind.evil.example"})
        assert r.status_code == 400


def test_ctrl_c_stops_the_server_within_seconds_whatever_runs(colour_run, long_video):
    """Ctrl-C while two minutes-long jobs run and one waits: the process is gone within seconds;
    the clients get 503 (or their connection cut), never a result made of half the work."""
    import httpx

    run, _ = colour_run
    with serving(run, "--workers", 2, "--max-seconds", 36000) as (url, proc):
        def one(_):
            try:
                return httpx.post(url + "/api/predict", files={"file": ("long.avi", long_video.read_bytes())},
                                  data=LONG, timeout=120).status_code
            except httpx.HTTPError:
                return "cut"
        with ThreadPoolExecutor(3) as ex:
            futures = [ex.submit(one, i) for i in range(3)]
            time.sleep(3)
            t0 = time.perf_counter()
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=60)
            stopped = time.perf_counter() - t0
            results = [f.result() for f in futures]
    assert stopped < 15, f"Ctrl-C took {stopped:.1f} s"  # 2-3 s alone; the rest is a busy machine's slack
    assert set(results) <= {503, "cut"}, results


def test_ctrl_c_answers_an_upload_still_arriving_503_at_once(colour_run):
    """Ctrl-C while a body is still arriving (within its --body-timeout): the upload is answered
    503 within a second or so, not after uvicorn's graceful wait as a 500."""
    run, root = colour_run
    good = clips(root)[0].read_bytes()
    body = (b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.avi\"\r\n\r\n" + good
            + b"\r\n--x--\r\n")
    with serving(run, "--body-timeout", 60) as (url, proc):
        s = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])))
        s.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                  b"boundary=x\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:-100])
        time.sleep(1)
        t0 = time.perf_counter()
        proc.send_signal(signal.SIGINT)
        s.settimeout(15)
        answer = b""
        while b"\r\n\r\n" not in answer and (chunk := s.recv(4096)):
            answer += chunk
        waited = time.perf_counter() - t0
        s.close()
        proc.wait(timeout=30)
    assert answer.startswith(b"HTTP/1.1 503"), answer[:200]
    assert waited < 4, f"answered after {waited:.1f} s"   # ~0.3 s alone; uvicorn's graceful wait is 5 s


def test_one_address_holds_at_most_its_share(colour_run):
    """--per-client 2: a third request from the same address at once is 429 with Retry-After; with
    --uploads 4 one address may have 2 uploads arriving, the third is 429 before its body."""
    run, root = colour_run
    cfg = server.ServeConfig((run,), device="cpu", per_client=2, uploads=4)
    assert cfg.client_uploads == 2 and server.ServeConfig((run,)).client_uploads == 4
    import httpx

    good = clips(root)[0].read_bytes()
    with serving(run, "--per-client", 2, "--uploads", 4, "--body-timeout", 20) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        body = (b"--x\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.avi\"\r\n\r\n" + good
                + b"\r\n--x--\r\n")
        held = []
        for _ in range(2):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"POST /api/predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                      b"boundary=x\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body[:-100])
            held.append(s)
        time.sleep(1)
        r = httpx.post(url + "/api/predict", files={"file": ("b.avi", good)}, timeout=30)
        assert r.status_code == 429 and r.headers["retry-after"] == "2", r.text
        assert "--per-client" in r.json()["detail"]
        for s in held:
            s.sendall(body[-100:])
        for s in held:
            s.settimeout(30)
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
            s.close()
        r = httpx.post(url + "/api/predict", files={"file": ("b.avi", good)}, timeout=30)
        assert r.status_code == 200


def test_half_open_connections_are_closed_and_capped(colour_run):
    """Connections that never finish their request headers are closed after HEADER_SECONDS, and one
    address holds at most 2 x --per-client connections: a crowd of them never locks others out."""
    import httpx

    run, root = colour_run
    with serving(run, "--per-client", 3) as (url, _):
        port = int(url.rsplit(":", 1)[1])
        crowd = []
        for _ in range(8):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"GET /api/runs HTTP/1.1\r\nHost: 127.0")  # and nothing more
            crowd.append(s)
        time.sleep(0.5)
        closed = 0
        for s in crowd:
            s.settimeout(0.2)
            try:
                closed += s.recv(1) == b""
            except socket.timeout:
                pass
            except ConnectionResetError:
                closed += 1
        assert closed == 2  # the 7th and 8th: over 2 x 3 from this address
        t0 = time.perf_counter()
        for s in crowd:
            s.settimeout(middleware.HEADER_SECONDS + 10)
            with contextlib.suppress(OSError):
                assert s.recv(1) == b""
            s.close()
        assert time.perf_counter() - t0 < middleware.HEADER_SECONDS + 5
        assert httpx.get(url + "/api/runs", timeout=10).status_code == 200
