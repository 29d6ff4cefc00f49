"""`har serve`: trained runs behind a web page and an HTTP API (FastAPI, served by uvicorn).

    GET  /              the page: drop a video, see the top classes, the sampled frames with
                        Grad-CAM, and for a long video the timeline (trainers/server.html)
    POST /api/predict   multipart `file`, `run`, `top`, optional `window`, `stride`: the JSON of
                        `har predict --json` (the file's name in place of a path)
    POST /api/explain   multipart `file`, `run`, `method`: the sampled frames with their maps
                        (PNG) and the animated overlay (GIF) as data URLs
    GET  /api/runs      the loaded runs: model, classes, split, test metrics, fingerprint
    GET  /healthz       liveness
    GET  /openapi.json  the schema (FastAPI)

A network service: its clients are not trusted, so what one request can cost and one client can
hold is bounded.
- Every model is loaded at start (predict's and explain's from the same files: their sha256 is
  taken before and after loading and must agree); nothing is read from the run folders afterwards.
- A request takes a slot (`workers` running + `queue` waiting) and, while its body arrives, an
  upload place (`uploads`); with none free it gets 503 and Retry-After before its body is read.
  One client address holds at most `per_client` requests at once (429 beyond). These bounds and
  the thread pools below are the server's workload (`trainers.inference.workload`).
- The body is parsed as it arrives (`trainers.inference.forms`: python-multipart's streaming
  parser; FastAPI's form parsing would spool it into the system's temporary folder first): only
  the known fields, each short; the file goes straight into the server's own scratch folder under
  a name of ours, and its first bytes must be a video container's (415 otherwise, whatever its
  name). More than --max-upload-mb is 413 as soon as it is known; a body that stalls (no byte for
  30 s, or not complete within --body-timeout) is 408.
- A video PyAV cannot decode is 422, one longer than --max-seconds 413; a timeline window must
  span at least `timeline.MIN_WINDOW_FRAMES` frames, and a request gets at most one window per 2 s
  of --max-seconds (413 beyond).
- Work runs on a pool of `workers` threads (decoding and PyTorch release the GIL); while it runs
  the request watches its client: one that hung up has its work stopped between packets and
  batches (pipeline.decoding.video.Cancelled), so the worker is free again within about a second.
- Ctrl-C (or SIGTERM) stops every running job the same way; requests in flight get 503.
- Server-side faults are one line: 507 when the server's disk is full, 503 for other I/O errors.
- The Host header must name this server (the bound address, localhost, or an --allow-host name):
  a web page elsewhere cannot drive a server on 127.0.0.1 through DNS rebinding. That check and
  the body's size limit are ASGI middleware in front of the app (`trainers.inference.middleware`);
  beneath them, the same module's connection protocol (uvicorn's h11 connection) wants a request's
  headers within 10 s and lets one address hold at most 2 x `per_client` connections.
Nothing a client sends names a server-side file (a run is chosen among the loaded runs' names).
Binds 127.0.0.1 unless told otherwise.
"""
# no `from __future__ import annotations`: FastAPI reads the endpoints' annotations, imported inside create_app

import asyncio
import base64
import contextlib
import dataclasses
import errno
import functools
import hashlib
import json
import logging
import math
import os
import shutil
import socket
import stat
import tempfile
import threading
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from trainers.inference.forms import NAME_LIMIT, Form, Refused, number, receive
from trainers.inference.middleware import BodyLimit, HostCheck, connection_protocol, is_address
from trainers.inference.workload import Workload

logger = logging.getLogger(__name__)

EXTRA = "pip install 'har[serve]'"
MAX_FPS = 1000.0       # a frame rate above this is a forged header, not a video
SECONDS_PER_WINDOW = 2.0  # a timeline request gets at most --max-seconds / this windows
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
RUN_FILES = ("config.json", "lineage.json", "best.pt")  # what a served model is made of


