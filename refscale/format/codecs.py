"""LR image codecs for the ``.rsc`` container: PNG (default), WebP, JPEG, AVIF, JPEG XL, JPEG 2000,
and the inter-frame codecs ``h264-inter``, ``hevc-inter``, ``av1-inter`` (:mod:`refscale.format.inter`).

Every still-image codec maps an 8-bit RGB array ``[h, w, 3]`` to a standard bitstream and back.
An inter-frame codec (``Codec.needs_reference``) also needs the reference at the LR's size on
both sides (``ref=`` of :func:`encode_image` / :func:`decode_image`): it codes the LR as a video
P-frame predicted from it; quality maps to the encoder's CRF (see :mod:`refscale.format.inter`).

``quality`` is an integer 1..100 (higher is better) or ``None``:

========  ===================  ===========================================  ========
codec     library              ``quality=None`` or ``100``                  1..99
========  ===================  ===========================================  ========
png       Pillow               lossless (the only mode; other values refused)  --
webp      Pillow               lossless (VP8L, method 6)                    VP8 lossy, Pillow quality
jpeg      Pillow               None -> quality 95; 100 -> quality 100        Pillow quality
avif      imagecodecs          lossless (YUV 4:4:4, identity matrix)        libavif quality, speed 6
jxl       imagecodecs          lossless (modular)                           libjxl quality
j2k       imagecodecs          lossless (reversible 5/3 wavelet)            target PSNR 20 + 0.3*q dB
========  ===================  ===========================================  ========

JPEG has no lossless mode in Pillow, so it is the only codec whose default is lossy.
For JPEG 2000 the OpenJPEG rate control takes a target PSNR, not a 0..100 quality: we
map ``q`` linearly to ``20 + 0.3 q`` dB (q=50 -> 35 dB, q=90 -> 47 dB) and say so here.

Decoding is defensive: the expected size is known from the container header and is
checked *before* the pixels are decoded (Pillow: the lazily parsed header; imagecodecs:
a pre-allocated ``out`` array), and any failure of a third-party decoder on a corrupt
bitstream becomes a :class:`~refscale.errors.ContainerError`.
"""
from __future__ import annotations

import io
import numbers
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import numpy as np

from refscale.errors import ContainerError, InputError


@dataclass(frozen=True)
class Codec:
    name: str
    library: str  # what provides it, for error messages
    lossless_default: bool  # quality=None gives an exact round trip
    encode: Callable[..., bytes]  # (arr, quality) -> bytes; inter codecs: (arr, quality, ref)
    decode: Callable[..., np.ndarray]  # (data, size) -> arr; inter codecs: (data, size, ref, exact)
    needs_reference: bool = False  # an inter-frame codec: predicts the LR from the reference at LR size


# ----------------------------------------------------------------------------- Pillow codecs
def _pil_encode(fmt: str, kwargs: Callable[[int | None], dict]):
    def enc(arr: np.ndarray, quality: int | None) -> bytes:
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(arr, "RGB").save(buf, format=fmt, **kwargs(quality))
        return buf.getvalue()

    return enc


def _pil_decode(fmt: str):
    def dec(data: bytes, size: tuple[int, int]) -> np.ndarray:
        from PIL import Image

        # the size is the header's, bounded by the container's pixel limit: no bomb check
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            im = Image.open(io.BytesIO(data), formats=[fmt])
        finally:
            Image.MAX_IMAGE_PIXELS = limit
        with im:
            if (im.height, im.width) != tuple(size):
                raise ContainerError(f"LR image is {im.width}x{im.height}, header says {size[1]}x{size[0]} (width x height)")
            if im.mode != "RGB":
                raise ContainerError(f"LR image has mode {im.mode}, expected RGB")
            im.load()
            return np.asarray(im, dtype=np.uint8).copy()

    return dec


def _webp_args(q):
    if q is None or q == 100:
        return {"lossless": True, "quality": 100, "method": 6, "exact": True}
    return {"quality": q, "method": 6}


#: the JPEG quality when none is given (Pillow has no lossless JPEG)
JPEG_DEFAULT_QUALITY = 95


def _jpeg_args(q):
    return {"quality": JPEG_DEFAULT_QUALITY if q is None else q}


