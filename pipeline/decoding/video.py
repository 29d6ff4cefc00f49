"""Decoding with PyAV: streaming, frame-exact, bounded memory.

Frame k of a video is the k-th frame the decoder outputs (presentation order). We never seek
by timestamp: that is where frame-exactness breaks (B-frames, variable frame rate, AVI
timestamps). `scan` decodes every frame and converts only the wanted ones. `scan_sparse` decodes
less when one demux pass (no decoding, `packet_plan`) proves it safe: a codec whose keyframes
restart decoding (H.264 / HEVC: IDR / IRAP pictures, read from the NAL units), one packet per
shown frame, closed GOPs that each start with a keyframe and hold a contiguous run of frames. It then sends
the decoder only the GOPs that hold a wanted frame, each up to its last wanted packet, and checks
every frame it gets back against the plan's timestamps; at the first surprise it gives up and the
caller decodes everything. Packed-bitstream Xvid (UCF101's and HMDB51's B-frame AVIs, whose tiny
placeholder packets decode to no frame) always takes the full path.
"""
from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from pipeline.decoding import bitstream

logger = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".ogv", ".flv",
                  ".wmv", ".gif", ".m4v", ".3gp")


# the first bytes of the containers VIDEO_SUFFIXES name: (offset, magic, container, suffix)
SIGNATURES = (
    (0, b"RIFF", "avi", ".avi"),              # RIFF....AVI (checked below)
    (4, b"ftyp", "mp4", ".mp4"),              # ISO base media: mp4, mov, m4v, 3gp
    (4, b"moov", "mov", ".mov"), (4, b"mdat", "mov", ".mov"), (4, b"wide", "mov", ".mov"),
    (0, b"\x1a\x45\xdf\xa3", "matroska", ".mkv"),  # EBML: mkv, webm
    (0, b"\x00\x00\x01\xba", "mpeg-ps", ".mpg"), (0, b"\x00\x00\x01\xb3", "mpeg-video", ".mpg"),
    (0, b"FLV\x01", "flv", ".flv"), (0, b"OggS", "ogg", ".ogv"),
    (0, b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", "asf", ".wmv"),
    (0, b"GIF87a", "gif", ".gif"), (0, b"GIF89a", "gif", ".gif"),
)


def sniff(head: bytes) -> tuple[str, str] | None:
    """(container, suffix) when the first bytes of a file (at least 12; 376 for MPEG-TS) are those of
    a video container PyAV reads, else None: content decides, never a file name."""
    for off, magic, name, suffix in SIGNATURES:
        if head[off:off + len(magic)] == magic:
            if name == "avi" and head[8:12] != b"AVI ":
                continue  # RIFF WAVE and friends: audio
            return name, suffix
    if len(head) >= 376 and head[0] == head[188] == 0x47:  # MPEG-TS: a sync byte every 188 bytes
        return "mpeg-ts", ".ts"
    return None


class VideoError(Exception):
    """A file that cannot be decoded as a video; the message says why.

    `permanent`: the file itself is the reason (empty, not a container, no video stream, not a
    regular file), so decoding the unchanged file again would fail again; anything else (a decoder
    that ran out of memory or threads, a read error) is retried by the next run."""

    def __init__(self, message: str, permanent: bool = False):
        super().__init__(message)
        self.permanent = permanent


class Cancelled(Exception):
    """The caller stopped waiting for this decode (a server's client left, or the server is
    stopping): raised between packets by every decoding loop here. Not a VideoError: the file is
    not to blame, and nothing catching VideoError swallows it."""


_STOP: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar("har_video_stop", default=None)


@contextlib.contextmanager
def stoppable(stop: threading.Event) -> Iterator[None]:
    """Within this block (in this thread or context), decoding raises Cancelled soon after `stop`
    is set; callers that score between decodes call `check_stop` too."""
    token = _STOP.set(stop)
    try:
        yield
    finally:
        _STOP.reset(token)


def check_stop() -> None:
    """Cancelled when the enclosing `stoppable` block's event is set; else nothing (one lookup)."""
    stop = _STOP.get()
    if stop is not None and stop.is_set():
        raise Cancelled("stopped: the caller no longer waits for this video")


PERMANENT = " [permanent]"  # marks a stored error that a rerun does not retry while the file is unchanged


def failure_text(e: VideoError) -> str:
    """How a failure is stored in the `error` array."""
    return str(e) + (PERMANENT if e.permanent else "")


def transient(e: Exception) -> bool:
    """An FFmpeg error caused by the machine (no memory, no threads, an interrupted or failed
    read) rather than by the file's bytes; PyAV raises those as MemoryError / OSError kinds."""
    import av

    return isinstance(e, (MemoryError, OSError)) and not isinstance(e, (av.error.InvalidDataError, EOFError))


def is_permanent(error: str) -> bool:
    return str(error).endswith(PERMANENT)


def demux_errors() -> tuple[type[Exception], ...]:
    """What PyAV raises for a file FFmpeg cannot demux or decode (av.error.FFmpegError and its
    kinds, some of them OSErrors too), for a caller that catches them without importing PyAV."""
    import av

    return (av.error.FFmpegError,)


@dataclass(frozen=True)
class Probe:
    frames_estimate: int  # header count, or packets counted by demuxing when the header has none
    fps: float            # average frame rate
    width: int
    height: int


def _open(path: Path):
    import av

    from pipeline.core.lineage import special_file

    try:
        st = path.stat()
    except FileNotFoundError:
        raise VideoError("file not found (or a dangling symlink)") from None
    if special_file(st):  # never opened: reading a FIFO blocks until someone writes to it
        raise VideoError(special_file(st), permanent=True)
    if st.st_size == 0:
        raise VideoError("empty file (0 bytes)", permanent=True)
    try:
        container = av.open(str(path))
    except av.error.InvalidDataError as e:
        raise VideoError(f"not a readable container: {e}", permanent=True) from None
    except av.error.FFmpegError as e:
        raise VideoError(f"cannot open: {e}") from None
    if not container.streams.video:
        container.close()
        raise VideoError("no video stream (audio-only or data file)", permanent=True)
    stream = container.streams.video[0]
    if stream.codec_context is None:  # a codec FFmpeg does not know (a damaged or exotic fourcc)
        container.close()
        raise VideoError("unsupported or unknown video codec (FFmpeg has no decoder for it)", permanent=True)
    stream.thread_type = "AUTO"  # frame + slice threads inside FFmpeg
    return container, stream


def probe(path: Path) -> Probe:
    """Cheap facts about a video; the frame count is only an estimate (headers lie, see HMDB51)."""
    container, stream = _open(path)
    with container:
        n = stream.frames
        if n <= 0:  # e.g. WebM carries no count: demux (no decoding) and count packets
            n = _packets(container, stream)
        rate = stream.average_rate or stream.guessed_rate or Fraction(0)
        return Probe(int(n), float(rate), stream.codec_context.width, stream.codec_context.height)


def count_packets(path: Path) -> int:
    """Packets holding data, counted by demuxing (no decoding): the frame count when the header's
    may lie. A container that stops demuxing early counts what came before."""
    import av

    container, stream = _open(path)
    with container:
        try:
            return _packets(container, stream)
        except av.error.FFmpegError:
            return 0


def _packets(container, stream) -> int:
    n = 0
    for p in container.demux(stream):
        check_stop()
        n += bool(p.size)
    return n


def frames(path: Path, threads: int = 0) -> Iterator[tuple[int, object]]:
    """Decode every frame of `path`: (index, av.VideoFrame) in display order.

    A corrupt packet is skipped (and logged) and decoding goes on, so a damaged stream gives the
    frames a player would show; a truncated file ends where the demuxer gives up. A decoder short
    of memory or threads raises VideoError (the machine, not the file). `threads` 0 lets FFmpeg
    choose."""
    import av

    container, stream = _open(path)
    if threads:
        stream.codec_context.thread_count = threads
    k = 0
    bad = 0
    with container:
        try:
            for packet in container.demux(stream):
                check_stop()
                try:
                    decoded = stream.decode(packet)
                except av.error.InvalidDataError:
                    bad += 1
                    continue
                for frame in decoded:
                    yield k, frame
                    k += 1
        except av.error.FFmpegError as e:  # truncated or damaged container
            if transient(e):  # the machine, not the file: the next run tries again
                raise VideoError(f"the decoder failed for lack of resources after {k} frames: {e}") from None
            logger.warning("%s: demuxing stopped after %d frames: %s", path, k, e)
    if bad:
        logger.warning("%s: skipped %d corrupt packets", path, bad)


def scan(path: Path, wanted: Callable[[int], bool], on_frame: Callable[[int, object], None],
         threads: int = 0) -> int:
    """Decode every frame of `path` (`frames`), call on_frame(index, av.VideoFrame) for the wanted
    ones. Returns how many frames were decoded: the true frame count."""
    n = 0
    for k, frame in frames(path, threads):
        if wanted(k):
            on_frame(k, frame)
        n = k + 1
    return n


SMALL_PACKET = 32  # bytes; a packet this small may decode to no frame (an MPEG-4 N-VOP, packed B-frames)


@dataclass(frozen=True)
class PacketPlan:
    """The packets of a stream from one demux pass, when they can stand in for its frames."""
    pts: np.ndarray    # (n,) int64 presentation timestamp of each packet, in decode order
    rank: np.ndarray   # (n,) frame index (display order) of each packet
    gops: np.ndarray   # (g + 1,) decode positions where each closed GOP starts, then n

    @property
    def frames(self) -> int:
        return len(self.pts)

    def packets_for(self, wanted: Iterable[int]) -> np.ndarray:
        """(n,) bool, decode order: the packets to decode for these frames (each wanted frame's
        GOP from its keyframe to its last wanted packet)."""
        want = np.unique(np.asarray(list(wanted), np.int64))
        position = np.empty(self.frames, np.int64)  # frame index -> decode position
        position[self.rank] = np.arange(self.frames)
        send = np.zeros(self.frames, bool)
        g = np.searchsorted(self.gops, position[want], side="right") - 1  # GOP of each wanted frame
        for gop in np.unique(g):
            send[self.gops[gop]:position[want[g == gop]].max() + 1] = True
        return send


def packet_plan(path: Path) -> PacketPlan | None:
    """Demux (no decoding) and return the plan, or None when frames cannot be located from
    packets alone: a codec not known to restart at keyframes, a demuxing error, missing or
    repeated timestamps, a first packet that is not a keyframe shown first, or a packet small
    enough to decode to nothing."""
    import av

    container, stream = _open(path)
    codec = stream.codec_context.name
    if codec not in bitstream.RANDOM_ACCESS_CODECS and codec not in bitstream.IRAP_NAL_TYPES:
        container.close()
        return None
    length_size = bitstream.nal_length_size(codec, stream.codec_context.extradata)
    vpx = codec in ("vp8", "vp9")
    pts: list[int] = []
    key: list[bool] = []
    with container:
        try:
            for p in container.demux(stream):
                check_stop()
                if not p.size:
                    continue
                if p.pts is None or p.size < SMALL_PACKET:
                    return None
                data = bytes(p) if vpx or p.is_keyframe else b""  # only these packets are read
                if vpx and bitstream.vpx_shown_frames(data, codec) != 1:
                    return None  # an invisible (alt-ref) frame on its own decodes to no frame
                pts.append(int(p.pts))
                # the container's flag (an AVI index may flag every frame) and the bitstream must agree
                key.append(bool(p.is_keyframe) and bitstream.restarts_decoding(data, codec, length_size))
        except av.error.FFmpegError:
            return None
    return plan_of(pts, key)


def plan_of(pts: Sequence[int], key: Sequence[bool]) -> PacketPlan | None:
    """The plan for packets with these timestamps and keyframe flags (decode order), or None
    when the first packet is not a keyframe shown first or two packets share a timestamp."""
    if not len(pts) or not key[0]:
        return None
    ts = np.asarray(pts, np.int64)
    n = len(ts)
    order = np.argsort(ts, kind="stable")
    if np.any(np.diff(ts[order]) <= 0):
        return None
    rank = np.empty(n, np.int64)
    rank[order] = np.arange(n)
    # A GOP may start at keyframe a when the packets before it are exactly frames 0..a-1 and the
    # keyframe is frame a: nothing after it is shown before it (an open GOP's leading B-frames
    # are, and they need the GOP before: the two are then decoded as one).
    before = np.concatenate([[-1], np.maximum.accumulate(rank)[:-1]])
    starts = np.arange(n)
    gops = np.append(np.flatnonzero(np.asarray(key) & (rank == starts) & (before == starts - 1)), n)
    if gops[0] != 0:
        return None
    return PacketPlan(ts, rank, gops)


def scan_sparse(path: Path, plan: PacketPlan, wanted: Iterable[int], on_frame: Callable[[int, object], None],
                threads: int = 0) -> int | None:
    """Call on_frame(index, av.VideoFrame) for every wanted index, decoding only the GOPs that
    hold one, each from its keyframe to its last wanted packet. Returns how many packets were
    decoded, or None, having perhaps called on_frame for some indices, when a frame does not
    come back as the plan says (then decode everything with `scan`)."""
    import av

    want = sorted({int(k) for k in wanted})
    if not want or want[0] < 0 or want[-1] >= plan.frames:
        return None
    send_mask = plan.packets_for(want)
    expected = iter(np.sort(plan.rank[send_mask]).tolist())  # frames come back in display order
    shown_pts = np.sort(plan.pts).tolist()
    wanted_set = set(want)
    stop = int(np.flatnonzero(send_mask)[-1])
    send = send_mask[:stop + 1].tolist()  # plain lists: this loop runs once per packet

    def take(frames) -> bool:
        for f in frames:
            k = next(expected, None)
            if k is None or f.pts != shown_pts[k]:
                return False
            if k in wanted_set:
                on_frame(k, f)
        return True

    container, stream = _open(path)
    if threads:
        stream.codec_context.thread_count = threads
    with container:
        pos = 0
        try:
            for packet in container.demux(stream):
                check_stop()
                if not packet.size:
                    continue
                if pos > stop:
                    break
                if send[pos] and not take(stream.decode(packet)):
                    return None
                pos += 1
            if not take(stream.decode(None)):  # flush the frames the decoder still holds
                return None
        except av.error.FFmpegError as e:  # a packet that will not decode: let the full path judge
            logger.info("%s: partial decoding gave up (%s); decoding every frame", path, e)
            return None
    return int(send_mask.sum()) if next(expected, None) is None else None


def frame_rgb(frame) -> np.ndarray:
    """(H, W, 3) uint8 RGB of a decoded frame, rotated upright when the stream says so."""
    rgb = frame.to_ndarray(format="rgb24")
    rot = int(getattr(frame, "rotation", 0) or 0) % 360
    if rot:
        rgb = np.ascontiguousarray(np.rot90(rgb, k=rot // 90))
    return rgb


def decode_all(path: Path) -> np.ndarray:
    """Every frame as RGB, (n, H, W, 3). For tests and small files only: memory grows with n."""
    out: list[np.ndarray] = []
    scan(path, lambda k: True, lambda k, f: out.append(frame_rgb(f)))
    return np.stack(out)


def count_frames(path: Path) -> int:
    """Decode everything and count: the only count that is always right."""
    return scan(path, lambda k: False, lambda k, f: None)


def write_video(path: Path, frames, fps: float = 25, codec: str = "mpeg4",
                options: dict | None = None, pts: Iterable[int] | None = None,
                time_base: Fraction | None = None, bit_rate: int | None = None) -> Path:
    """Encode RGB frames, an (n, H, W, 3) uint8 array or any iterable of (H, W, 3) frames
    (streamed: a 10-minute video needs no 10 minutes of frames in memory), to a real video file.

    `pts` with `time_base` gives each frame its own timestamp (variable frame rate).
    The container comes from the suffix; `.avi` with mpeg4 is tagged XVID like UCF50's files.
    """
    import av

    path = Path(path)
    it = iter(frames)
    first = next(it)
    h, w = first.shape[:2]
    pts_iter = iter(pts) if pts is not None else None
    with av.open(str(path), mode="w") as out:
        rate = Fraction(fps).limit_denominator(1001) if not isinstance(fps, Fraction) else fps
        stream = out.add_stream(codec, rate=rate, options=options or {})
        stream.width, stream.height = w, h
        stream.pix_fmt = "yuv420p"
        if codec == "mpeg4" and path.suffix == ".avi":
            stream.codec_tag = "XVID"
        if bit_rate:
            stream.bit_rate = bit_rate
        if time_base is not None:
            stream.codec_context.time_base = time_base
            stream.time_base = time_base
        for img in _chain(first, it):
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            if pts_iter is not None:
                vf.pts = next(pts_iter)
                vf.time_base = time_base
            for packet in stream.encode(vf):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def _chain(first, rest):
    yield first
    yield from rest
