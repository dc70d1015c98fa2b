"""Inter-frame LR codecs: the LR image coded as a video P-frame predicted from the reference (or,
where that costs more, as an intra frame).

Three codecs of the container's LR section, ``h264-inter``, ``hevc-inter`` and ``av1-inter``,
listed in :data:`refscale.format.codecs.CODECS` beside the still-image codecs. Unlike those, they need a
*reference at the LR's size* on both sides: the encoder codes a two-frame video, the reference
as frame 0 and the LR image as frame 1 (a P-frame), and the container keeps only what frame 1
adds. The receiver, which has the reference, re-encodes frame 0 exactly as the encoder did
(same library, same options, one thread), feeds that and the stored P-frame to the decoder and
takes frame 1. One mechanism covers two uses (issue 19):

* scale 1, the models ``inter-h264`` / ``inter-hevc`` / ``inter-av1`` (``refscale.models.inter``):
  the new image itself is the P-frame, predicted from the reference;
* any rescaler + ``--codec h264-inter`` (etc.): the LR is the P-frame, predicted from the
  reference brought to the LR's size (``refscale.pipeline.lr_reference``: the reference as the
  encoder was given it, reflect-padded like the image, MATLAB bicubic down in float64, rounded to
  8 bits; at scale 1 the 8-bit reference itself).

**Why PyAV.** Its wheels bundle FFmpeg with libx264, libx265, SVT-AV1 and dav1d (18.1.0 here), so
the mode needs no system package, and one API drives all three encoders and decoders. Pinned as
the ``inter`` extra (``av>=14,<19``; ``pip install 'refscale[inter]'``). The AV1 encoder in those
wheels is SVT-AV1, 4:2:0 only (libaom is not included); decoding AV1 uses libdav1d (FFmpeg's
native AV1 decoder needs a hardware accelerator).

**Colour.** RGB is converted to full-range BT.601 YCbCr (JPEG's matrix) in 16-bit fixed-point
integer arithmetic here (:func:`rgb_to_ycbcr`, :func:`ycbcr_to_rgb`), not by swscale, whose SIMD
paths may round differently on another CPU. H.264 and HEVC code 4:4:4; AV1 (SVT-AV1) 4:2:0, the
chroma averaged over 2x2 blocks (integer, rounded) and repeated back on decoding. The round trip
RGB -> YCbCr -> RGB alone costs about 50 dB (at most 2 levels), far below any lossy quality.
Frames are padded bottom/right by repeating the edge to a multiple of 2 (H.264) or of 8 and at
least 16 px (HEVC, AV1) and cropped back.

**Frame 0** is coded near-losslessly, deterministically: H.264 with ``zones=0,0,q=0`` (frame 0 at
QP 0), HEVC with ``ipratio=1024`` (the I-frame QP falls to 0, from payload version 5 to the QP
floor :data:`FRAME0_QP`; x265 ignores zones with CRF here), both reconstructing the reference
within one level of the YCbCr planes at QP 0 (at QP 12 about one on average, up to 10 on noise); SVT-AV1 can lower its
key frame only by ``key-frame-qindex-offset=-64`` (its limit), so AV1's frame 0 stays lossy and
AV1 saves fewer bits. All encoders run single-threaded (x265 from version 5: see below), without B-frames, lookahead, scene cuts
or temporal filtering; preset and tune per payload version (:data:`SETTINGS`: version 2, chosen
on the OSCD train pairs, uses x264/x265 ``slow`` with their default psy optimisations, which
saved bits there even for PSNR-Y, and SVT-AV1 preset 6). From payload version 5 x265 codes
frame 0 at QP :data:`FRAME0_QP` (a QP floor, ``qpmin``) and with wavefront parallel processing
on :data:`WPP_THREADS` threads (the bitstream is the same with 1, 2 or 4): less than half the
time to regenerate it, for the P-frame's bits docs/inter.md gives.
Across machines (tests/test_inter.py): x265's info SEI is off from payload version 2 on (it
records the CPU feature mask); with every library's assembly switched off (a CPU without SIMD)
the file is byte-identical and decodes to the same pixels, and golden hashes of a tiny pair pin
frame 0, the P-frame and the decoded image for the PyAV build they were recorded with.

**Quality.** refscale's ``quality`` 1..100 (``None`` = :data:`DEFAULT_QUALITY`) maps linearly
to the encoder's CRF: ``crf = round(51 * (100 - q) / 99)`` for x264/x265 (q=100 -> CRF 0, q=60
-> 21, q=1 -> 51), ``crf = 1 + round(62 * (100 - q) / 99)`` for SVT-AV1 (1..63). x264 codes the
P-frame and an intra frame alike about 5 QP above the CRF. x265 codes version 2's and 4's
P-frame about 7 QP above it and, from version 3 on, an intra frame at the CRF (version 3's
P-frame at the CRF too, so its HEVC default was 45, :data:`DEFAULT_QUALITY`). No setting is lossless (the colour conversion is not), so
:func:`refscale.format.codecs.is_lossless` is False.

**The LR section** of an inter codec (docs/format.md, "Inter-frame LR sections")::

    u8 payload version (5; 1 to 4 are read) | u8 CRF (version 4 on: + 128 for intra) | str8 encoder identity
        | u8 mode (version 3: 1 inter, 0 intra) | inter: 8 bytes frame-0 digest | the P-frame or the intra frame

**The mode** (issue 30). Where the reference predicts badly (much change, another season or
sensor, haze) a P-frame can cost more than coding the image alone, so a payload of version 3
records a mode byte: 1, the P-frame as before (frame 0's digest, then the P-frame); 0, an intra
frame: the image coded alone by the same encoder (at the same CRF, or at the CRF ``auto`` found
for HEVC from version 4 on, which the CRF byte then records), one key frame (x264's SEI with
its version and options dropped), which needs no frame 0, no digest and no reference to decode.
Versions 1 and 2 have no mode byte and are P-frames; version 4 has none either: bit 7 of its
CRF byte marks an intra frame, so its P-frame payload is exactly as long as version 2's. ``mode="auto"`` (the default,
:data:`DEFAULT_MODE`; the CLI's ``--inter-mode``) lets the encoder choose per image and quality
(:func:`choose`): the P-frame is coded first. HEVC from payload version 4 on decides at equal
quality (:func:`choose_equal_quality`; docs/inter.md, "Inter mode decision"): the intra frame at
the highest CRF whose Y MSE is not above the P-frame's is written where it is not larger (or,
one CRF step away, where the P-frame lies below the intra curve's chord: :func:`intra_beats_chord`),
else the P-frame (what ``inter`` writes), so every point is on the inter or the intra curve;
version 4's P-frame is version 2's. Otherwise the intra frame at the same CRF (x265: first at a
fast preset, and kept out where even the slow one could not win, :data:`FAST_PRESET`), and the
one with the lower ``J = D + lambda R`` is written (:func:`rd_cost`: ``D`` the Y plane's MSE, ``R`` bits per
pixel, ``lambda`` the reference encoders' Lagrangian at the CRF times a constant per codec,
:data:`LAMBDA`, calibrated on the OSCD train pairs); ``inter`` and ``intra`` force one. With a
size budget the quality search runs on the choice. Version 3's settings (:data:`SETTINGS`) make
"the same quality" mean about the same frame QP in both modes; they cost x265's P-frame bits,
which is why version 4 went back to version 2's P-frame and decides at measured equal quality.

The identity (``libx264;av-18.1.0;lavc-62.28.102``) names what wrote the file; the digest is the
first 8 bytes of the SHA-256 of frame 0's bitstream as the encoder produced it. The decoder
regenerates frame 0 and compares digests: a mismatch (another library build, a non-deterministic
encoder, or a reference at LR size computed differently) is refused with a one-line error naming
both builds, instead of decoding garbage. The encoder checks the same on its own machine before
writing (frame 0 re-encoded alone must equal frame 0 of the two-frame stream). With
``allow_other_reference`` the digest cannot match and is not checked (the P-frame is then
predicted from the other reference, e.g. a re-encoded copy of the archive image).

Regenerating frame 0 is much of the decoder's time (x265 ``slow`` at QP 0 on one thread, payload
versions 2-4: 7.0-8.7 s of a 1.26 Mpx Sentinel-2 city on an AVX2 EPYC, half the decode; version
5, QP 12 on two threads with WPP: 3.0-3.6 s), and it depends
only on the reference, the codec build and the payload version (HEVC: not on the CRF), so one
archive image serves every revisit: :data:`FIRST_FRAMES` keeps frame 0 per reference in memory
(bounded; the encoder's determinism check and a rate search reuse it too) and, where a folder is
set (:func:`use_first_frame_folder`, the environment variable ``REFSCALE_FRAME0_CACHE``, the CLI's
``decode --frame0-cache``), on disk across runs. A kept frame 0 is used only when its digest is the
one the payload records; otherwise it is regenerated.
"""
from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import struct
import time
import warnings
from dataclasses import dataclass
from fractions import Fraction
from typing import NamedTuple