@dataclass(frozen=True)
class ServeConfig:
    runs: tuple[Path, ...]
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 2             # threads that decode and score
    queue: int = 64              # requests waiting for a thread before 503
    uploads: int = 8             # bodies being received at once before 503
    per_client: int = 8          # requests in progress from one client address before 429
    max_upload_mb: float = 200.0
    max_seconds: float = 3600.0  # longest video accepted
    body_timeout: float = 300.0  # seconds a whole upload may take
    allow_hosts: tuple[str, ...] = ()  # Host header names accepted beside the bound address and localhost
    device: str = "auto"

    def validate(self) -> None:
        if not self.runs:
            raise ValueError("name at least one RUN folder to serve")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port {self.port} is out of range; allowed: 0..65535 (0: any free port)")
        for name, lo, hi in (("workers", 1, 256), ("queue", 1, 100_000), ("uploads", 1, 10_000),
                             ("per_client", 1, 100_000)):
            if not lo <= getattr(self, name) <= hi:
                raise ValueError(f"--{name.replace('_', '-')} {getattr(self, name)} is out of range; "
                                 f"allowed: {lo}..{hi}")
        for name in ("max_upload_mb", "max_seconds", "body_timeout"):
            v = getattr(self, name)
            if not 0 < v <= 1e6:
                raise ValueError(f"--{name.replace('_', '-')} {v} is out of range; allowed: > 0 and <= 1e6")
        for h in self.allow_hosts:
            name = h[2:] if h.startswith("*.") else h
            if h != "*" and not (name and len(name) <= 253 and all(c.isalnum() or c in "-." for c in name)):
                raise ValueError(f"--allow-host {h[:80]!r} is not a host name; allowed: a name (example.org), "
                                 "a pattern (*.example.org), or * (any: no Host check); addresses always pass")

    @property
    def client_uploads(self) -> int:
        """Uploads one client address may have in progress: never more than half the places."""
        return max(1, min(self.per_client, self.uploads // 2))

    @property
    def max_windows(self) -> int:
        """The most timeline windows one request may ask for: one per 2 s of the longest video accepted."""
        return max(16, math.ceil(self.max_seconds / SECONDS_PER_WINDOW))

    def hosts(self) -> list[str]:
        """The Host header names accepted beside any IP address (an address cannot be rebound):
        localhost, the bound name (for a wildcard bind this machine's names) and --allow-host."""
        names = {"localhost"}
        if self.host in WILDCARD_HOSTS:
            names |= {socket.gethostname(), socket.getfqdn()}
        elif not is_address(self.host):
            names.add(self.host)
        return sorted({n.lower() for n in names | set(self.allow_hosts)})


def require() -> None:
    """ValueError naming the extra when FastAPI, uvicorn or python-multipart is missing."""
    for mod in ("fastapi", "uvicorn", "python_multipart"):
        try:
            __import__(mod)
        except ImportError:
            raise ValueError(f"har serve needs FastAPI, uvicorn and python-multipart ({mod} is not installed): "
                             f"{EXTRA}") from None


@dataclass
class Served:
    """One loaded run: its predictor and explainer (both loaded at start from the same files; for
    a run explain cannot take, the reason), what /api/runs says."""
    name: str
    run_dir: Path
    predictor: object
    explainer: object
    info: dict
    lock: threading.Lock = field(default_factory=threading.Lock)  # explanations hook the model: one at a time


def run_digest(run_dir: Path) -> str:
    """sha256 over the files a served model is made of: the run's fingerprint as served."""
    from pipeline.core.lineage import file_sha256

    return hashlib.sha256("\n".join(file_sha256(Path(run_dir) / f) for f in RUN_FILES).encode()).hexdigest()


def run_info(name: str, run_dir: Path, p, digest: str, labels: str | None = None) -> dict:
    """What /api/runs tells about a run: from its config, lineage card and metrics (a joint run's
    entry for dataset `labels`: that dataset's test metrics). A damaged metrics.json shows no
    metrics (logged), never stops the server."""
    from trainers.runs import runner
    from trainers.training import tasks

    def read(f: str) -> dict:
        try:
            doc = json.loads((run_dir / f).read_text())
        except (OSError, ValueError, RecursionError):
            return {}
        return doc if isinstance(doc, dict) else {}

    cfg, lin = read("config.json"), read("lineage.json")
    try:
        metrics = runner.read_metrics(run_dir)
    except ValueError as e:
        logger.warning("%s; /api/runs shows no metrics for %s", e, name)
        metrics = {}
    card = lin.get("predict") if isinstance(lin.get("predict"), dict) else {}
    test = metrics.get("test", {})
    if labels is not None:
        test = test.get("datasets", {}).get(labels, {})
    kind = tasks.for_inputs(lin.get("inputs"))
    return {"name": name, "kind": kind.name if kind else ("video-model" if "model" in cfg else "head"),
            "model": cfg.get("model") or cfg.get("head"), "backbone": card.get("backbone"),
            "classes": list(p.classes), "split": metrics.get("split", cfg.get("split")),
            "recipe": card.get("recipe"), "fingerprint": digest[:16],
            "test": {k: v for k, v in test.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}}


def load_runs(cfg: ServeConfig) -> dict[str, Served]:
    """Every run loaded once (checked as `har predict` checks it), predictor and explainer from
    the same files (ValueError when a run folder changed while it loaded); named by its folder's
    name (a joint run once per dataset, `FOLDER:DATASET`, answering in that dataset's classes)."""
    from trainers.inference import explain, predictor

    served: dict[str, Served] = {}
    for r in map(Path, cfg.runs):
        before = run_digest(r) if all((r / f).is_file() for f in RUN_FILES) else None
        entries = [(labels, predictor.load(r, cfg.device, labels)) for labels in predictor.label_sets(r)]
        try:
            explainer = explain.load(r, cfg.device)
        except explain.ExplainError as e:  # a run explain cannot take (a joint run): /api/explain says why
            explainer = str(e)
        if before is None or run_digest(r) != before:
            raise ValueError(f"{r} changed while it was loading; start har serve again once it is complete")
        for labels, p in entries:   # a joint run: one entry per dataset, NAME:DATASET
            name = r.resolve().name + (f":{labels}" if labels else "")
            while name in served:
                name += "_"
            served[name] = Served(name, r, p, explainer, run_info(name, r, p, before, labels))
    return served


def create_app(cfg: ServeConfig, served: dict[str, Served]):
    """The FastAPI application over already loaded runs: (the ASGI app to serve, the FastAPI app)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse
    from starlette.requests import ClientDisconnect

    from pipeline.decoding import video
    from trainers.inference import explain as X
    from trainers.inference import timeline

    unreadable = video.demux_errors()  # PyAV's errors, named by the decoding package (no PyAV here)
    work = Workload(cfg.workers, cfg.queue, cfg.uploads, cfg.per_client, cfg.client_uploads)
    scratches = [Path(tempfile.mkdtemp(prefix="har-serve-"))]  # the server's own: uploads live only here

    @contextlib.asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:
            work.shutdown()
            for folder in scratches:
                if _own_folder(folder):
                    shutil.rmtree(folder, ignore_errors=True)

    app = FastAPI(title="har serve", version="1", lifespan=lifespan,
                  description="Classify videos with trained har runs (human action recognition).")
    app.state.scratch = scratches[-1]
    app.state.stop_all = work.stop_all

    def scratch() -> Path:
        """The server's folder for uploads; a fresh one where a /tmp cleaner removed it or its name
        now holds what is not the server's own (a symlink, another user's folder: never written into)."""
        if not _own_folder(scratches[-1]):
            scratches.append(Path(tempfile.mkdtemp(prefix="har-serve-")))
            app.state.scratch = scratches[-1]
        return scratches[-1]

    page = resources.files("trainers.inference").joinpath("server.html").read_text()

    def pick(run: str | None) -> Served:
        if run in (None, ""):
            if len(served) == 1:
                return next(iter(served.values()))
            raise Refused(422, f"name the run; allowed: {', '.join(served)}")
        if run not in served:
            raise Refused(422, f"unknown run {run[:NAME_LIMIT]!r}; allowed: {', '.join(served)}")
        return served[run]

    def measure(path: Path) -> tuple[int, float]:
        """(frames, fps) of an upload: its frames counted from its packets (a header may lie); 413
        when it is longer than --max-seconds by its header or by its packets, 422 for a frame rate
        no video has (a forged header would make a long video short and a window many)."""
        info = video.probe(path)
        if info.fps > MAX_FPS:
            raise Refused(422, f"the video declares {info.fps:.4g} frames per second; allowed: up to {MAX_FPS:g}")
        fps = info.fps if info.fps > 0 else timeline.ASSUMED_FPS
        frames = timeline.frame_count(path)
        longest = max(frames, info.frames_estimate)
        if longest / fps > cfg.max_seconds:
            raise Refused(413, f"the video is {longest / fps:.0f} s long; allowed: up to {cfg.max_seconds:g} s "
                               "(har serve --max-seconds)")
        return frames, fps

    async def handle(request: Request, allowed: tuple[str, ...], prepare, executor):
        """One upload request: admitted (a slot and the client's share, with an upload place free)
        or refused before its body is read; an upload place held while the body arrives, the form
        read into a folder of its own; `prepare(form)` -> (task, args) checked before any work; the
        task run and stopped when nobody waits; the folder removed on every path; the decoder's
        and the disk's failures as one line."""
        who = request.client.host if request.client else "?"
        name = "upload"
        async with work.admitted(who):
            folder = None
            try:
                folder = Path(tempfile.mkdtemp(dir=scratch()))
                async with work.uploading(who):
                    form = await receive(request, folder, allowed, cfg.body_timeout, work.stopping)
                name = form.name
                task, args = prepare(form)
                return await work.run(request.is_disconnected, executor, task, form.path, *args)
            except video.VideoError as e:  # the decoder's words, without the server's own paths
                text = str(e).replace(str(folder), "").replace(str(folder.parent), "")
                raise Refused(422, f"{name}: {text}") from None
            except unreadable as e:  # a file the demuxer chokes on: the file, not the server
                raise Refused(422, f"{name}: not a readable video ({type(e).__name__})") from None
            except ClientDisconnect:
                raise Refused(499, "the client left") from None
            except OSError as e:
                logger.warning("%s %s: %s", request.method, request.url.path, e)
                if e.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise Refused(507, "the server's disk is full; try again later") from None
                raise Refused(503, f"the server could not read or write its files ({e.strerror or 'I/O error'});"
                                   " try again later", retry=True) from None
            finally:
                if folder is not None:
                    shutil.rmtree(folder, ignore_errors=True)

    def form_schema(fields: dict[str, dict]) -> dict:
        return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary", "description": "a video file"}, **fields}}}}}}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index():
        return page

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "runs": len(served)}

    @app.get("/api/runs")
    def runs():
        return {"runs": [s.info for s in served.values()]}

    predict_fields = {"run": {"type": "string"}, "top": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 5},
                      "window": {"type": "number", "exclusiveMinimum": 0, "maximum": timeline.MAX_SECONDS},
                      "stride": {"type": "number", "exclusiveMinimum": 0, "maximum": timeline.MAX_SECONDS}}

    @app.post("/api/predict", openapi_extra=form_schema(predict_fields))
    async def predict(request: Request):
        def prepare(form: Form):
            f = form.fields
            s = pick(f.get("run"))
            top = number(f, "top", int, 1, 1000, 5)
            window = number(f, "window", float, 0, timeline.MAX_SECONDS, None)
            stride = number(f, "stride", float, 0, timeline.MAX_SECONDS, None)
            if stride is not None and window is None:
                raise Refused(422, "stride needs window (the window's length in seconds)")
            timing = timeline.Timing(window, stride) if window is not None else None
            if timing is not None:
                try:
                    timing.validate()  # the CLI's limits: at most 64 windows open at once
                except ValueError as e:
                    raise Refused(422, str(e).replace("--", "")) from None
            return functools.partial(predict_one, s, top, timing, form.name), ()
        return await handle(request, ("file", *predict_fields), prepare, work.predicting)

    def predict_one(s: Served, top: int, timing, name: str, path: Path) -> dict:
        frames, fps = measure(path)
        if timing is None:
            r = s.predictor(path, top)
        else:
            try:
                timeline.check_window(timing, fps, name)
            except ValueError as e:
                raise Refused(422, str(e).replace("--", "")) from None
            n = timeline.window_count(frames, fps, timing)  # counted, never listed: a list could be huge
            if n > cfg.max_windows:
                raise Refused(413, f"window {timing.window:g} s every {timing.step:g} s makes {n} windows; allowed: "
                                   f"up to {cfg.max_windows} a request (one per {SECONDS_PER_WINDOW:g} s of "
                                   "--max-seconds): choose a longer stride")
            r = s.predictor.timeline(path, top, timing, frames)
        if "error" in r:
            raise video.VideoError(r["error"])
        r.pop("probabilities", None)
        return {"run": s.name, "predictions": [{**r, "video": name}]}

    methods = [m for m in X.METHODS.names() if m != "filters"]
    explain_fields = {"run": {"type": "string"}, "method": {"type": "string", "enum": methods, "default": "gradcam"}}

    @app.post("/api/explain", openapi_extra=form_schema(explain_fields))
    async def explain(request: Request):
        def prepare(form: Form):
            s = pick(form.fields.get("run"))
            method = form.fields.get("method") or "gradcam"
            if method not in methods:
                raise Refused(422, f"unknown method {method[:40]!r}; allowed: {', '.join(methods)}")
            return functools.partial(explain_one, s, method, form.name), ()
        return await handle(request, ("file", *explain_fields), prepare, work.explaining)

    def explain_one(s: Served, method: str, name: str, path: Path) -> dict:
        if isinstance(s.explainer, str):
            raise Refused(422, s.explainer)
        measure(path)
        with s.lock:  # hooks on the model: one explanation at a time
            try:
                e = dataclasses.replace(s.explainer(path, method), video=name)  # titled with the client's name
            except X.ExplainError as e:
                raise Refused(422, str(e)) from None
            doc = X.write(e, path.parent, "x")
        files = doc.pop("files")
        for k, mime in (("png", "image/png"), ("gif", "image/gif")):
            doc[k] = f"data:{mime};base64," + base64.b64encode(Path(files[k]).read_bytes()).decode()
        return {"run": s.name, **doc, "video": name}

    @app.exception_handler(Refused)
    async def refused(request, exc: Refused):
        return JSONResponse({"detail": exc.detail}, status_code=exc.status,
                            headers={"Retry-After": "2"} if exc.retry else None)

    @app.exception_handler(Exception)
    async def unexpected(request, exc):  # a bug: logged with its traceback, the client told plainly
        logger.exception("%s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error in har serve; the server log has the details"}, status_code=500)

    # the limit is the file's; the multipart framing and the form fields get 64 KiB more
    limited = BodyLimit(app, int(cfg.max_upload_mb * 2**20) + 64 * 1024, cfg.max_upload_mb)
    hosts = cfg.hosts()
    return (limited if "*" in hosts else HostCheck(limited, hosts)), app


