"""`har serve`: trained runs behind a web page and an HTTP API (FastAPI, served by uvicorn).

    GET  /              the page: drop a video, see the top classes, the sampled frames with
                        Grad-CAM, and for a long video the timeline (trainers/server.html)
    POST /api/predict   multipart `file`, `run`, `top`, optional `window`, `stride`: the JSON of
                        `har predict --json` (the file's name in place of a path)
    POST /api/explain   multipart `file`, `run`, `method`: the sampled frames with their maps
                        (PNG) and the animated overlay (GIF) as data URLs
    GET  /api/runs      the loaded runs: model, classes, split, test metrics
    GET  /healthz       liveness
    GET  /openapi.json  the schema (FastAPI)

As a server must be: every run is loaded once at start; requests run on a pool of `workers`
threads (decoding and PyTorch release the GIL), so one slow upload does not block the others,
and at most `queue` wait (503 beyond, with Retry-After). The body is counted as it arrives and
cut at --max-upload-mb (413); the upload's first bytes must be a video container's (415
otherwise, whatever its name), one PyAV cannot decode is 422, one longer than --max-seconds is
413. Uploads go to a temporary folder of the server's own under a random name and are removed
on every path; nothing a client sends names a server-side file (a run is chosen among the
loaded runs' names). Binds 127.0.0.1 unless told otherwise.
"""
# no `from __future__ import annotations`: FastAPI reads the endpoints' annotations, imported inside create_app

import asyncio
import base64
import dataclasses
import contextlib
import json
import logging
import shutil
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

logger = logging.getLogger(__name__)

EXTRA = "pip install 'har[serve]'"
NAME_LIMIT = 200  # characters of a client's file name echoed back (a label, never a path)


@dataclass(frozen=True)
class ServeConfig:
    runs: tuple[Path, ...]
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 2             # threads that decode and score
    queue: int = 64              # requests waiting for a thread before 503
    max_upload_mb: float = 200.0
    max_seconds: float = 3600.0  # longest video accepted
    device: str = "auto"

    def validate(self) -> None:
        if not self.runs:
            raise ValueError("name at least one RUN folder to serve")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"--port {self.port} is out of range; allowed: 0..65535 (0: any free port)")
        for name, lo, hi in (("workers", 1, 256), ("queue", 1, 100_000)):
            if not lo <= getattr(self, name) <= hi:
                raise ValueError(f"--{name} {getattr(self, name)} is out of range; allowed: {lo}..{hi}")
        for name in ("max_upload_mb", "max_seconds"):
            v = getattr(self, name)
            if not 0 < v <= 1e6:
                raise ValueError(f"--{name.replace('_', '-')} {v} is out of range; allowed: > 0 and <= 1e6")


def require() -> None:
    """ValueError naming the extra when FastAPI, uvicorn or python-multipart is missing."""
    for mod in ("fastapi", "uvicorn", "multipart"):
        try:
            __import__(mod)
        except ImportError:
            raise ValueError(f"har serve needs FastAPI, uvicorn and python-multipart ({mod} is not installed): "
                             f"{EXTRA}") from None


@dataclass
class Served:
    """One loaded run: its predictor, its explainer (loaded when first asked), what /api/runs says."""
    name: str
    run_dir: Path
    predictor: object
    info: dict
    device: str
    explainer: object = None
    lock: threading.Lock = field(default_factory=threading.Lock)  # explanations hook the model: one at a time

    def explain(self):
        with self.lock:
            if self.explainer is None:
                from trainers import explain

                self.explainer = explain.load(self.run_dir, self.device)
            return self.explainer


def run_info(name: str, run_dir: Path, p, labels: str | None = None) -> dict:
    """What /api/runs tells about a run: from its config, lineage card and metrics (a joint run's
    entry for dataset `labels`: that dataset's test metrics)."""
    def read(f: str) -> dict:
        try:
            return json.loads((run_dir / f).read_text())
        except (OSError, ValueError):
            return {}

    cfg, lin, metrics = read("config.json"), read("lineage.json"), read("metrics.json")
    card = lin.get("predict", {})
    test = metrics.get("test", {})
    if labels is not None:
        test = test.get("datasets", {}).get(labels, {})
    from trainers import tasks

    kind = tasks.for_inputs(lin.get("inputs"))
    return {"name": name, "kind": kind.name if kind else ("video-model" if "model" in cfg else "head"),
            "model": cfg.get("model") or cfg.get("head"), "backbone": card.get("backbone"),
            "classes": list(p.classes), "split": metrics.get("split", cfg.get("split")),
            "recipe": card.get("recipe"),
            "test": {k: v for k, v in test.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}}