import numpy as np

from refscale.errors import ContainerError, InputError

PAYLOAD_VERSION = 5  # written; every version in SETTINGS is read
#: what an inter payload may hold (payload version 3 on): ``auto`` chooses per image (:func:`choose`)
MODES = ("auto", "inter", "intra")
#: the mode written when none is given (``default_mode`` sets it for a block; the CLI's ``--inter-mode``)
DEFAULT_MODE = "auto"
#: the mode byte of payload version 3: 0 intra, 1 inter
MODE_BYTES = ("intra", "inter")
#: payload versions 4 and 5 have no mode byte: bit 7 of its CRF byte set marks an intra frame (so its
#: P-frame payload is exactly as long as version 2's)
INTRA_BIT = 0x80
#: the quality when none is given, per codec: 60, version 2's operating point (payload version 3
#: coded HEVC's P-frame at the CRF, some 7 QP below version 2's, and wrote 45 for about the same
#: QP; version 4's P-frame is version 2's again, and so is its default)
DEFAULT_QUALITY = {"h264-inter": 60, "hevc-inter": 60, "av1-inter": 60}
DIGEST_BYTES = 8
EXTRA_HINT = "pip install 'refscale[inter]'"


@dataclass(frozen=True)
class Spec:
    name: str  # refscale codec name
    encoder: str  # FFmpeg encoder
    decoder: str  # FFmpeg decoder
    chroma: int  # 444 or 420
    crf_min: int
    crf_max: int
    multiple: int  # frames are padded to a multiple of this
    min_side: int

    @property
    def pix_fmt(self) -> str:
        return "yuv444p" if self.chroma == 444 else "yuv420p"


SPECS: dict[str, Spec] = {
    "h264-inter": Spec("h264-inter", "libx264", "h264", 444, 0, 51, 2, 2),
    "hevc-inter": Spec("hevc-inter", "libx265", "hevc", 444, 0, 51, 8, 16),
    "av1-inter": Spec("av1-inter", "libsvtav1", "libdav1d", 420, 1, 63, 8, 16),
}


#: preset and tune of each codec by payload version (the decoder regenerates frame 0 with the
#: version its file records). Version 2 also turns off x265's info SEI (``info=0``): that SEI
#: carries the encoder's CPU feature mask (``cpuid=``), so frame 0's bitstream, and with it the
#: digest, depended on the CPU (a version-1 HEVC file decodes only where x265 reports the same
#: mask). ``tune`` "none": the encoder's default (psy optimisations and adaptive quantisation on);
#: "nopsy": the default with the psy optimisations off (AQ on). ``wpp`` "yes" (version 5, x265):
#: wavefront parallel processing on :data:`WPP_THREADS` threads instead of none.
SETTINGS: dict[int, dict[str, dict[str, str]]] = {
    1: {"h264-inter": {"preset": "medium", "tune": "psnr"},
        "hevc-inter": {"preset": "medium", "tune": "psnr"},
        "av1-inter": {"preset": "8", "tune": "none"}},  # SVT-AV1's default tune is 1 (PSNR)
}
#: Version 2's presets and tunes won the sweep on the OSCD train pairs (docs/inter.md, "Encoder
#: settings"): fewer P-frame bits for the same PSNR-Y, for 2-4x the encoding time.
SETTINGS[2] = {"h264-inter": {"preset": "slow", "tune": "none"},
               "hevc-inter": {"preset": "slow", "tune": "none"},
               "av1-inter": {"preset": "6", "tune": "none"}}
#: Version 3 (issue 30) adds intra payloads. HEVC gives both modes the same frame QP at the same
#: quality: ``qcomp=0.99`` (the frame QP is the CRF, not raised by about 7 for a P-frame whose
#: residual is complex, as with the default 0.6; at exactly 1 x265 ignores ``ipratio``, so frame 0
#: would no longer be near-lossless) and, for an intra frame (``intra``, added when frame 0 is not
#: boosted), no I/P QP ratio (``ipratio=1``; SVT-AV1: the key frame at the CRF's qindex). x265's
#: cu-tree is off (``cutree=0``): without lookahead it has nothing to propagate, and with
#: ``qcomp=0.99`` it made the P-frame differ between runs of one process (3 bitstreams in 8 runs of
#: a 64 px OSCD crop at CRF 38; none in 16 without it). H.264 keeps version 2's settings for both
#: frames (the P-frame, and frame 0, bit for bit): x264 already codes the P-frame and an intra
#: frame at the same QP (about 5.4 above the CRF), and with ``qcomp=0.99`` its P-frame needed 0.6 %
#: more bits (median, up to 1.9 %) at one dense CRF sweep on the 24 OSCD pairs both ways.
SETTINGS[3] = {"h264-inter": dict(SETTINGS[2]["h264-inter"]),
               "hevc-inter": {**SETTINGS[2]["hevc-inter"], "params": "qcomp=0.99:cutree=0", "intra": "ipratio=1"},
               "av1-inter": {**SETTINGS[2]["av1-inter"], "intra": "use-fixed-qindex-offsets=1:key-frame-qindex-offset=0"}}