# ----------------------------------------------------------------------------- imagecodecs codecs
def _ic_decode(name: str):
    def dec(data: bytes, size: tuple[int, int]) -> np.ndarray:
        import imagecodecs

        out = np.empty((size[0], size[1], 3), dtype=np.uint8)  # bounds memory: a wrong size fails
        return getattr(imagecodecs, f"{name}_decode")(data, out=out)

    return dec


def _avif_encode(arr, q):
    import imagecodecs

    # speed 6 is libavif's own default (avifenc); imagecodecs' default is the slowest speed,
    # 50x slower here (20 s for a 0.2 Mpx image) for files no smaller (measured, issue 15)
    return imagecodecs.avif_encode(arr, level=None if q in (None, 100) else q, speed=AVIF_SPEED)


#: libavif encoder speed (0 slowest .. 10 fastest)
AVIF_SPEED = 6


def _jxl_encode(arr, q):
    import imagecodecs

    if q is None or q == 100:
        return imagecodecs.jpegxl_encode(arr, lossless=True)
    return imagecodecs.jpegxl_encode(arr, level=q)


def _j2k_encode(arr, q):
    import imagecodecs

    if q is None or q == 100:
        return imagecodecs.jpeg2k_encode(arr, reversible=True)
    return imagecodecs.jpeg2k_encode(arr, level=20 + 0.3 * q)


CODECS: dict[str, Codec] = {
    "png": Codec("png", "Pillow", True, _pil_encode("PNG", lambda q: {"optimize": True}), _pil_decode("PNG")),
    "webp": Codec("webp", "Pillow (WebP support)", True, _pil_encode("WEBP", _webp_args), _pil_decode("WEBP")),
    "jpeg": Codec("jpeg", "Pillow", False, _pil_encode("JPEG", _jpeg_args), _pil_decode("JPEG")),
    "avif": Codec("avif", "imagecodecs", True, _avif_encode, _ic_decode("avif")),
    "jxl": Codec("jxl", "imagecodecs", True, _jxl_encode, _ic_decode("jpegxl")),
    "j2k": Codec("j2k", "imagecodecs", True, _j2k_encode, _ic_decode("jpeg2k")),
}


def _inter_codec(name: str) -> Codec:
    from refscale.format import inter

    return Codec(name, "PyAV", False, lambda arr, q, ref: inter.encode(name, arr, q, ref),
                 lambda data, size, ref, exact=True: inter.decode(name, data, size, ref, exact), needs_reference=True)


CODECS.update({name: _inter_codec(name) for name in ("h264-inter", "hevc-inter", "av1-inter")})

#: accepted spellings on the command line and in the API
ALIASES = {"jpg": "jpeg", "jpegxl": "jxl", "jpeg2000": "j2k", "jp2": "j2k", "h265-inter": "hevc-inter"}


def canonical(codec: str | None, default: str | None = None) -> str:
    """The canonical codec name (``codec=None``: ``default``, e.g. a model's ``default_codec``),
    or :class:`InputError` for an unknown one."""
    codec = default if codec is None else codec
    name = ALIASES.get(str(codec).lower(), str(codec).lower())
    if name not in CODECS:
        raise InputError(f"unknown codec {codec!r}; known: {', '.join(CODECS)}")
    return name


def _probe(name: str) -> bool:
    """True when this machine can encode and decode ``name`` (inter codecs: PyAV has the encoder
    and decoder; still codecs: a tiny round trip, cached)."""
    if CODECS[name].needs_reference:
        from refscale.format import inter

        return inter.available(name)
    return _probe_still(name)


@lru_cache(maxsize=None)
def _probe_still(name: str) -> bool:
    arr = np.zeros((8, 8, 3), dtype=np.uint8)
    arr[::2, 1::3] = (200, 40, 90)
    codec = CODECS[name]
    try:
        return codec.decode(codec.encode(arr, None), (8, 8)).shape == (8, 8, 3)
    except Exception:  # noqa: BLE001 - any failure means "not usable here"
        return False


def available_codecs() -> dict[str, bool]:
    """``{codec name: usable on this machine}`` for every codec refscale knows."""
    return {name: _probe(name) for name in CODECS}


def require(codec: str) -> Codec:
    """The codec, or a clear :class:`InputError` when this machine lacks it."""
    name = canonical(codec)
    if not _probe(name):
        if CODECS[name].needs_reference:
            from refscale.format import inter

            raise InputError(f"codec {name} is not available on this machine: {inter.missing_reason(name)}")
        hint = "imagecodecs, the codecs extra: pip install 'refscale[codecs]'" if CODECS[name].library == "imagecodecs" else "a Pillow build with this format"
        raise InputError(f"codec {name} is not available on this machine (needs {hint})")
    return CODECS[name]


