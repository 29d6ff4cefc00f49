"""A request's multipart form, parsed as it arrives (python-multipart's streaming parser) and
bounded: only the fields an endpoint allows, each short, a few parts with short headers, and one
video file written to the request's own scratch folder once its first bytes are a video
container's. `receive` reads a request's body into a FormReader within its deadlines (a body
that stalls is 408). `Refused` is a request answered with a status and one line; `number` reads a
numeric field within its range.
"""
from __future__ import annotations

import asyncio
import math
import threading
from dataclasses import dataclass
from pathlib import Path

NAME_LIMIT = 200       # characters of a client's file name echoed back (a label, never a path)
FIELD_LIMIT = 1024     # bytes of one form field other than the file
PARTS_LIMIT = 16       # parts of one multipart body
HEADER_LIMIT = 4096    # bytes of one multipart part header's name or value
IDLE_SECONDS = 30.0    # the longest silence within a body (at most the whole body's timeout)
MIN_RATE = 8 * 1024    # bytes per second a body must average after its first GRACE_SECONDS
GRACE_SECONDS = 10.0
STOP_POLL_SECONDS = 0.25   # how often an arriving upload checks that the server is not stopping
STOPPING = "the server is stopping; try again later"


class Refused(Exception):
    """A request answered with `status` and one line (raised below the endpoints, where FastAPI's
    HTTPException would tie the parsing code to FastAPI)."""

    def __init__(self, status: int, detail: str, retry: bool = False):
        super().__init__(detail)
        self.status, self.detail, self.retry = status, detail, retry


def label(filename: str | None) -> str:
    """A client's file name as a label: its last component, printable, bounded."""
    name = (filename or "upload").replace("\\", "/").rsplit("/", 1)[-1]
    return "".join(c for c in name if c.isprintable())[:NAME_LIMIT] or "upload"


@dataclass
class Form:
    fields: dict[str, str]
    path: Path | None = None     # the uploaded file, in the request's scratch folder
    name: str = "upload"         # its client-side name, as a label


class FormReader:
    """A multipart/form-data body parsed as it arrives (python-multipart's streaming parser): the
    fields in `allowed` (each at most FIELD_LIMIT bytes), and one `file` part written to `folder`
    once its first bytes are known to be a video container's."""

    def __init__(self, boundary: bytes, folder: Path, allowed: tuple[str, ...]):
        from python_multipart.multipart import MultipartParser

        self.folder, self.allowed = folder, allowed
        self.events: list[tuple[str, bytes]] = []
        ev = self.events.append
        self.parser = MultipartParser(boundary, {
            "on_part_begin": lambda: ev(("begin", b"")),
            "on_header_field": lambda d, s, e: ev(("hfield", bytes(d[s:e]))),
            "on_header_value": lambda d, s, e: ev(("hvalue", bytes(d[s:e]))),
            "on_header_end": lambda: ev(("hend", b"")),
            "on_headers_finished": lambda: ev(("headers", b"")),
            "on_part_data": lambda d, s, e: ev(("data", bytes(d[s:e]))),
            "on_part_end": lambda: ev(("end", b"")),
            "on_end": lambda: ev(("done", b"")),
        })
        self.form = Form({})
        self.parts, self.done = 0, False
        self.headers: list[tuple[bytes, bytes]] = []
        self.hfield = self.hvalue = b""
        self.part: str | None = None
        self.value = bytearray()
        self.out = None  # the file part's file, once sniffed

    def feed(self, chunk: bytes) -> None:
        from python_multipart.exceptions import MultipartParseError

        try:
            self.parser.write(chunk)
        except MultipartParseError as e:
            raise Refused(400, f"the body is not valid multipart/form-data ({e})") from None
        events, self.events[:] = list(self.events), []
        for kind, data in events:
            getattr(self, f"_{kind}")(data)

    def close(self) -> Form:
        if self.out is not None:
            self.out.close()
        if not self.done:
            raise Refused(400, "the body ended before its multipart end")
        if self.form.path is None:
            raise Refused(422, "field `file` is required: the video file")
        return self.form

    def abort(self) -> None:
        if self.out is not None:
            self.out.close()

    def _begin(self, _):
        self.parts += 1
        if self.parts > PARTS_LIMIT:
            raise Refused(422, f"too many form parts; allowed: the fields {', '.join(self.allowed)}")
        self.headers, self.part, self.value = [], None, bytearray()

    def _hfield(self, d):
        self.hfield += d
        if len(self.hfield) > HEADER_LIMIT:
            raise Refused(400, f"a form part's header is longer than {HEADER_LIMIT} bytes")

    def _hvalue(self, d):
        self.hvalue += d
        if len(self.hvalue) > HEADER_LIMIT:
            raise Refused(400, f"a form part's header is longer than {HEADER_LIMIT} bytes")

    def _hend(self, _):
        if len(self.headers) >= 8:
            raise Refused(400, "a form part has more than 8 headers")
        self.headers.append((self.hfield.lower(), self.hvalue))
        self.hfield = self.hvalue = b""

    def _headers(self, _):
        from python_multipart.multipart import parse_options_header

        disposition = dict(self.headers).get(b"content-disposition", b"")
        _, params = parse_options_header(disposition)
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if name not in self.allowed:
            raise Refused(422, f"unknown form field {name[:40]!r}; allowed: {', '.join(self.allowed)}")
        if name in self.form.fields or (name == "file" and self.form.path is not None):
            raise Refused(422, f"form field {name!r} given twice; allowed: once")
        self.part = name
        if name == "file":
            self.form.name = label(params.get(b"filename", b"").decode("utf-8", "replace"))

    def _data(self, d):
        self.value += d
        if self.part == "file":
            if self.out is not None:
                self.out.write(self.value)
                self.value.clear()
            elif len(self.value) >= 512:
                self._open()
        elif len(self.value) > FIELD_LIMIT:
            raise Refused(422, f"form field {self.part!r} is longer than {FIELD_LIMIT} bytes")

    def _open(self):
        from pipeline.decoding import video

        found = video.sniff(bytes(self.value))
        if not self.value:
            raise Refused(422, f"{self.form.name!r} is empty; allowed: a video file")
        if found is None:
            raise Refused(415, f"{self.form.name!r} is not a video file (its first bytes are no video "
                               "container's); allowed: avi, mp4/mov, mkv/webm, mpeg, ogg, flv, wmv, gif")
        self.form.path = self.folder / f"upload{found[1]}"
        self.out = open(self.form.path, "xb")
        self.out.write(self.value)
        self.value.clear()

    def _end(self, _):
        if self.part == "file":
            if self.out is None:
                self._open()
            self.out.close()
            self.out = None
        elif self.part is not None:
            try:
                self.form.fields[self.part] = self.value.decode("utf-8")
            except UnicodeDecodeError:
                raise Refused(422, f"form field {self.part!r} is not UTF-8 text") from None
        self.part = None

    def _done(self, _):
        self.done = True