#: Version 4 (HEVC): the P-frame and frame 0 are version 2's again (``qcomp=0.99`` cost the P-frame
#: bits: median +0.11 %, up to +1.52 %, at a dense CRF sweep on the 48 OSCD images), the intra frame
#: keeps version 3's settings (its frame QP is the CRF), and ``auto`` decides at equal quality
#: (:func:`choose`, :data:`EQUAL_QUALITY`), so one CRF need not mean one QP in both modes. H.264
#: and AV1 are version 3.
SETTINGS[4] = {"h264-inter": dict(SETTINGS[3]["h264-inter"]),
               "hevc-inter": {**SETTINGS[2]["hevc-inter"], "intra": "qcomp=0.99:cutree=0:ipratio=1"},
               "av1-inter": dict(SETTINGS[3]["av1-inter"])}
#: Version 5 (HEVC; issue 27's decoding speed): regenerating frame 0 was half the decoder's time
#: (x265 ``slow`` at QP 0, one thread: 7.0-8.7 s of a 17 s decode of a 1.26 Mpx city on an AVX2
#: EPYC). Two changes, to frame 0 and the P-frame alike (one x265 session codes both): wavefront
#: parallel processing on a pool of :data:`WPP_THREADS` threads (``wpp``), whose bitstream does not
#: depend on the pool's size or the scheduling (one bitstream with 1, 2 and 4 threads, under load
#: and pinned to one core; tests/test_inter.py repeats 1, 2, 4 twice), and a QP floor (``qpmin``
#: :data:`FRAME0_QP`), which puts frame 0 at that QP instead of 0 (still whatever the CRF, so one
#: frame 0 serves every quality) and floors the P-frame's and the intra frame's QP there too
#: (qualities above about 80 are capped: about 50 dB PSNR-Y on OSCD crops). Frame 0 then takes
#: 3.0-3.6 s; the P-frame needs 1.4% more bits at equal PSNR-Y (mean curve of the 28 OSCD train
#: crops, docs/inter.md, "Payload version 5"; WPP alone 1.1%). H.264 and AV1 are version 4 (3).
FRAME0_QP = 12
WPP_THREADS = 2
SETTINGS[5] = {"h264-inter": dict(SETTINGS[4]["h264-inter"]),
               "hevc-inter": {**SETTINGS[4]["hevc-inter"], "wpp": "yes", "params": f"qpmin={FRAME0_QP}"},
               "av1-inter": dict(SETTINGS[4]["av1-inter"])}
#: the Lagrange multiplier's constant of :func:`rd_cost` per codec, calibrated on the OSCD train
#: pairs (docs/inter.md, "Inter mode decision"). HEVC: HM's own (0.57), as good from 0.7 to 1.2
#: times it. H.264: with version 2's settings x264 codes the P-frame and the intra frame at the
#: same QP, about 5.4 above the CRF (its first-pass statistics), so the Lagrangian at the CRF is
#: scaled: 2.0 (2.4 times JM's 0.85; 1.6 to 3 times gave the same decisions' quality; JM's at the
#: frame QP would be 3.5 times). AV1 (the CRF scaled to H.264's QP range): the best single
#: constant on the train pairs, 3.5 times HEVC's
LAMBDA = {"h264-inter": 2.0, "hevc-inter": 0.57, "av1-inter": 2.0}
#: the fast first pass of ``auto`` (:func:`choose`): the intra frame's encoder preset (None: the
#: real intra frame is cheap enough: an eighth of the P-frame's time with x264, under half with
#: SVT-AV1, against a quarter with x265), and the log ratio of its cost to the P-frame's beyond
#: which the P-frame is kept without coding the intra frame with the real settings (x265
#: ``ultrafast`` against ``slow``: at most 0.146 on the train pairs)
FAST_PRESET = {"h264-inter": None, "hevc-inter": "ultrafast", "av1-inter": None}
FAST_MARGIN = 0.2
#: codec -> the payload version from which ``auto`` decides at equal quality (:func:`choose`): the
#: P-frame at the CRF, then the intra frame at the highest CRF whose Y MSE is not above the
#: P-frame's, kept only where it is not larger. Elsewhere ``auto`` compares ``J = D + lambda R`` at
#: the same CRF (:func:`rd_cost`).
EQUAL_QUALITY = {"hevc-inter": 4}
#: the equal-quality search's first intra CRF: the P-frame's CRF plus this (x265's P-frame QP is
#: about 7 above the CRF with version 2's settings, its intra frame's the CRF; on the OSCD train
#: pairs the ``ultrafast`` intra frame's equal-quality CRF was the P-frame's plus 5, median, -9 to +9)
INTRA_OFFSET = 5
#: the equal-quality fast pass: where the ``ultrafast`` intra frame at equal quality is larger than
#: the P-frame by a log ratio above this, the P-frame is kept without a ``slow`` intra frame. On the
#: OSCD train pairs (centre 320 px, both ways, P-frame CRF 46 to 6, 168 points) the ``slow`` intra
#: frame at equal quality was at most 0.306 smaller (log ratio, median 0.137; the integer CRF steps
#: included): with 0.4 the P-frame was kept at once at 114 points, never wrongly (docs/inter.md)
FAST_RATE_MARGIN = 0.4


def crf_for(name: str, quality: int | None) -> int:
    """The encoder's CRF for refscale ``quality`` 1..100 (``None``: :data:`DEFAULT_QUALITY`)."""
    s = SPECS[name]
    q = DEFAULT_QUALITY[name] if quality is None else int(quality)
    return s.crf_min + round((s.crf_max - s.crf_min) * (100 - q) / 99)