def _own_folder(path: Path) -> bool:
    """A real folder (not a link) of this process's user that no other user may enter (mkdtemp
    makes them 0700). Windows has no owner or mode bits here: a real folder there."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISDIR(st.st_mode):
        return False
    return not hasattr(os, "getuid") or (st.st_uid == os.getuid() and not st.st_mode & 0o077)


def serve(cfg: ServeConfig, on_ready=None) -> None:
    """Load the runs, then serve until Ctrl-C (uvicorn): running work is stopped and answered 503."""
    require()
    import torch
    import uvicorn

    from pipeline.core import cluster

    family = socket.AF_INET6 if ":" in cfg.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((cfg.host, cfg.port))  # before the runs load: a busy port is said at once
    except OSError as e:
        sock.close()
        raise ValueError(f"cannot listen on {cfg.host}:{cfg.port} ({e.strerror}); choose another --port "
                         "(0: any free port) or --host") from None
    served = load_runs(cfg)
    torch.set_num_threads(cluster.torch_threads(cfg.workers))  # the pool shares the cores
    asgi, app = create_app(cfg, served)
    if on_ready is not None:
        on_ready(served, sock.getsockname()[1])

    class Server(uvicorn.Server):
        async def serve(self, sockets=None):
            self.loop = asyncio.get_running_loop()
            await super().serve(sockets)

        def handle_exit(self, sig, frame):  # Ctrl-C: stop the running jobs now, not after them
            self.loop.call_soon_threadsafe(app.state.stop_all)  # from the loop: no lock taken in a handler
            super().handle_exit(sig, frame)

    config = uvicorn.Config(asgi, log_level="warning", timeout_graceful_shutdown=5, timeout_keep_alive=5,
                            http=connection_protocol(cfg.per_client * 2), h11_max_incomplete_event_size=64 * 1024)
    Server(config).run(sockets=[sock])