def number(fields: dict, key: str, kind: type, lo: float, hi: float, default):
    """Form field `key` as an int or float within [lo, hi] (a float: lo excluded), or `default`
    when absent; Refused(422) naming the value and what is allowed."""
    text = fields.get(key, "").strip()
    if not text:
        return default
    try:
        v = kind(text)
    except ValueError:
        v = None
    ok = v is not None and (lo <= v <= hi if kind is int else (math.isfinite(v) and lo < v <= hi))
    if not ok:
        span = f"{lo:g}..{hi:g}" if kind is int else f"> {lo:g} and <= {hi:g}"
        raise Refused(422, f"{key} {text[:40]!r} is out of range; allowed: {'a whole number ' if kind is int else ''}"
                           f"{span}")
    return v


async def receive(request, folder: Path, allowed: tuple[str, ...], body_timeout: float,
                  stopping: threading.Event | None = None) -> Form:
    """The form of `request` (a starlette Request), its file streamed into `folder`; 422 for a body
    that is not multipart/form-data, 408 for one that stalls: no byte for IDLE_SECONDS, the average
    rate below MIN_RATE after GRACE_SECONDS, or not complete within `body_timeout` seconds; 503
    within STOP_POLL_SECONDS of `stopping` being set (Ctrl-C: an upload still arriving is not
    waited for)."""
    from python_multipart.multipart import parse_options_header

    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or not params.get(b"boundary"):
        raise Refused(422, "field `file` is required: send multipart/form-data with the video in field `file`")
    reader = FormReader(params[b"boundary"], folder, allowed)
    loop = asyncio.get_running_loop()
    start = last = loop.time()
    got = 0
    chunks = request.stream().__aiter__()
    pending: asyncio.Future | None = None   # the next chunk, awaited across polls (never cancelled by one)
    try:
        while True:
            if stopping is not None and stopping.is_set():   # checked with every chunk, not only in pauses
                raise Refused(503, STOPPING)
            # the next byte must come before the body's deadline, within the longest pause, and
            # before the average rate since the grace period falls below MIN_RATE
            deadline = min(start + body_timeout, last + IDLE_SECONDS, start + GRACE_SECONDS + got / MIN_RATE)
            if pending is None:
                pending = asyncio.ensure_future(chunks.__anext__())
            wait = max(deadline - loop.time(), 0.0)
            done, _ = await asyncio.wait({pending}, timeout=min(wait, STOP_POLL_SECONDS) if stopping is not None else wait)
            if not done:
                if loop.time() < deadline:
                    continue   # a poll: the stop is checked at the top
                raise Refused(408, f"the upload stalled; allowed: the whole body within {body_timeout:g} s "
                                   f"(har serve --body-timeout), no pause over {IDLE_SECONDS:g} s, and at least "
                                   f"{MIN_RATE // 1024} KiB/s after the first {GRACE_SECONDS:g} s")
            try:
                chunk = pending.result()
            except StopAsyncIteration:
                break
            pending = None
            got += len(chunk)
            if chunk:
                reader.feed(chunk)
            last = loop.time()
        return reader.close()
    finally:
        if pending is not None and not pending.done():
            pending.cancel()
        reader.abort()
