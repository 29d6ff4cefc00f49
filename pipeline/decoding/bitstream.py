"""Reading a few header bits of compressed video packets: which pictures decoding can start from
(MPEG-4 Part 2, MPEG-1/2, H.264, HEVC, VP8, VP9, MJPEG) and how many frames a VP8/VP9 packet
shows. Pure functions of bytes, no decoder: `video.packet_plan` uses them to decode only the
GOPs that hold a sampled frame. Tested on tables of hand-made packets (tests/pipeline/test_bitstream.py).
"""
from __future__ import annotations

# Codecs whose keyframes are points of random access: no frame after one (in decode order) refers
# to a frame before it, except leading frames shown before it, which the display ranks reveal.
# H.264 and HEVC only promise that of IDR / IRAP pictures, so their keyframe packets are read.
RANDOM_ACCESS_CODECS = ("mpeg4", "mpeg1video", "mpeg2video", "mjpeg", "vp8", "vp9")
IRAP_NAL_TYPES = {"h264": frozenset({5}), "hevc": frozenset(range(16, 22))}



def restarts_decoding(data: bytes, codec: str, length_size: int | None = None) -> bool:
    """Does this packet's bitstream say it is a picture that decoding can start from?
    MPEG-4 Part 2: an I-VOP; MPEG-1/2: an I-picture; VP8 / VP9: a key frame; H.264 / HEVC: an
    IDR / IRAP picture (an I-frame with a recovery point is not: later frames may refer past it);
    MJPEG: every picture."""
    if codec == "mjpeg":
        return True
    if codec in IRAP_NAL_TYPES:
        return not IRAP_NAL_TYPES[codec].isdisjoint(nal_types(data, codec, length_size))
    if codec == "mpeg4":
        i = data.find(b"\0\0\1\xb6")  # VOP start code, then vop_coding_type (2 bits)
        return 0 <= i < len(data) - 4 and data[i + 4] >> 6 == 0
    if codec in ("mpeg1video", "mpeg2video"):
        i = data.find(b"\0\0\1\0")  # picture start code, temporal_reference (10), coding type (3)
        return 0 <= i < len(data) - 5 and (data[i + 5] >> 3) & 7 == 1
    if codec == "vp8":
        return bool(data) and data[0] & 1 == 0  # frame tag: 0 = key frame
    if codec == "vp9":
        head = _vp9_header(data)
        if head is None:
            return False
        bits, at = head
        return not (bits >> (15 - at)) & 1 and not (bits >> (15 - at - 1)) & 1  # frame_type 0 = key
    return False


def _vp9_header(frame: bytes) -> tuple[int, int] | None:
    """A VP9 frame's first 16 bits and the bit position of show_existing_frame in them (after
    frame_marker and profile), or None when the frame marker is missing."""
    if len(frame) < 2 or frame[0] >> 6 != 2:
        return None
    bits = int.from_bytes(frame[:2], "big")
    profile = ((bits >> 13) & 1) | (((bits >> 12) & 1) << 1)
    return bits, 4 + (profile == 3)


def vpx_shown_frames(data: bytes, codec: str) -> int:
    """How many frames a VP8 / VP9 packet shows: 1 for an ordinary packet, 0 for an invisible
    frame stored on its own, 1 for a VP9 superframe of hidden frames plus a shown one."""
    if not data:
        return 0
    if codec == "vp8":
        return (data[0] >> 4) & 1  # frame tag: show_frame
    frames = [data]
    last = data[-1]
    if last & 0xE0 == 0xC0:  # VP9 superframe index: sizes of the frames packed in this packet
        count, width = (last & 7) + 1, ((last >> 3) & 3) + 1
        index = 2 + width * count
        if len(data) >= index and data[-index] == last:
            frames, pos = [], 0
            for i in range(count):
                size = int.from_bytes(data[-index + 1 + i * width:-index + 1 + (i + 1) * width], "little")
                frames.append(data[pos:pos + size])
                pos += size
    shown = 0
    for f in frames:
        head = _vp9_header(f)
        if head is None:
            continue
        bits, at = head
        if (bits >> (15 - at)) & 1:  # show_existing_frame
            shown += 1
        else:
            shown += (bits >> (15 - at - 2)) & 1  # after frame_type: show_frame
    return shown


def nal_length_size(codec: str, extradata: bytes | None) -> int | None:
    """Bytes of each NAL unit's length prefix (avcC / hvcC extradata, as in MP4 and Matroska),
    or None for Annex B start codes (AVI, MPEG-TS, raw streams)."""
    if not extradata or extradata[0] != 1:
        return None
    if codec == "h264" and len(extradata) > 4:
        return (extradata[4] & 3) + 1
    if codec == "hevc" and len(extradata) > 21:
        return (extradata[21] & 3) + 1
    return None


def nal_types(data: bytes, codec: str, length_size: int | None) -> list[int]:
    """The NAL unit types in one H.264 / HEVC packet (length-prefixed or Annex B)."""
    heads: list[int] = []
    if length_size is None or data[:3] == b"\0\0\1" or data[:4] == b"\0\0\0\1":
        i = data.find(b"\0\0\1")
        while 0 <= i < len(data) - 3:
            heads.append(data[i + 3])
            i = data.find(b"\0\0\1", i + 3)
    else:
        i = 0
        while i + length_size < len(data):
            n = int.from_bytes(data[i:i + length_size], "big")
            heads.append(data[i + length_size])
            i += length_size + n
    return [h & 0x1F if codec == "h264" else (h >> 1) & 0x3F for h in heads]