def _options(s: Spec, crf: int, boost_first: bool = True, version: int = PAYLOAD_VERSION,
             settings: dict[str, str] | None = None) -> dict[str, str]:
    """Encoder options: deterministic (one thread), low delay (no B-frames, lookahead, scene cuts),
    preset, tune and extra encoder parameters (``params``) of :data:`SETTINGS` for payload
    ``version`` (``settings`` overrides them: the tuning sweeps), frame 0 near-lossless (see module
    doc); ``boost_first=False``: frame 0 at the CRF like any other, with the version's ``intra``
    parameters (an intra payload)."""
    st = {**SETTINGS[version][s.name], **(settings or {})}
    tune = {"tune": st["tune"]} if st["tune"] not in ("none", "nopsy") else {}
    extra = "".join(":" + st[k] for k in ("params",) + (() if boost_first else ("intra",)) if st.get(k))
    if s.encoder == "libx264":
        return {"preset": st["preset"], **tune, "crf": str(crf),
                "x264-params": ("zones=0,0,q=0:" if boost_first else "") + ("psy=0:" if st["tune"] == "nopsy" else "") +
                               "keyint=infinite:scenecut=0:bframes=0:rc-lookahead=0:sync-lookahead=0:threads=1:sliced-threads=0" + extra}
    if s.encoder == "libx265":
        return {"preset": st["preset"], **tune, "crf": str(crf),
                "x265-params": ("ipratio=1024:" if boost_first else "") + ("info=0:" if version >= 2 else "") +
                               ("psy-rd=0:psy-rdoq=0:" if st["tune"] == "nopsy" else "") +
                               "keyint=250:scenecut=0:bframes=0:rc-lookahead=0:frame-threads=1:" +
                               (f"pools={WPP_THREADS}:wpp=1" if st.get("wpp") == "yes" else "pools=none:wpp=0") + ":log-level=none" + extra}
    return {"preset": st["preset"], "crf": str(crf),
            "svtav1-params": "pred-struct=1:scd=0:lp=1:keyint=250:enable-tf=0:enable-overlays=0" +
                             (f":tune={st['tune']}" if tune else "") +
                             (":use-fixed-qindex-offsets=1:key-frame-qindex-offset=-64" if boost_first else "") + extra}


# ----------------------------------------------------------------------------- PyAV
def _av():
    try:
        import av  # noqa: PLC0415 - optional dependency, imported on use
    except ImportError:
        raise InputError(f"the inter-frame codecs need PyAV, which is not installed ({EXTRA_HINT})") from None
    return av


def available(name: str) -> bool:
    """True when PyAV is installed and has this codec's encoder and decoder (no encoding is run,
    so ``refscale --help`` stays fast)."""
    try:
        av = _av()
        s = SPECS[name]
        av.Codec(s.encoder, "w")
        av.Codec(s.decoder, "r")
        return True
    except Exception:  # noqa: BLE001 - any failure means "not usable here"
        return False


def missing_reason(name: str) -> str:
    """Why :func:`available` is False, for the one-line error."""
    try:
        av = _av()
    except InputError as e:
        return str(e)
    s = SPECS[name]
    return f"this PyAV {av.__version__} has no {s.encoder} encoder or {s.decoder} decoder ({EXTRA_HINT} installs a build with both)"


def identity(name: str) -> str:
    """What encodes here: ``<encoder>;av-<PyAV version>;lavc-<libavcodec version>``."""
    av = _av()
    lavc = ".".join(str(v) for v in av.library_versions.get("libavcodec", ()))
    return f"{SPECS[name].encoder};av-{av.__version__};lavc-{lavc}"


def _quiet_svt() -> None:
    import os

    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its banner on stderr otherwise (errors only)


def encode_frames(s: Spec, crf: int, frames: list[np.ndarray], boost_first: bool = True, version: int = PAYLOAD_VERSION,
                   settings: dict[str, str] | None = None) -> list[bytes]:
    """Code ``frames`` (planes of :func:`to_planes`) as one stream with the codec of ``s`` at
    ``crf`` (the payload ``version``'s settings, ``settings`` overriding them; ``boost_first``:
    frame 0 at a better quality than the rest): the packets, one per frame, in coding order."""
    av = _av()
    if s.encoder == "libsvtav1":
        _quiet_svt()
    h, w = _frame_size(s, frames[0])
    cc = av.CodecContext.create(s.encoder, "w")
    cc.width, cc.height, cc.pix_fmt = w, h, s.pix_fmt
    cc.time_base = Fraction(1, 25)
    cc.thread_count = 1
    cc.options = _options(s, crf, boost_first, version, settings)
    packets: list[bytes] = []
    for i, f in enumerate(frames):
        vf = av.VideoFrame.from_ndarray(f, format=s.pix_fmt)
        vf.pts = i
        packets += [bytes(p) for p in cc.encode(vf)]
    packets += [bytes(p) for p in cc.encode(None)]
    return packets


def decode_frames(s: Spec, packets: list[bytes], size: tuple[int, int]) -> list[np.ndarray]:
    """Decode the ``packets`` of one stream of the codec of ``s`` to their frames' planes; each must
    be ``size`` (the padded ``(height, width)`` of :func:`padded_size`) in the codec's pixel
    format, else :class:`~refscale.errors.ContainerError`."""
    av = _av()
    dc = av.CodecContext.create(s.decoder, "r")
    dc.thread_count = 1
    frames = []
    for p in packets:
        frames += dc.decode(av.Packet(p))
    frames += dc.decode(None)
    out = []
    for f in frames:
        if (f.height, f.width) != size:
            raise ContainerError(f"{s.name} P-frame decoded to {f.width}x{f.height}, expected {size[1]}x{size[0]} (width x height)")
        if f.format.name not in (s.pix_fmt, s.pix_fmt.replace("yuv", "yuvj")):
            raise ContainerError(f"{s.name} P-frame decoded to pixel format {f.format.name}, expected {s.pix_fmt}")
        out.append(np.ascontiguousarray(f.to_ndarray()))
    return out