def check_quality(codec: str, quality: int | None) -> int | None:
    """Validate ``quality`` for ``codec``; returns it unchanged (``None`` = codec default)."""
    name = canonical(codec)
    if quality is None:
        return None
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)):
        raise InputError(f"quality must be an integer 1..100, got {quality!r}")
    if name == "png":
        raise InputError("codec png is lossless and takes no quality (-q); use webp, jpeg, avif, jxl or j2k for lossy LR")
    if not 1 <= int(quality) <= 100:
        raise InputError(f"quality must be 1..100, got {quality}")
    return int(quality)


def check_budget(quality: int | None = None, bpp: float | None = None, max_bytes: int | None = None) -> None:
    """Refuse an inconsistent choice of quality / ``bpp`` / ``max_bytes`` (at most one) or a
    non-positive budget, before any work is done."""
    given = [n for n, v in (("a quality", quality), ("a bpp budget", bpp), ("a byte budget", max_bytes)) if v is not None]
    if len(given) > 1:
        raise InputError(f"give one of a codec quality, a bpp budget or a byte budget, not {' and '.join(given)}")
    if bpp is not None:
        check_bpp(bpp)
    if max_bytes is not None and (isinstance(max_bytes, bool) or not isinstance(max_bytes, numbers.Integral) or max_bytes < 1):
        raise InputError(f"the byte budget must be a positive integer, got {max_bytes!r}")


def check_bpp(bpp) -> float:
    """``bpp`` as a float, or :class:`InputError` unless it is a positive, finite number of bits per pixel."""
    bpp = float(bpp)
    if not bpp > 0 or bpp == float("inf"):
        raise InputError(f"the bit budget must be a positive number of bits per pixel, got {bpp}")
    return bpp


def resolve(codec: str | None, quality: int | None = None, default: str | None = None, *, bpp: float | None = None,
            max_bytes: int | None = None, available: bool = False, default_quality: int | None = None) -> tuple[str, int | None]:
    """The codec choice of a caller (name, and a quality or a byte budget), resolved once at the
    boundary: ``(canonical name, checked quality)`` (``codec=None``: ``default``, e.g. the model's
    ``default_codec``; ``quality=None``: the codec's default), with ``bpp`` / ``max_bytes``
    checked against it and each other (:func:`check_budget`) and, with ``available``, the codec
    available on this machine (:func:`require`); else :class:`InputError`. Idempotent: a
    resolved pair resolves to itself, so an API that a resolving caller calls may resolve again.
    ``default_quality``: the quality of ``default`` when neither a codec, a quality nor a budget is
    given (a model's :attr:`~refscale.protocol.Rescaler.default_quality`)."""
    if codec is None and quality is None and bpp is None and max_bytes is None:
        quality = default_quality
    name = canonical(codec, default)
    quality = check_quality(name, quality)
    check_budget(quality, bpp, max_bytes)
    if available:
        require(name)
    return name, quality


def needs_reference(codec: str) -> bool:
    """True for an inter-frame codec, which predicts the LR from the reference at the LR's size."""
    return CODECS[canonical(codec)].needs_reference


def inter_payload(codec: str, section: bytes) -> dict:
    """What an inter-frame codec's LR section records: ``{"payload_version", "mode", "crf",
    "encoder"}`` (mode ``inter``: a P-frame, ``intra``: an intra frame; :mod:`refscale.format.inter`)."""
    from refscale.format import inter

    p = inter.parse(canonical(codec), bytes(section))
    return {"payload_version": p.version, "mode": p.mode, "crf": p.crf, "encoder": p.identity}


def effective_quality(codec: str, quality: int | None) -> int | None:
    """The quality ``encode_image`` really uses: ``quality``, else the codec's default for a lossy
    codec (JPEG 95, the inter codecs ``refscale.format.inter.DEFAULT_QUALITY``: 60), else ``None`` (lossless)."""
    name = canonical(codec)
    if quality is not None:
        return int(quality)
    if name == "jpeg":
        return JPEG_DEFAULT_QUALITY
    if CODECS[name].needs_reference:
        from refscale.format.inter import DEFAULT_QUALITY

        return DEFAULT_QUALITY[name]
    return None


