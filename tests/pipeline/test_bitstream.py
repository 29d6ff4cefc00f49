"""Bitstream headers read without a decoder: tables of hand-made packets, one per case."""
import pytest

from pipeline.decoding import bitstream


def test_nal_unit_types_are_read_from_both_packagings():
    idr, sps = b"\x65\x88\x84", b"\x67\x64\x00"  # H.264 headers: IDR slice (5), SPS (7)
    annex_b = b"\x00\x00\x00\x01" + sps + b"\x00\x00\x01" + idr
    prefixed = len(sps).to_bytes(4, "big") + sps + len(idr).to_bytes(4, "big") + idr
    assert bitstream.nal_types(annex_b, "h264", None) == [7, 5]
    assert bitstream.nal_types(annex_b, "h264", 4) == [7, 5]  # start codes win over the avcC length size
    assert bitstream.nal_types(prefixed, "h264", 4) == [7, 5]
    cra = bytes([21 << 1, 1, 0])  # HEVC: CRA picture
    assert bitstream.nal_types(len(cra).to_bytes(4, "big") + cra, "hevc", 4) == [21]


@pytest.mark.parametrize("data, codec, shown", [
    (bytes([0b00010000, 0, 0]), "vp8", 1),          # show_frame set
    (bytes([0b00000000, 0, 0]), "vp8", 0),          # an invisible alt-ref frame
    (bytes([0x82, 0x00]), "vp9", 1),                # profile 0, show_frame
    (bytes([0x80, 0x00]), "vp9", 0),                # hidden
    (bytes([0x88, 0x00]), "vp9", 1),                # show_existing_frame
    (bytes([0x80, 0x00, 0x82, 0x00, 0xC1, 2, 2, 0xC1]), "vp9", 1),  # superframe: hidden + shown
    (bytes([0x80, 0x00, 0x80, 0x00, 0xC1, 2, 2, 0xC1]), "vp9", 0),  # superframe of hidden frames only
])
def test_vpx_shown_frames_table(data, codec, shown):
    assert bitstream.vpx_shown_frames(data, codec) == shown


@pytest.mark.parametrize("data, codec, restarts", [
    (b"\x00\x00\x01\xb6\x10", "mpeg4", True),               # I-VOP
    (b"\x00\x00\x01\xb6\x50", "mpeg4", False),              # P-VOP
    (b"\x00\x00\x01\x00\x00\x08", "mpeg2video", True),      # I-picture
    (b"\x00\x00\x01\x00\x00\x10", "mpeg2video", False),     # P-picture
    (bytes([0b00010000, 0, 0]), "vp8", True),
    (bytes([0b00010001, 0, 0]), "vp8", False),
    (bytes([0x82, 0x00]), "vp9", True),                     # frame_type 0
    (bytes([0x86, 0x00]), "vp9", False),                    # frame_type 1
    (b"\x00\x00\x00\x01\x65\x88", "h264", True),            # IDR slice
    (b"\x00\x00\x00\x01\x41\x9a", "h264", False),           # non-IDR slice (an I-frame with a recovery point looks so)
    (b"\x00\x00\x01\x2a\x01", "hevc", True),                # CRA
    (b"\x00\x00\x01\x02\x01", "hevc", False),               # TRAIL_R
    (b"\xff\xd8", "mjpeg", True),
])
def test_restarts_decoding_table(data, codec, restarts):
    assert bitstream.restarts_decoding(data, codec) is restarts




@pytest.mark.parametrize("extradata, codec, size", [
    (None, "h264", None),                                   # Annex B (AVI, MPEG-TS): start codes
    (b"\x01\x64\x00\x1f\xff", "h264", 4),                  # avcC: lengthSizeMinusOne = 3
    (b"\x01\x64\x00\x1f\xfd", "h264", 2),
    (bytes([1] + [0] * 20 + [0xFF]), "hevc", 4),            # hvcC: byte 21, low two bits
    (b"\x00\x00\x00\x01", "h264", None),                    # not avcC (Annex B in extradata)
])
def test_nal_length_size_table(extradata, codec, size):
    assert bitstream.nal_length_size(codec, extradata) == size