def load_runs(cfg: ServeConfig) -> dict[str, Served]:
    """Every run loaded once (checked as `har predict` checks it); named by its folder's name (a
    joint run once per dataset, `FOLDER:DATASET`, answering in that dataset's classes)."""
    from trainers import predictor

    served: dict[str, Served] = {}
    for r in cfg.runs:
        for labels in predictor.label_sets(Path(r)):   # a joint run: one entry per dataset, NAME:DATASET
            p = predictor.load(Path(r), cfg.device, labels)
            name = Path(r).resolve().name + (f":{labels}" if labels else "")
            while name in served:
                name += "_"
            served[name] = Served(name, Path(r), p, run_info(name, Path(r), p, labels), cfg.device)
    return served


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes gets 413 as soon as it is known (its
    Content-Length, or the bytes counted as they arrive), before anything is parsed or stored."""

    def __init__(self, app, limit: int, shown_mb: float):
        self.app, self.limit, self.shown_mb = app, limit, shown_mb

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        try:
            declared = int(headers.get(b"content-length", b"0"))
        except ValueError:
            declared = 0
        if declared > self.limit:
            return await self._too_large(send)
        seen, over = 0, False

        async def counted():
            nonlocal seen, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:  # the app is told the client left; the client gets 413
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def sending(message):
            if not over:
                await send(message)

        try:
            await self.app(scope, counted, sending)
        except Exception:
            if not over:
                raise
        if over:
            await self._too_large(send)

    async def _too_large(self, send):
        body = json.dumps({"detail": f"upload too large; allowed: up to {self.shown_mb:g} MB "
                                     "(har serve --max-upload-mb)"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def create_app(cfg: ServeConfig, served: dict[str, Served]):
    """The FastAPI application over already loaded runs."""
    from fastapi import FastAPI, File, Form, HTTPException, UploadFile
    from fastapi.responses import HTMLResponse, JSONResponse

    from pipeline import video
    from trainers import explain as X
    from trainers import timeline

    pool = ThreadPoolExecutor(cfg.workers, thread_name_prefix="har-serve")
    # explanations hook the model and run one at a time: a thread of their own, so they never hold
    # the predict workers
    explaining = ThreadPoolExecutor(1, thread_name_prefix="har-explain")
    waiting = asyncio.Semaphore(cfg.workers + cfg.queue)
    scratch = Path(tempfile.mkdtemp(prefix="har-serve-"))  # the server's own: uploads live only here

    @contextlib.asynccontextmanager
    async def lifespan(app):
        try:
            yield
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
            explaining.shutdown(wait=False, cancel_futures=True)
            shutil.rmtree(scratch, ignore_errors=True)

    app = FastAPI(title="har serve", version="1", lifespan=lifespan,
                  description="Classify videos with trained har runs (human action recognition).")
    app.state.scratch = scratch
    page = resources.files("trainers").joinpath("server.html").read_text()

    def pick(run: str | None) -> Served:
        if run in (None, ""):
            if len(served) == 1:
                return next(iter(served.values()))
            raise HTTPException(422, f"name the run; allowed: {', '.join(served)}")
        if run not in served:
            raise HTTPException(422, f"unknown run {run[:NAME_LIMIT]!r}; allowed: {', '.join(served)}")
        return served[run]

    def label(upload: UploadFile) -> str:
        """The client's file name as a label: its last component, printable, bounded."""
        name = (upload.filename or "upload").replace("\\", "/").rsplit("/", 1)[-1]
        return "".join(c for c in name if c.isprintable())[:NAME_LIMIT] or "upload"

    async def stored(upload: UploadFile, folder: Path) -> Path:
        """The upload copied into `folder` (fresh, in the server's scratch) under a name of ours; 415
        unless its first bytes are a video container's."""
        head = await upload.read(512)
        found = video.sniff(head)
        if found is None:
            raise HTTPException(415, f"{label(upload)!r} is not a video file (its first bytes are no video "
                                     "container's); allowed: avi, mp4/mov, mkv/webm, mpeg, ogg, flv, wmv, gif")
        path = folder / f"upload{found[1]}"
        with open(path, "wb") as f:
            f.write(head)
            while chunk := await upload.read(1 << 20):
                f.write(chunk)
        return path

    def check_duration(path: Path) -> None:
        """413 when the video is longer than --max-seconds: its packets counted (a header may lie)."""
        info = video.probe(path)
        frames = max(info.frames_estimate, timeline.frame_count(path))
        seconds = frames / (info.fps if info.fps > 0 else 25.0)
        if seconds > cfg.max_seconds:
            raise HTTPException(413, f"the video is {seconds:.0f} s long; allowed: up to {cfg.max_seconds:g} s "
                                     "(har serve --max-seconds)")

    async def handle(upload: UploadFile, work, executor=None):
        """Store the upload, run `work(path)` on the pool, remove the upload whatever happens."""
        if waiting.locked():  # before the upload is copied: a full queue costs no disk
            raise HTTPException(503, "busy: every worker and queue place is taken; try again shortly",
                                headers={"Retry-After": "2"})
        async with waiting:
            folder = Path(tempfile.mkdtemp(dir=scratch))
            try:
                path = await stored(upload, folder)
                return await asyncio.get_running_loop().run_in_executor(executor or pool, work, path)
            except video.VideoError as e:  # the decoder's words, without the server's own paths
                text = str(e).replace(str(folder), "").replace(str(scratch), "")
                raise HTTPException(422, f"{label(upload)}: {text}") from None
            finally:
                shutil.rmtree(folder, ignore_errors=True)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index():
        return page

    @app.get("/healthz")
    def healthz():
        return {"status": "ok", "runs": len(served)}

    @app.get("/api/runs")
    def runs():
        return {"runs": [s.info for s in served.values()]}

    @app.post("/api/predict")
    async def predict(file: UploadFile = File(..., description="a video file"), run: str | None = Form(None),
                      top: int = Form(5, ge=1, le=1000), window: float | None = Form(None, gt=0, le=timeline.MAX_SECONDS),
                      stride: float | None = Form(None, gt=0, le=timeline.MAX_SECONDS)):
        s = pick(run)
        if stride is not None and window is None:
            raise HTTPException(422, "stride needs window (the window's length in seconds)")
        timing = timeline.Timing(window, stride) if window is not None else None
        if timing is not None:
            try:
                timing.validate()  # the CLI's limits: at most 64 windows open at once
            except ValueError as e:
                raise HTTPException(422, str(e).replace("--", "")) from None
        name = label(file)

        def work(path: Path) -> dict:
            check_duration(path)
            r = s.predictor(path, top) if timing is None else s.predictor.timeline(path, top, timing)
            if "error" in r:
                raise video.VideoError(r["error"])
            r.pop("probabilities", None)
            return {**r, "video": name}
        return {"run": s.name, "predictions": [await handle(file, work)]}

    methods = [m for m in X.METHODS.names() if m != "filters"]

    @app.post("/api/explain")
    async def explain(file: UploadFile = File(...), run: str | None = Form(None), method: str = Form("gradcam")):
        s = pick(run)
        if method not in methods:
            raise HTTPException(422, f"unknown method {method[:40]!r}; allowed: {', '.join(methods)}")
        name = label(file)

        def work(path: Path) -> dict:
            check_duration(path)
            ex = s.explain()
            with s.lock:  # hooks on the model (one explain thread; the lock also guards the lazy load)
                e = dataclasses.replace(ex(path, method), video=name)  # titled with the client's name
                doc = X.write(e, path.parent, "x")
            files = doc.pop("files")
            for k, mime in (("png", "image/png"), ("gif", "image/gif")):
                doc[k] = f"data:{mime};base64," + base64.b64encode(Path(files[k]).read_bytes()).decode()
            return {**doc, "video": name}
        try:
            return {"run": s.name, **await handle(file, work, explaining)}
        except X.ExplainError as e:
            raise HTTPException(422, str(e)) from None

    @app.exception_handler(Exception)
    async def unexpected(request, exc):  # a bug: logged with its traceback, the client told plainly
        logger.exception("%s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error in har serve; the server log has the details"}, status_code=500)

    # the limit is the file's; the multipart framing and the form fields get 64 KiB more
    return BodyLimit(app, int(cfg.max_upload_mb * 2**20) + 64 * 1024, cfg.max_upload_mb), app


def serve(cfg: ServeConfig, on_ready=None) -> None:
    """Load the runs, then serve until Ctrl-C (uvicorn)."""
    require()
    import torch
    import uvicorn

    from pipeline import cluster

    import socket

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
    torch.set_num_threads(max(1, cluster.cpu_count() // cfg.workers))  # the pool shares the cores
    asgi, _ = create_app(cfg, served)
    if on_ready is not None:
        on_ready(served, sock.getsockname()[1])
    config = uvicorn.Config(asgi, log_level="warning", timeout_graceful_shutdown=5,
                            h11_max_incomplete_event_size=64 * 1024)
    uvicorn.Server(config).run(sockets=[sock])