def is_lossless(codec: str, quality: int | None) -> bool:
    """True when ``encode_image(arr, codec, quality)`` decodes back to ``arr`` exactly."""
    name = canonical(codec)
    return CODECS[name].lossless_default and (quality is None or quality == 100)


def encode_image(arr: np.ndarray, codec: str = "png", quality: int | None = None, ref: np.ndarray | None = None) -> bytes:
    """Encode an 8-bit RGB array ``[h, w, 3]`` with ``codec`` at ``quality`` (see module doc);
    ``ref``: the reference at the LR's size, uint8 ``[h, w, 3]``, for an inter-frame codec."""
    arr = np.asarray(arr)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise InputError(f"encode_image needs a uint8 array [h, w, 3], got {arr.dtype} {list(arr.shape)}")
    quality = check_quality(codec, quality)
    c = require(codec)
    if c.needs_reference and ref is None:
        raise InputError(f"codec {c.name} predicts the LR from the reference; it needs the reference at the LR size")
    try:
        if c.needs_reference:
            return bytes(c.encode(np.ascontiguousarray(arr), quality, ref))
        return bytes(c.encode(np.ascontiguousarray(arr), quality))
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - a library failure on valid input is reported, not leaked
        raise InputError(f"{c.name} encoder failed: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def decode_image(data: bytes, codec: str = "png", size: tuple[int, int] | None = None,
                 ref: np.ndarray | None = None, exact: bool = True) -> np.ndarray:
    """Decode a bitstream to uint8 ``[h, w, 3]``.

    ``size`` (h, w), when given, is enforced before the pixels are decoded. Any decoder
    failure raises :class:`ContainerError` (the bitstream comes from a file we do not trust).
    An inter-frame codec needs ``size`` and ``ref`` (the reference at the LR size); ``exact=False``
    skips its check that frame 0 was rebuilt as the encoder built it (a reference other than the
    encoder's, on request).
    """
    c = require(codec)
    if c.needs_reference:
        if size is None or ref is None:
            raise InputError(f"decoding codec {c.name} needs the LR size and the reference at that size")
        try:
            arr = c.decode(bytes(data), (int(size[0]), int(size[1])), ref, exact)
        except (ContainerError, InputError):
            raise
        except Exception as e:  # noqa: BLE001 - FFmpeg raises anything on corrupt data
            raise ContainerError(f"{c.name} LR bitstream is corrupt: {_reason(e)}") from None
        return arr
    if size is None:  # only for trusted callers: read the size first with Pillow, if it can
        size = _sniff_size(bytes(data), c)
    try:
        arr = c.decode(bytes(data), (int(size[0]), int(size[1])))
    except ContainerError:
        raise
    except MemoryError:
        raise ContainerError(f"{c.name} LR bitstream is corrupt (decoder ran out of memory)") from None
    except Exception as e:  # noqa: BLE001 - third-party decoders raise anything on corrupt data
        raise ContainerError(f"{c.name} LR bitstream is corrupt: {_reason(e)}") from None
    if arr.dtype != np.uint8 or arr.shape != (size[0], size[1], 3):
        raise ContainerError(f"{c.name} LR bitstream decoded to {arr.dtype} {list(arr.shape)}, expected uint8 {[size[0], size[1], 3]}")
    return arr


def _reason(e: BaseException) -> str:
    """A short, address-free description of a decoder exception."""
    msg = str(e).splitlines()[0] if str(e) else type(e).__name__
    return re.sub(r"\s*<[^<>]* object at 0x[0-9a-fA-F]+>", "", msg).strip() or type(e).__name__


def _sniff_size(data: bytes, c: Codec) -> tuple[int, int]:
    if c.library == "imagecodecs":
        import imagecodecs

        try:
            arr = getattr(imagecodecs, {"avif": "avif", "jxl": "jpegxl", "j2k": "jpeg2k"}[c.name] + "_decode")(data)
        except Exception as e:  # noqa: BLE001
            raise ContainerError(f"{c.name} bitstream is corrupt: {_reason(e)}") from None
        return arr.shape[0], arr.shape[1]
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.height, im.width
    except Exception as e:  # noqa: BLE001
        raise ContainerError(f"{c.name} bitstream is corrupt: {e}") from None