def _frame_size(s: Spec, planes: np.ndarray) -> tuple[int, int]:
    return (planes.shape[1], planes.shape[2]) if s.chroma == 444 else (planes.shape[0] * 2 // 3, planes.shape[1])


#: the codecs whose frame 0 does not depend on the CRF (x265 with ``ipratio=1024`` codes it at QP 0
#: whatever the CRF; x264's and SVT-AV1's differ by CRF): one kept frame 0 serves every quality
FRAME0_CRF_FREE = frozenset({"hevc-inter"})
#: the environment variable naming the folder that keeps frame 0 across runs (:class:`FirstFrames`)
FRAME0_CACHE_ENV = "REFSCALE_FRAME0_CACHE"


class FirstFrames:
    """Frame 0's packet per (codec build, payload version, settings, reference planes): kept in
    memory (least recently used first out beyond ``max_bytes``) and, with a ``folder``, in one file
    per key there (written atomically; a file that does not hold what its key promises is caught by
    the payload's digest and replaced). The folder is kept under ``folder_max_bytes``: a file
    used is touched, and after a write the least recently used files go first (at about 1.5
    bytes per LR pixel, the default 1 GiB keeps some 600 Sentinel-2 tiles' frames 0)."""

    def __init__(self, folder: str | os.PathLike | None = None, max_bytes: int = 256 << 20,
                 folder_max_bytes: int = 1 << 30):
        self.folder, self.max_bytes, self.folder_max_bytes = folder, int(max_bytes), int(folder_max_bytes)
        self._memory: dict[str, bytes] = {}
        self.regenerated = 0  # frames 0 coded here (the tests count them)

    def key(self, s: Spec, crf: int, planes: np.ndarray, version: int) -> str:
        free = s.name in FRAME0_CRF_FREE and version >= 2  # version 1's info SEI records the CRF
        opts = _options(s, 0 if free else crf, True, version)
        h = hashlib.sha256(f"{identity(s.name)}|{version}|{sorted(opts.items())}|{planes.shape}|{planes.dtype}".encode())
        h.update(np.ascontiguousarray(planes).data)
        return h.hexdigest()

    def packet(self, s: Spec, crf: int, planes: np.ndarray, version: int, digest: bytes | None = None) -> bytes:
        """Frame 0 coded alone (as :func:`encode_frames` would); with ``digest``, a kept packet
        whose digest differs is not used."""
        key = self.key(s, crf, planes, version)
        kept = self._memory.pop(key, None)
        if kept is not None:
            self._touch(key)  # used: its file (with a folder) is pruned last
        else:
            kept = self._read(key)
        if kept is None or (digest is not None and _digest(kept) != digest):
            f0 = encode_frames(s, crf, [planes], version=version)
            if len(f0) != 1:
                raise ContainerError(f"{s.encoder} produced {len(f0)} packets for frame 0")
            kept = f0[0]
            self.regenerated += 1
            self._write(key, kept)
        self._memory[key] = kept
        while sum(map(len, self._memory.values())) > self.max_bytes and len(self._memory) > 1:
            self._memory.pop(next(iter(self._memory)))
        return kept

    def _folder(self) -> str | None:
        return os.fspath(self.folder) if self.folder is not None else os.environ.get(FRAME0_CACHE_ENV) or None

    def _read(self, key: str) -> bytes | None:
        folder = self._folder()
        if folder is None:
            return None
        try:
            with open(os.path.join(folder, key + ".frame0"), "rb") as f:
                data = f.read()
        except OSError:
            return None
        self._touch(key)
        return data

    def _touch(self, key: str) -> None:
        folder = self._folder()
        if folder is not None:
            with contextlib.suppress(OSError):
                os.utime(os.path.join(folder, key + ".frame0"))

    def _write(self, key: str, data: bytes) -> None:
        folder = self._folder()
        if folder is None:
            return
        path = os.path.join(folder, key + ".frame0")
        tmp = f"{path}.{os.getpid()}.tmp"
        try:
            os.makedirs(folder, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        except OSError as e:  # a cache that cannot be written costs time, not the result
            with contextlib.suppress(OSError):
                os.remove(tmp)
            warnings.warn(f"frame 0 not kept in {folder}: {e.strerror or e}")
            return
        self._prune(folder, keep=path)

    def _prune(self, folder: str, keep: str) -> None:
        """Remove the least recently used ``*.frame0`` files until the folder holds at most
        ``folder_max_bytes`` of them (``keep``, the file just written, stays), and temporaries
        older than an hour (a writer that was killed)."""
        files = []
        with contextlib.suppress(OSError), os.scandir(folder) as entries:
            for entry in entries:
                try:
                    st = entry.stat()
                except OSError:  # removed meanwhile by another process
                    continue
                if entry.name.endswith(".frame0"):
                    files.append((st.st_mtime, st.st_size, entry.path))
                elif entry.name.endswith(".tmp") and st.st_mtime < time.time() - 3600:
                    with contextlib.suppress(OSError):
                        os.remove(entry.path)
        total = sum(size for _, size, _ in files)
        for _, size, path in sorted(files):
            if total <= self.folder_max_bytes:
                break
            if path != keep:
                with contextlib.suppress(OSError):
                    os.remove(path)
                    total -= size


#: the process's frame-0 cache (module doc)
FIRST_FRAMES = FirstFrames()


def use_first_frame_folder(folder: str | os.PathLike | None) -> None:
    """Keep frame 0 in ``folder`` across runs (None: only in memory, or the folder of
    ``REFSCALE_FRAME0_CACHE``)."""
    FIRST_FRAMES.folder = folder


def _digest(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()[:DIGEST_BYTES]


# ----------------------------------------------------------------------------- colour and planes
def rgb_to_ycbcr(rgb: np.ndarray) -> np.ndarray:
    """uint8 ``[h, w, 3]`` RGB -> uint8 ``[3, h, w]`` full-range BT.601 YCbCr, 16-bit fixed point."""
    r, g, b = (rgb[..., i].astype(np.int32) for i in range(3))
    y = (19595 * r + 38470 * g + 7471 * b + 32768) >> 16
    cb = (-11059 * r - 21709 * g + 32768 * b + (128 << 16) + 32768) >> 16
    cr = (32768 * r - 27439 * g - 5329 * b + (128 << 16) + 32768) >> 16
    return np.clip(np.stack([y, cb, cr]), 0, 255).astype(np.uint8)


def ycbcr_to_rgb(ycc: np.ndarray) -> np.ndarray:
    """Inverse of :func:`rgb_to_ycbcr` (rounded, clipped): uint8 ``[3, h, w]`` -> uint8 ``[h, w, 3]``."""
    y, cb, cr = (ycc[i].astype(np.int32) for i in range(3))
    cb, cr = cb - 128, cr - 128
    r = y + ((91881 * cr + 32768) >> 16)
    g = y + ((-22554 * cb - 46802 * cr + 32768) >> 16)
    b = y + ((116130 * cb + 32768) >> 16)
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


def padded_size(s: Spec, h: int, w: int) -> tuple[int, int]:
    """The ``(height, width)`` an ``h`` x ``w`` image is coded at by the codec of ``s``: each side
    rounded up to the codec's multiple and at least its smallest side."""
    def up(n):
        return max(-(-n // s.multiple) * s.multiple, s.min_side)

    return up(h), up(w)


def to_planes(s: Spec, rgb: np.ndarray) -> np.ndarray:
    """The frame the encoder is given: padded (edge), YCbCr, 4:4:4 ``[3,H,W]`` or 4:2:0 packed ``[H*3/2, W]``."""
    h, w = rgb.shape[:2]
    ph, pw = padded_size(s, h, w)
    ycc = rgb_to_ycbcr(np.pad(rgb, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge"))
    if s.chroma == 444:
        return np.ascontiguousarray(ycc)
    c = ycc[1:].astype(np.int32).reshape(2, ph // 2, 2, pw // 2, 2).sum(axis=(2, 4))
    c = ((c + 2) >> 2).astype(np.uint8)
    return np.ascontiguousarray(np.concatenate([ycc[0].ravel(), c[0].ravel(), c[1].ravel()]).reshape(ph * 3 // 2, pw))


def from_planes(s: Spec, planes: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Inverse of :func:`to_planes` (chroma repeated 2x2 for 4:2:0), cropped to ``size``: uint8 ``[h, w, 3]``."""
    if s.chroma == 444:
        ycc = planes
    else:
        ph, pw = planes.shape[0] * 2 // 3, planes.shape[1]
        flat = planes.reshape(-1)
        y = flat[:ph * pw].reshape(ph, pw)
        n = (ph // 2) * (pw // 2)
        cb = flat[ph * pw:ph * pw + n].reshape(ph // 2, pw // 2).repeat(2, 0).repeat(2, 1)
        cr = flat[ph * pw + n:ph * pw + 2 * n].reshape(ph // 2, pw // 2).repeat(2, 0).repeat(2, 1)
        ycc = np.stack([y, cb, cr])
    return np.ascontiguousarray(ycbcr_to_rgb(ycc)[:size[0], :size[1]])


# ----------------------------------------------------------------------------- the codec
def _check_ref(name: str, ref, shape: tuple[int, ...]) -> np.ndarray:
    if ref is None:
        raise InputError(f"codec {name} predicts from the reference: it needs the reference at the LR size")
    ref = np.asarray(ref)
    if ref.dtype != np.uint8 or ref.shape != tuple(shape):
        raise InputError(f"codec {name}: the reference at LR size is {ref.dtype} {list(ref.shape)}, expected uint8 {list(shape)}")
    return np.ascontiguousarray(ref)


def first_frame(name: str, ref: np.ndarray, quality: int | None = None, crf: int | None = None) -> tuple[bytes, np.ndarray]:
    """Frame 0 as the decoder regenerates it: ``(bitstream, reconstruction uint8 [h, w, 3])``."""
    s = SPECS[name]
    ref = _check_ref(name, ref, np.shape(ref))
    crf = crf_for(name, quality) if crf is None else crf
    packets = encode_frames(s, crf, [to_planes(s, ref)])
    if len(packets) != 1:
        raise InputError(f"{s.encoder} produced {len(packets)} packets for one frame")
    frames = decode_frames(s, packets, padded_size(s, *ref.shape[:2]))
    return packets[0], from_planes(s, frames[0], ref.shape[:2])


def intra(name: str, arr: np.ndarray, quality: int | None = None) -> tuple[int, np.ndarray]:
    """``arr`` coded intra-only by the same encoder at the same quality, as an intra payload holds
    it: ``(bytes, reconstruction uint8 [h, w, 3])``."""
    s = SPECS[name]
    arr = np.ascontiguousarray(arr)
    packets = code_candidate(s, crf_for(name, quality), "intra", to_planes(s, arr), None, PAYLOAD_VERSION)
    frames = decode_frames(s, packets, padded_size(s, *arr.shape[:2]))
    return sum(len(p) for p in packets), from_planes(s, frames[0], arr.shape[:2])


def intra_size(name: str, arr: np.ndarray, quality: int | None = None) -> int:
    """Bytes of :func:`intra` (the intra-only baseline)."""
    return intra(name, arr, quality)[0]


# ----------------------------------------------------------------------------- the mode decision
def check_mode(mode: str) -> str:
    """``mode`` if it is one of :data:`MODES`, else a one-line :class:`InputError`."""
    if mode not in MODES:
        raise InputError(f"inter mode must be one of {', '.join(MODES)}, got {mode!r}")
    return mode


@contextlib.contextmanager
def default_mode(mode: str):
    """``with default_mode("intra"): packet.to_bytes(...)``: the mode of every inter payload written
    inside (:data:`DEFAULT_MODE` otherwise; the CLI's ``--inter-mode``)."""
    global DEFAULT_MODE
    old, DEFAULT_MODE = DEFAULT_MODE, check_mode(mode)
    try:
        yield
    finally:
        DEFAULT_MODE = old


def luma_mse(s: Spec, planes: np.ndarray, coded: np.ndarray, size: tuple[int, int]) -> float:
    """Mean squared error of the full-range Y plane over the image (``size``; padding left out)."""
    def luma(p):  # 4:4:4 [3, H, W]; 4:2:0 packed [H * 3/2, W], Y in the first H rows
        return (p[0] if s.chroma == 444 else p)[:size[0], :size[1]].astype(np.float64)

    return float(np.mean((luma(planes) - luma(coded)) ** 2))


def rd_cost(name: str, crf: int, mse: float, bpp: float, scale: float = 1.0) -> float:
    """``J = D + lambda R`` of a coded frame: Y MSE plus :data:`LAMBDA` ``* 2^((qp - 12) / 3)`` (the
    H.264 / HEVC reference encoders' Lagrangian at that QP) times bits per pixel; ``qp`` is the CRF
    (x265's frame QP in payload version 3; x264's is about 5.4 above it, which the constant
    absorbs), for AV1 scaled to H.264's range (``crf * 51 / 63``)."""
    s = SPECS[name]
    qp = crf if s.crf_max == 51 else crf * 51 / 63
    return mse + scale * LAMBDA[name] * 2.0 ** ((qp - 12) / 3) * bpp


def code_candidate(s: Spec, crf: int, mode: str, new: np.ndarray, f0: np.ndarray | None, version: int,
                   settings: dict[str, str] | None = None) -> list[bytes]:
    """The packets of one candidate of the mode decision (:func:`choose`): ``mode`` "inter"
    codes ``[f0, new]`` (frame 0, P-frame), "intra" ``new`` alone as an I-frame (x264's without
    its SEI, which names the encoder's version)."""
    if mode == "inter":
        packets = encode_frames(s, crf, [f0, new], version=version, settings=settings)
        if len(packets) != 2:
            raise InputError(f"{s.encoder} produced {len(packets)} packets for two frames, expected 2")
        return packets
    packets = encode_frames(s, crf, [new], boost_first=False, version=version, settings=settings)
    if len(packets) != 1:
        raise InputError(f"{s.encoder} produced {len(packets)} packets for one frame, expected 1")
    return [_drop_sei(packets[0])] if s.encoder == "libx264" else packets


def _drop_sei(frame: bytes) -> bytes:
    """An H.264 access unit (Annex B) without its SEI NAL units: x264 writes its version and every
    option there (about 600 bytes), which no decoder needs."""
    starts = [m.start() for m in re.finditer(b"\x00\x00\x01", frame)]
    cuts = [st - 1 if st and frame[st - 1] == 0 else st for st in starts] + [len(frame)]  # a 4-byte start code
    return frame[:cuts[0]] + b"".join(frame[cuts[i]:cuts[i + 1]] for i, st in enumerate(starts)
                                      if st + 3 >= len(frame) or frame[st + 3] & 0x1F != 6)


def _cost(s: Spec, crf: int, packets: list[bytes], new: np.ndarray, size: tuple[int, int]) -> float:
    coded = decode_frames(s, packets, padded_size(s, *size))[-1]
    return rd_cost(s.name, crf, luma_mse(s, new, coded, size), len(packets[-1]) * 8 / (size[0] * size[1]))


class Choice(NamedTuple):
    """What :func:`choose` decided: the mode, its packets, the CRF they were coded at (an intra
    frame's own with the equal-quality decision), and how it was decided."""

    mode: str
    packets: list[bytes]
    crf: int
    how: str


def choose(s: Spec, crf: int, new: np.ndarray, f0: np.ndarray, size: tuple[int, int], version: int = PAYLOAD_VERSION) -> Choice:
    """The ``auto`` decision. The P-frame is coded first. From the payload version of
    :data:`EQUAL_QUALITY` on: :func:`choose_equal_quality`. Before (and for the other codecs): the
    intra frame at the same CRF, first with the fast preset of :data:`FAST_PRESET`: where that
    costs (:func:`rd_cost`) more than the P-frame by a log ratio above :data:`FAST_MARGIN` (more
    than the real settings ever gained over the fast ones on the train pairs) the P-frame is kept;
    otherwise the intra frame is coded with the real settings and the cheaper of the two kept."""
    pframe = code_candidate(s, crf, "inter", new, f0, version)
    if version >= EQUAL_QUALITY.get(s.name, PAYLOAD_VERSION + 1):
        return choose_equal_quality(s, crf, pframe, new, size, version)
    j_inter = _cost(s, crf, pframe, new, size)
    fast = FAST_PRESET.get(s.name)
    if fast is not None:
        j_fast = _cost(s, crf, code_candidate(s, crf, "intra", new, None, version, {"preset": fast}), new, size)
        if math.log(j_fast / j_inter) > FAST_MARGIN:
            return Choice("inter", pframe, crf, "fast pass")
    iframe = code_candidate(s, crf, "intra", new, None, version)
    if j_inter <= _cost(s, crf, iframe, new, size):
        return Choice("inter", pframe, crf, "both coded")
    return Choice("intra", iframe, crf, "both coded")


def choose_equal_quality(s: Spec, crf: int, pframe: list[bytes], new: np.ndarray, size: tuple[int, int], version: int) -> Choice:
    """``auto`` at equal quality (docs/inter.md, "Inter mode decision"): the intra frame at the
    highest CRF whose Y MSE (:func:`luma_mse`) is not above the P-frame's is written where it is
    not larger than the P-frame (it has the better or equal quality for fewer or equal bits); where
    it is larger, but the P-frame lies below the intra curve's chord to the next CRF
    (:func:`intra_beats_chord`: intra wins by less than one CRF step of bits), the nearer of the
    two intra frames in bytes; else the P-frame, which is then exactly what ``inter`` writes. The
    CRF is searched first with the
    fast preset (:data:`FAST_PRESET`, from the P-frame's CRF plus :data:`INTRA_OFFSET`); where its
    intra frame is larger than the P-frame by a log ratio above :data:`FAST_RATE_MARGIN` the
    P-frame is kept at once ("fast pass"), otherwise the search goes on with the real preset from
    the fast one's CRF (usually 1 to 3 encodes)."""
    limit = len(pframe[1])
    target = luma_mse(s, new, decode_frames(s, pframe, padded_size(s, *size))[-1], size)
    fast = FAST_PRESET.get(s.name)
    start = crf + INTRA_OFFSET
    if fast is not None:
        found = intra_at_quality(s, new, size, target, start, version, limit * math.exp(FAST_RATE_MARGIN), fast)
        if found is None or math.log(len(found[1][0]) / limit) > FAST_RATE_MARGIN:
            return Choice("inter", pframe, crf, "fast pass")
        start = found[0]
    tried: dict[int, tuple[float, list[bytes]]] = {}  # the real preset's intra frames: CRF -> (Y MSE, packets)
    found = intra_at_quality(s, new, size, target, start, version, limit, tried=tried)
    if found is None:
        return Choice("inter", pframe, crf, "equal quality")
    c, packets = found
    if len(packets[0]) <= limit:
        return Choice("intra", packets, c, "equal quality")
    if c < s.crf_max:  # between two CRFs: the P-frame against the intra curve's chord there
        m_hi = tried[c][0]
        m_lo, lo = intra_point(s, c + 1, new, size, version, tried=tried)
        if intra_beats_chord((len(packets[0]), m_hi), (len(lo[0]), m_lo), (limit, target)):
            if math.log(len(packets[0]) / limit) < math.log(limit / len(lo[0])):
                return Choice("intra", packets, c, "intra curve")
            return Choice("intra", lo, c + 1, "intra curve")
    return Choice("inter", pframe, crf, "equal quality")


def intra_beats_chord(hi: tuple[int, float], lo: tuple[int, float], pframe: tuple[int, float]) -> bool:
    """Whether the intra curve beats the P-frame ``(bytes, Y MSE)`` where a whole CRF step leaves
    it between two intra frames, ``hi`` (more bytes than the P-frame, MSE at most its) and ``lo``
    (fewer bytes): the chord from ``lo`` to ``hi`` in log bytes and log MSE gives a lower MSE than
    the P-frame's at the P-frame's bytes. (x265 ignores a fractional CRF for an intra frame, so
    the step cannot be split.)"""
    (b_hi, m_hi), (b_lo, m_lo), (b, m) = hi, lo, pframe
    if not b_lo < b < b_hi or min(m_hi, m_lo, m) <= 0:
        return False
    f = math.log(b / b_lo) / math.log(b_hi / b_lo)
    return math.log(m_lo) + f * (math.log(m_hi) - math.log(m_lo)) < math.log(m)


def intra_point(s: Spec, crf: int, new: np.ndarray, size: tuple[int, int], version: int, preset: str | None = None,
                tried: dict | None = None) -> tuple[float, list[bytes]]:
    """``(Y MSE, packets)`` of the intra frame at ``crf`` (``preset``: another encoder preset than
    the version's), taken from or stored in ``tried`` (CRF -> the same) when given."""
    if tried is not None and crf in tried:
        return tried[crf]
    packets = code_candidate(s, crf, "intra", new, None, version, {"preset": preset} if preset else None)
    point = (luma_mse(s, new, decode_frames(s, packets, padded_size(s, *size))[0], size), packets)
    if tried is not None:
        tried[crf] = point
    return point


def intra_at_quality(s: Spec, new: np.ndarray, size: tuple[int, int], target: float, start: int, version: int,
                     give_up: float, preset: str | None = None, tried: dict | None = None) -> tuple[int, list[bytes]] | None:
    """``(crf, packets)`` of the intra frame at the highest CRF whose Y MSE is at most ``target``,
    searched from ``start``: one step by the MSE's slope (it doubles about every 3 QP), then by
    one CRF up while the quality holds, or down until it does. None where no CRF reaches it, or
    where a CRF that does not already gives more than ``give_up`` bytes (a lower CRF would give
    more). ``preset``: another encoder preset than the version's; ``tried`` (CRF -> ``(Y MSE,
    packets)``, :func:`intra_point`) keeps every frame coded on the way for the caller."""
    tried = {} if tried is None else tried

    def at(c: int) -> tuple[float, list[bytes]]:
        return intra_point(s, c, new, size, version, preset, tried)

    def clip(c: int) -> int:
        return min(max(c, s.crf_min), s.crf_max)

    c = clip(start)
    if at(c)[0] > 0 and target > 0:
        c = clip(c + round(3 * math.log2(target / at(c)[0])))
    if at(c)[0] <= target:
        while c < s.crf_max and at(c + 1)[0] <= target:
            c += 1
        return c, at(c)[1]
    while c > s.crf_min and len(at(c)[1][0]) <= give_up:
        c -= 1
        if at(c)[0] <= target:
            return c, at(c)[1]
    return None


# ----------------------------------------------------------------------------- the payload
class Payload(NamedTuple):
    """An inter LR section, parsed: ``frame`` is the P-frame (mode ``inter``) or the I-frame
    (``intra``, payload version 3: no frame 0, ``digest`` empty)."""

    crf: int
    identity: str
    digest: bytes
    frame: bytes
    version: int
    mode: str


def encode(name: str, arr: np.ndarray, quality: int | None, ref: np.ndarray | None, version: int = PAYLOAD_VERSION,
           mode: str | None = None) -> bytes:
    """The LR section coding ``arr`` (uint8 ``[h, w, 3]``): the P-frame predicted from ``ref``, or
    intra-only; ``mode`` ``auto`` (:func:`choose`), ``inter`` or ``intra`` (``None``:
    :data:`DEFAULT_MODE`). ``version``: an older payload version's settings (compatibility tests;
    versions 1 and 2 have no mode: inter only)."""
    s = SPECS[name]
    mode = check_mode(DEFAULT_MODE if mode is None else mode)
    if version < 3:
        if mode == "intra":
            raise InputError(f"payload version {version} has no intra mode (the P-frame only)")
        mode = "inter"
    arr = np.ascontiguousarray(arr)
    crf = crf_for(name, quality)
    new = to_planes(s, arr)
    f0 = None if mode == "intra" else to_planes(s, _check_ref(name, ref, arr.shape))
    if mode == "auto":
        mode, packets, crf, _ = choose(s, crf, new, f0, arr.shape[:2], version)
    else:
        packets = code_candidate(s, crf, mode, new, f0, version)
    ident = identity(name).encode("ascii")[:255]
    flag = INTRA_BIT if version >= 4 and mode == "intra" else 0
    head = struct.pack("<BBB", version, crf | flag, len(ident)) + ident + (bytes([MODE_BYTES.index(mode)]) if version == 3 else b"")
    if mode == "intra":
        return head + packets[0]
    alone = FIRST_FRAMES.packet(s, crf, f0, version, _digest(packets[0]))
    if alone != packets[0]:  # the decoder would not be able to rebuild frame 0
        raise InputError(f"{s.encoder} is not deterministic here: frame 0 alone differs from frame 0 of the stream")
    return head + _digest(packets[0]) + packets[1]


def parse(name: str, data: bytes) -> Payload:
    """The fields of an LR section (:class:`Payload`); ContainerError if malformed."""
    s = SPECS[name]
    if len(data) < 3:
        raise ContainerError(f"{name} LR section is too short ({len(data)} bytes)")
    version, crf, n = struct.unpack_from("<BBB", data, 0)
    if version not in SETTINGS:
        raise ContainerError(f"{name} LR section has payload version {version}; this refscale reads {', '.join(map(str, SETTINGS))}")
    mode = "inter"
    if version >= 4 and crf & INTRA_BIT:
        mode, crf = "intra", crf & ~INTRA_BIT
    if not s.crf_min <= crf <= s.crf_max:
        raise ContainerError(f"{name} LR section: CRF {crf} out of range {s.crf_min}..{s.crf_max}")
    pos = 3 + n
    if n < 1 or len(data) < pos:
        raise ContainerError(f"{name} LR section is truncated")
    raw = data[3:pos]
    if not all(0x21 <= c <= 0x7E for c in raw):
        raise ContainerError(f"{name} LR section: encoder identity is not printable ASCII")
    if version == 3:
        if len(data) <= pos:
            raise ContainerError(f"{name} LR section is truncated")
        if data[pos] >= len(MODE_BYTES):
            raise ContainerError(f"{name} LR section: mode byte {data[pos]} is neither 0 (intra) nor 1 (inter)")
        mode, pos = MODE_BYTES[data[pos]], pos + 1
    end = pos + (DIGEST_BYTES if mode == "inter" else 0)
    if len(data) <= end:
        raise ContainerError(f"{name} LR section is truncated")
    return Payload(crf, raw.decode("ascii"), data[pos:end], data[end:], version, mode)


def decode(name: str, data: bytes, size: tuple[int, int], ref: np.ndarray | None, exact: bool = True) -> np.ndarray:
    """Rebuild the LR image uint8 ``[h, w, 3]`` from its section and the reference at LR size (not
    used by an intra payload). ``exact``: refuse when frame 0 regenerated here differs from the
    encoder's (see module doc)."""
    s = SPECS[name]
    p = parse(name, bytes(data))
    if p.mode == "intra":
        frames = decode_frames(s, [p.frame], padded_size(s, *size))
        if len(frames) != 1:
            raise ContainerError(f"{name} intra frame did not decode ({len(frames)} frames from 1 packet)")
        return from_planes(s, frames[0], size)
    ref = _check_ref(name, ref, (size[0], size[1], 3))
    f0 = [FIRST_FRAMES.packet(s, p.crf, to_planes(s, ref), p.version, p.digest if exact else None)]
    if exact and _digest(f0[0]) != p.digest:
        mine = identity(name)
        why = ("the same build: the reference at LR size or the encoder's output differs on this machine"
               if mine == p.identity else f"this machine has {mine}")
        raise ContainerError(f"cannot rebuild the encoder's first frame for {name}: the file was written with {p.identity}, "
                             f"{why}; decode with the same PyAV build")
    frames = decode_frames(s, [f0[0], p.frame], padded_size(s, *size))
    if len(frames) != 2:
        raise ContainerError(f"{name} P-frame did not decode ({len(frames)} frames from 2 packets)")
    return from_planes(s, frames[1], size)
