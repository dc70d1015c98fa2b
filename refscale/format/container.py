"""The ``.rsc`` container: one self-describing file holding an encoded image.

The byte layout is specified in ``docs/format.md``; this module is its reference
implementation. In short (all integers little-endian)::

    magic (8) | version u16 | header length u32 | header body | header CRC32 u32 | sections...

The header body names the model and the hash of its weights, the fingerprint of the reference
the image was encoded with (version 2; :func:`reference_fingerprint`), the scale, the original and
padded image size, the tile layout, the LR codec and quality, and describes each section
(length and CRC32). The sections follow in header order: the LR image bitstream (for an
inter-frame codec, a P-frame predicted from the reference; :mod:`refscale.format.inter`), then
one losslessly compressed side tensor per entry (e.g. RefScale's similarity map), then (format
version 3 and later) the raster record: georeferencing, source dtype, bands and the intensity
mapping of a GeoTIFF / 16-bit / float input (:mod:`refscale.format.raster_record`). Version 4 adds the rotation
of the reference (registration) after its shift. Version 5 adds the verifying encoder's record
(:class:`Verification`: the decoding seed and temperature it checked, and which blocks decode
by the bicubic fallback) as the last section. Each file is written in the oldest version that
holds it: a file without a verification record, a rotation or a raster record is version 2,
byte for byte what earlier versions wrote; without a verification record or rotation, version 3;
without a verification record, version 4.

The reader (:func:`read_header`, :meth:`Packet.from_bytes`) checks magic, version,
lengths, every CRC, sizes and their consistency, codec and dtype names and pixel-count
limits *before* decoding any pixels, and raises :class:`ContainerError` with a one-line
message. bpp is always ``file bytes * 8 / (H * W)`` of the original image.

Side tensors are stored as raw little-endian integers in the smallest integer dtype that
holds their range, compressed with whichever of zlib (level 9) and raw LZMA2 (preset 9e,
16 MiB dictionary) gives fewer bytes for that tensor; the choice is recorded per tensor.
Decompression is bounded by the size the header declares, so a corrupt stream cannot
expand without limit.
"""
from __future__ import annotations

import dataclasses
import hashlib
import lzma
import math
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from refscale.format import codecs
from refscale.errors import ContainerError, InputError
from refscale.format.raster_record import RasterRecord

MAGIC = b"\x89RSC\r\n\x1a\n"
VERSION = 5  # the newest version the writer writes: 5 with a verification record, 4 with a reference rotation, 3 with a raster record, else 2
READABLE_VERSIONS = (1, 2, 3, 4, 5)  # 1: no reference fingerprint; 2: no raster record; 3: no rotation; 4: no verification
MAX_RASTER_BYTES = 1 << 20  # the raster record's JSON stream; its nodata mask adds max_raster_bytes
PREAMBLE = 14  # magic (8) + version (2) + header length (4)

#: limits a reader enforces (also on writing, so every file we write can be read back)
MAX_HEADER_BYTES = 1 << 16
MAX_SIDE = 1 << 18  # longest image side, pixels
MAX_PIXELS = 1 << 30  # padded HR pixels (1073 Mpx; 2^28 before the windowed scenes of issue 16)
MAX_SCALE = 64
MAX_PADDING = 1024  # padded minus original size, per side (models align to far less)
MAX_SIDE_TENSORS = 16
MAX_NDIM = 6
MAX_NAME = 255
MAX_SHIFT_UNITS = 100 * MAX_SIDE  # reference shift, in 1/100 px
MAX_ROTATION_UNITS = 18000  # reference rotation, in 1/100 degree
MAX_TEMPERATURE_UNITS = 1_000_000  # verified decoding temperature, in 1/1000
VERIFY_FIXED = struct.Struct("<HIIII")  # block, seed, temperature (1/1000), rows, columns

#: storage dtypes of side tensors (always little-endian), smallest first
SIDE_DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "int64")
#: torch dtypes a side tensor may be restored to (what the model's ``downscale`` produced)
RESTORE_DTYPES = ("int64", "int32", "int16", "int8", "uint8", "bool", "float32", "float64", "float16", "bfloat16")
COMPRESSIONS = ("zlib", "lzma")
#: arithmetic the model ran in (see ``refscale.pipeline``)
PRECISIONS = ("fp32", "bf16")
_LZMA_FILTERS = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME, "dict_size": 1 << 24}]
_LZMA_DECODE_FILTERS = [{"id": lzma.FILTER_LZMA2, "dict_size": 1 << 24}]


# ============================================================================= the verification record
@dataclass
class Verification:
    """What the verifying encoder checked (``refscale.pipeline.encode(..., verify=True)``; format
    version 5): the image was decoded with ``seed`` and ``temperature`` (the decoder's defaults
    for this file) and compared, block by block (``block`` x ``block`` HR pixels on the padded
    image's grid, the last row and column of blocks cut by its edge), with the bicubic pipeline;
    ``fallback[i, j]`` is True where block ``(i, j)`` holds the bicubic LR and is rebuilt by
    bicubic upscaling instead of the model.

    Section bytes: ``u16 block | u32 seed | u32 temperature in 1/1000 | u32 rows | u32 columns |
    zlib stream of the fallback bits`` (row-major, packed eight to a byte, least significant bit
    first; ``rows = ceil(PH / block)``, ``columns = ceil(PW / block)``).
    """

    block: int
    seed: int
    temperature: float
    fallback: np.ndarray  # bool [rows, columns]

    @staticmethod
    def grid(padded_size: tuple[int, int], block: int) -> tuple[int, int]:
        """``(rows, columns)`` of blocks covering a padded image."""
        return -(-int(padded_size[0]) // block), -(-int(padded_size[1]) // block)

    def to_bytes(self) -> bytes:
        fb = np.asarray(self.fallback, dtype=bool)
        t = round(float(self.temperature) * 1000)
        if not (0 <= t <= MAX_TEMPERATURE_UNITS and 0 <= int(self.seed) < 2**32 and 1 <= int(self.block) < 2**16):
            raise ContainerError(f"verification record out of range (block {self.block}, seed {self.seed}, "
                                 f"temperature {self.temperature})")
        bits = np.packbits(fb.reshape(-1), bitorder="little").tobytes()
        return VERIFY_FIXED.pack(int(self.block), int(self.seed), t, *fb.shape) + zlib.compress(bits, 9)

    @classmethod
    def from_bytes(cls, data: bytes, padded_size: tuple[int, int], scale: int) -> Verification:
        if len(data) < VERIFY_FIXED.size:
            raise ContainerError("verification record too short")
        block, seed, t, rows, cols = VERIFY_FIXED.unpack_from(data)
        if block % scale or block < 1:
            raise ContainerError(f"verification block {block} is not a positive multiple of the scale {scale}")
        if (rows, cols) != cls.grid(padded_size, block):
            raise ContainerError(f"verification grid {cols}x{rows} does not cover the padded image in blocks of {block}")
        if t > MAX_TEMPERATURE_UNITS:
            raise ContainerError(f"verified temperature {t / 1000} out of range")
        n = -(-rows * cols // 8)
        d = zlib.decompressobj()
        try:
            bits = d.decompress(data[VERIFY_FIXED.size:], n + 1)
        except zlib.error as e:
            raise ContainerError(f"verification record does not decompress: {e}") from None
        if len(bits) != n or not d.eof or d.unused_data:
            raise ContainerError("verification record decompresses to the wrong size")
        fb = np.unpackbits(np.frombuffer(bits, np.uint8), count=rows * cols, bitorder="little").astype(bool)
        return cls(block=block, seed=seed, temperature=t / 1000, fallback=fb.reshape(rows, cols))

    def summary(self) -> dict[str, Any]:
        return {"block": int(self.block), "seed": int(self.seed), "temperature": float(self.temperature),
                "blocks": int(self.fallback.size), "fallback_blocks": int(self.fallback.sum())}


def max_verify_bytes(padded_size: tuple[int, int], scale: int) -> int:
    """The longest verification section of a padded image (blocks no smaller than the scale)."""
    rows, cols = Verification.grid(padded_size, scale)
    n = -(-rows * cols // 8)
    return VERIFY_FIXED.size + n + 5 * (n // 16384 + 1) + 6


# ============================================================================= the packet
@dataclass(frozen=True)
class Packet:
    """Everything needed to rebuild an image (with the model and, if it needs one, the reference).

    ``lr`` is the 8-bit LR image ``[h, w, 3]`` with ``h, w = padded_size / scale``;
    ``side`` maps names to integer arrays whose last two dimensions divide ``padded_size``
    by one common stride; ``side_dtypes`` records the torch dtype each side tensor had when the
    model produced it (so decoding hands it back unchanged); ``tiles`` is
    ``{"tile": core size, "overlap": context margin}`` in HR pixels, or ``None``; ``precision``
    is the arithmetic the encoder ran the model in (``"fp32"`` or ``"bf16"``), which the decoder
    repeats by default; ``ref_hash`` is the :func:`reference_fingerprint` (hex) of the reference
    the encoder was given, ``None`` for models without one (and in version-1 files);
    ``ref_shift`` is the translation ``(dy, dx)`` the encoder applied to that reference before the
    model saw it (registration), in units of ``refscale.registration.SHIFT_UNIT`` pixels, after
    turning it by ``ref_rotation`` units of ``refscale.registration.ROTATION_UNIT`` degrees (version 4).
    ``raster`` (:class:`refscale.format.raster_record.RasterRecord`) records what the 8-bit image the model saw
    came from when that was not a plain 8-bit file: source dtype, band indices and descriptions,
    the per-band intensity mapping, nodata, CRS and geotransform (format version 3).
    ``verification`` (:class:`Verification`, format version 5): what the verifying encoder
    checked and where the bicubic fallback decodes; ``verify_report`` is the encoder's summary of
    that check (not stored).

    Inter-frame LR codecs (``h264-inter``, ...; :mod:`refscale.format.inter`) predict the LR from the
    reference at the LR's size, ``lr_ref`` (uint8 ``[h, w, 3]``, not stored: the encoder sets it,
    ``refscale.pipeline.lr_reference``). A packet read from such a file has ``lr = None`` and the
    section in ``lr_data``; :meth:`with_lr` gives the packet with it decoded from the reference
    (``refscale.pipeline.decode`` does that after checking the reference's fingerprint).

    A packet is immutable (a frozen dataclass; the encoded image, apart from the bytes of any one
    file of it: :meth:`to_bytes` writes it with the codec and quality asked for). Make a changed
    copy with :func:`dataclasses.replace`; the library never writes into its arrays.
    """

    model: str
    weights_hash: str
    scale: int
    size: tuple[int, int]
    padded_size: tuple[int, int]
    tiles: dict | None
    lr: np.ndarray | None  # None: an inter-frame LR not decoded yet (with_lr)
    side: dict[str, np.ndarray] = field(default_factory=dict)
    codec: str = "png"
    quality: int | None = None
    side_dtypes: dict[str, str] = field(default_factory=dict)
    precision: str = "fp32"
    ref_hash: str | None = None
    ref_shift: tuple[int, int] = (0, 0)
    ref_rotation: int = 0
    version: int = VERSION  # of the file it was read from
    raster: RasterRecord | None = None  # file-level metadata and intensity mapping (refscale.format.raster_record)
    lr_ref: np.ndarray | None = field(default=None, repr=False, compare=False)  # inter codecs only
    lr_data: bytes | None = field(default=None, repr=False, compare=False)  # inter codecs: the undecoded section
    verification: Verification | None = field(default=None, compare=False)
    verify_report: dict | None = field(default=None, repr=False, compare=False)  # the encoder's check (not stored)

    @property
    def registered(self) -> bool:
        """The encoder moved the reference (a recorded shift or rotation) before the model saw it."""
        return any(self.ref_shift) or bool(self.ref_rotation)

    # ------------------------------------------------------------------ writing
    def to_bytes(self, codec: str | None = None, quality: int | None = None, *, max_bytes: int | None = None) -> bytes:
        """The ``.rsc`` file. ``codec=None`` keeps ``self.codec`` / ``self.quality``.

        ``max_bytes``: instead of a quality, a budget for the whole file; the codec quality is
        then chosen by :meth:`fit` (the chosen quality is recorded in the header as usual).
        """
        if max_bytes is not None:
            codecs.check_budget(quality, None, max_bytes)
            return self.fit(self.codec if codec is None else codec, max_bytes)[0]
        if codec is None:
            codec, quality = self.codec, (self.quality if quality is None else quality)
        codec, quality = codecs.resolve(codec, quality)
        header, side_blobs = self._header_and_side(codec)
        # the header records the quality used (a lossy codec's default, e.g. JPEG 95, when none is given)
        return _assemble(header, codecs.effective_quality(codec, quality), self._lr_bitstream(codec, quality), side_blobs)

    def fit(self, codec: str, max_bytes: int) -> tuple[bytes, int | None]:
        """The file at the highest codec quality whose *whole* file has at most ``max_bytes``
        bytes, and that quality (``None`` for PNG, which has no quality knob).

        Bisection over qualities 1..100 (100 = the codec's best, lossless where it has one, and the
        slowest to code: it is tried only when 99 fits), assuming the size grows with quality;
        sizes are measured, never predicted, so the result always fits. Where a codec's size is not
        monotone in quality (it is close to monotone for all five) bisection may stop one or two
        steps below the best fitting quality. Raises :class:`InputError` when even quality 1 does
        not fit.
        """
        codec, _ = codecs.resolve(codec, max_bytes=max_bytes, available=True)
        max_bytes = int(max_bytes)
        header, side_blobs = self._header_and_side(codec)
        files: dict[int | None, bytes] = {}

        def size(q: int | None) -> int:
            if q not in files:
                files[q] = _assemble(header, q, self._lr_bitstream(codec, q), side_blobs)
            return len(files[q])

        h, w = _pair(self.size)
        def too_big(q, n):
            what = f"{codec} at quality {q}" if q is not None else f"{codec} (lossless, no quality knob)"
            return InputError(f"{what} needs {n:,} bytes ({n * 8 / (h * w):.4f} bpp) > the budget of "
                              f"{max_bytes:,} bytes ({max_bytes * 8 / (h * w):.4f} bpp)")

        if codec == "png":
            if size(None) > max_bytes:
                raise too_big(None, size(None))
            return files[None], None
        if size(1) > max_bytes:
            raise too_big(1, size(1))
        # size(lo) fits and hi does not; 101 is past the best quality and never coded, so quality
        # 100, the slowest code, is made only when 99 fits
        lo, hi = 1, 101
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if size(mid) <= max_bytes else (lo, mid)
        return files[lo], lo

    def _lr_bitstream(self, codec: str, quality: int | None) -> bytes:
        ref = self.lr_ref if codecs.needs_reference(codec) else None
        return codecs.encode_image(self.lr, codec, quality, ref=ref)

    def _header_and_side(self, codec: str) -> tuple[Header, list[bytes]]:
        """The header (LR fields still empty) and the compressed side sections."""
        if self.lr is None:
            raise ContainerError("the packet's LR image is not decoded yet (with_lr with the reference, or refscale.pipeline.decode)")
        if codecs.needs_reference(codec) and (self.lr_ref is None or self.ref_hash is None):
            raise ContainerError(f"codec {codec} predicts the LR from the reference: encode with the reference "
                                 f"(refscale.pipeline.encode(..., codec={codec!r}))")
        side_arrays = {name: smallest_integer_array(name, arr) for name, arr in self.side.items()}
        _check_mask(self.raster, _pair(self.size))
        raster = self.raster.to_bytes() if self.raster is not None else None
        verify = self.verification.to_bytes() if self.verification is not None else None
        version = 5 if verify is not None else 4 if self.ref_rotation else 3 if raster is not None else 2
        header = Header(
            version=version, model=str(self.model),
            weights_hash=str(self.weights_hash), ref_hash=self.ref_hash,
            ref_shift=tuple(int(v) for v in self.ref_shift), ref_rotation=int(self.ref_rotation), scale=int(self.scale),
            size=_pair(self.size), padded_size=_pair(self.padded_size), tiles=_tiles(self.tiles),
            precision=str(self.precision), codec=codec, quality=None, lr_length=0, lr_crc=0,
            side=[
                SideEntry(name, str(a.dtype), self.side_dtypes.get(name, "int64"), tuple(int(d) for d in a.shape), "zlib", 0, 0)
                for name, a in side_arrays.items()
            ],
        )
        if raster is not None:
            header.raster_length, header.raster_crc = len(raster), zlib.crc32(raster)
        if verify is not None:
            header.verify_length, header.verify_crc = len(verify), zlib.crc32(verify)
        header.validate()
        lr = np.asarray(self.lr)
        if lr.dtype != np.uint8 or lr.shape != (*header.lr_size, 3):
            raise ContainerError(f"LR must be uint8 {[*header.lr_size, 3]} (padded size / scale), got {lr.dtype} {list(lr.shape)}")
        blobs = []
        for entry in header.side:
            raw = np.ascontiguousarray(side_arrays[entry.name], dtype=np.dtype(entry.dtype).newbyteorder("<")).tobytes()
            method, blob = _compress(raw)
            entry.compression, entry.length, entry.crc = method, len(blob), zlib.crc32(blob)
            blobs.append(blob)
        if raster is not None:
            blobs.append(raster)  # the raster section follows the side sections
        if verify is not None:
            blobs.append(verify)  # the verification record comes last
        return header, blobs

    @classmethod
    def from_bytes(cls, data: bytes, lr_ref: np.ndarray | None = None) -> Packet:
        """Parse and validate a ``.rsc`` file (see module doc); :class:`ContainerError` if anything is off.
        An inter-frame LR is decoded only when ``lr_ref`` (the reference at LR size) is given;
        otherwise ``lr`` is ``None`` (:meth:`with_lr`)."""
        data = _as_bytes(data)
        h = read_header(data)
        pos = h.header_bytes
        lr_data = data[pos:pos + h.lr_length]
        inter = codecs.needs_reference(h.codec)
        lr = None if inter else codecs.decode_image(lr_data, h.codec, h.lr_size)
        pos += h.lr_length
        side, side_dtypes = {}, {}
        for e in h.side:
            raw = _decompress(data[pos:pos + e.length], e.compression, e.nbytes, e.name)
            pos += e.length
            side[e.name] = np.frombuffer(raw, dtype=np.dtype(e.dtype).newbyteorder("<")).astype(e.dtype).reshape(e.shape)
            side_dtypes[e.name] = e.restore
        raster = RasterRecord.from_bytes(data[pos:pos + h.raster_length]) if h.raster_length else None
        pos += h.raster_length
        _check_mask(raster, h.size)
        verification = Verification.from_bytes(data[pos:pos + h.verify_length], h.padded_size, h.scale) \
            if h.verify_length else None
        packet = cls(
            model=h.model, weights_hash=h.weights_hash, scale=h.scale, size=h.size, padded_size=h.padded_size,
            tiles=h.tiles, lr=lr, side=side, codec=h.codec, quality=h.quality, side_dtypes=side_dtypes,
            precision=h.precision, ref_hash=h.ref_hash, ref_shift=h.ref_shift, ref_rotation=h.ref_rotation, version=h.version,
            lr_data=lr_data if inter else None, raster=raster, verification=verification,
        )
        if inter and lr_ref is not None:
            packet = packet.with_lr(lr_ref)
        return packet

    def with_lr(self, lr_ref: np.ndarray, exact: bool = True) -> Packet:
        """This packet with its inter-frame LR section decoded with the reference at LR size (uint8
        ``[h, w, 3]``; it becomes ``lr_ref``); itself when the LR is decoded already.
        ``exact=False``: the reference is knowingly another one (no check that frame 0 was rebuilt
        as the encoder built it)."""
        if self.lr is not None:
            return self
        size = (self.padded_size[0] // self.scale, self.padded_size[1] // self.scale)
        lr = codecs.decode_image(self.lr_data, self.codec, size, ref=lr_ref, exact=exact)
        return dataclasses.replace(self, lr=lr, lr_ref=np.asarray(lr_ref))

    def info(self, data: bytes | None = None) -> dict[str, Any]:
        """A JSON-ready summary; with the file's ``data`` also byte counts per section and bpp."""
        out: dict[str, Any] = {
            "format_version": self.version, "model": self.model, "weights_hash": self.weights_hash,
            "reference_fingerprint": self.ref_hash, "reference_shift": list(self.ref_shift),
            "reference_rotation": int(self.ref_rotation), "scale": int(self.scale),
            "size": list(_pair(self.size)), "padded_size": list(_pair(self.padded_size)),
            "lr_size": [int(self.padded_size[0]) // int(self.scale), int(self.padded_size[1]) // int(self.scale)], "tiles": self.tiles,
            "precision": self.precision, "codec": self.codec, "quality": self.quality,
            "side": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in self.side.items()},
            "raster": self.raster.summary() if self.raster is not None else None,
            "verification": self.verification.summary() if self.verification is not None else None,
        }
        if data is not None:
            out.update(_sizes_and_bpp(data, _pair(self.size)))
        return out


def reference_hasher(shape: tuple[int, int, int]):
    """A SHA-256 object primed for :func:`reference_fingerprint` of a reference of ``shape``
    ``(H, W, C)``; feed it the 8-bit pixels ``[rows, W, C]`` (C order) strip by strip, top to bottom."""
    return hashlib.sha256(b"refscale-reference-v1" + struct.pack("<III", *shape))


def reference_fingerprint(ref_u8: np.ndarray) -> str:
    """SHA-256 (hex) of a reference as the encoder was given it (before resampling and
    registration): its 8-bit pixels ``[H, W, 3]`` (C order) with the shape. Computed by the
    encoder and checked by the decoder (docs/format.md)."""
    a = np.ascontiguousarray(ref_u8, dtype=np.uint8)
    h = reference_hasher(a.shape)
    h.update(memoryview(a).cast("B"))
    return h.hexdigest()


# ============================================================================= the header
@dataclass
class SideEntry:
    name: str
    dtype: str  # storage dtype, one of SIDE_DTYPES
    restore: str  # torch dtype name, one of RESTORE_DTYPES
    shape: tuple[int, ...]
    compression: str
    length: int
    crc: int

    @property
    def nbytes(self) -> int:
        return math.prod(int(d) for d in self.shape) * np.dtype(self.dtype).itemsize  # Python ints: no overflow


@dataclass
class Header:
    version: int
    model: str
    weights_hash: str
    ref_hash: str | None
    ref_shift: tuple[int, int]
    scale: int
    size: tuple[int, int]
    padded_size: tuple[int, int]
    tiles: dict | None
    precision: str
    codec: str
    quality: int | None
    lr_length: int
    lr_crc: int
    side: list[SideEntry]
    header_bytes: int = 0  # preamble + body + CRC, set by pack/read
    raster_length: int = 0  # version 3: bytes of the raster section (0: none)
    raster_crc: int = 0
    ref_rotation: int = 0  # version 4: the reference's rotation, 1/100 degree
    verify_length: int = 0  # version 5: bytes of the verification section (0: none)
    verify_crc: int = 0

    @property
    def lr_size(self) -> tuple[int, int]:
        return self.padded_size[0] // self.scale, self.padded_size[1] // self.scale

    @property
    def total_bytes(self) -> int:
        return self.header_bytes + self.lr_length + sum(e.length for e in self.side) + self.raster_length + self.verify_length

    # ------------------------------------------------------------------ rules shared by writer and reader
    def validate(self) -> None:
        """Every consistency rule of docs/format.md that does not need the section bytes."""
        _check_name(self.model, "model name")
        if len(self.weights_hash) != 64 or any(c not in "0123456789abcdef" for c in self.weights_hash):
            raise ContainerError("weights hash must be 64 lowercase hex digits (SHA-256)")
        if self.ref_hash is not None and (len(self.ref_hash) != 64 or any(c not in "0123456789abcdef" for c in self.ref_hash)):
            raise ContainerError("reference fingerprint must be 64 lowercase hex digits (SHA-256)")
        if self.version == 1 and self.ref_hash is not None:
            raise ContainerError("format version 1 has no reference fingerprint")
        if self.version < 3 and (self.raster_length or self.raster_crc):
            raise ContainerError(f"format version {self.version} has no raster record")
        limit = max_raster_bytes(self.size)
        if self.raster_length > limit or (self.raster_length == 0 and self.raster_crc):
            raise ContainerError(f"raster record entry {self.raster_length}/{self.raster_crc} invalid "
                                 f"(length 0..{limit}, CRC 0 when there is none)")
        if self.version < 5 and (self.verify_length or self.verify_crc):
            raise ContainerError(f"format version {self.version} has no verification record")
        vlimit = max_verify_bytes(self.padded_size, self.scale) if self.scale >= 1 else 0
        if self.verify_length > vlimit or (self.verify_length == 0 and self.verify_crc) or \
                (0 < self.verify_length < VERIFY_FIXED.size):
            raise ContainerError(f"verification record entry {self.verify_length}/{self.verify_crc} invalid "
                                 f"(length 0 or {VERIFY_FIXED.size}..{vlimit}, CRC 0 when there is none)")
        if any(abs(v) > MAX_SHIFT_UNITS for v in self.ref_shift):
            raise ContainerError(f"reference shift {list(self.ref_shift)} out of range (|v| <= {MAX_SHIFT_UNITS})")
        if self.version < 4 and self.ref_rotation:
            raise ContainerError(f"format version {self.version} has no reference rotation")
        if abs(self.ref_rotation) > MAX_ROTATION_UNITS:
            raise ContainerError(f"reference rotation {self.ref_rotation} out of range (|v| <= {MAX_ROTATION_UNITS})")
        if self.ref_hash is None and self.ref_rotation:
            raise ContainerError("a reference rotation without a reference")
        if self.ref_hash is None and any(self.ref_shift):
            raise ContainerError("a reference shift without a reference")
        if not 1 <= self.scale <= MAX_SCALE:
            raise ContainerError(f"scale {self.scale} out of range 1..{MAX_SCALE}")
        (h, w), (ph, pw) = self.size, self.padded_size
        if min(h, w) < 1 or max(ph, pw) > MAX_SIDE:
            raise ContainerError(f"image size {w}x{h} (padded {pw}x{ph}, width x height) out of range 1..{MAX_SIDE}")
        if ph * pw > MAX_PIXELS:
            raise ContainerError(f"padded image {pw}x{ph} has more than {MAX_PIXELS} pixels")
        if ph < h or pw < w:
            raise ContainerError(f"padded size {pw}x{ph} is smaller than the image {w}x{h} (width x height)")
        if ph % self.scale or pw % self.scale:
            raise ContainerError(f"padded size {pw}x{ph} is not a multiple of the scale {self.scale}")
        if ph - h >= MAX_PADDING or pw - w >= MAX_PADDING:
            raise ContainerError(f"padding from {w}x{h} to {pw}x{ph} is implausibly large")
        if self.tiles is not None:
            t, m = self.tiles["tile"], self.tiles["overlap"]
            if not (1 <= t <= MAX_SIDE and 0 <= m <= t and t % self.scale == 0 and m % self.scale == 0):
                raise ContainerError(f"tile layout {t}/{m} invalid (tile 1..{MAX_SIDE}, 0 <= overlap <= tile, both multiples of the scale)")
        if self.precision not in PRECISIONS:
            raise ContainerError(f"unknown precision {self.precision!r} (known: {', '.join(PRECISIONS)})")
        if self.codec not in codecs.CODECS:
            raise ContainerError(f"unknown LR codec {self.codec!r}")
        if self.quality is not None and not (1 <= self.quality <= 100 and self.codec != "png"):
            raise ContainerError(f"quality {self.quality} invalid for codec {self.codec}")
        if codecs.CODECS[self.codec].needs_reference and self.ref_hash is None:
            raise ContainerError(f"codec {self.codec} predicts from the reference but the file records no reference fingerprint")
        if len(self.side) > MAX_SIDE_TENSORS:
            raise ContainerError(f"more than {MAX_SIDE_TENSORS} side tensors")
        names = set()
        for e in self.side:
            _check_name(e.name, "side tensor name")
            if e.name in names:
                raise ContainerError(f"side tensor {e.name!r} appears twice")
            names.add(e.name)
            if e.dtype not in SIDE_DTYPES:
                raise ContainerError(f"side tensor {e.name!r}: unknown dtype {e.dtype!r}")
            if e.restore not in RESTORE_DTYPES:
                raise ContainerError(f"side tensor {e.name!r}: unknown restore dtype {e.restore!r}")
            if e.compression not in COMPRESSIONS:
                raise ContainerError(f"side tensor {e.name!r}: unknown compression {e.compression!r}")
            if not 2 <= len(e.shape) <= MAX_NDIM or min(e.shape) < 1:
                raise ContainerError(f"side tensor {e.name!r}: bad shape {list(e.shape)}")
            sh, sw = e.shape[-2:]
            if ph % sh or pw % sw or ph // sh != pw // sw:
                raise ContainerError(
                    f"side tensor {e.name!r}: spatial size {sw}x{sh} does not divide the padded size {pw}x{ph} by one stride"
                )
            if e.nbytes > 16 * ph * pw:
                raise ContainerError(f"side tensor {e.name!r}: {e.nbytes} bytes is implausibly large")

    # ------------------------------------------------------------------ bytes
    def pack(self) -> bytes:
        body = bytearray()
        body += _str8(self.model)
        body += bytes.fromhex(self.weights_hash)
        if self.version >= 2:
            body += struct.pack("<B", self.ref_hash is not None)
            if self.ref_hash is not None:
                body += bytes.fromhex(self.ref_hash) + struct.pack("<ii", *self.ref_shift)
                if self.version >= 4:
                    body += struct.pack("<i", self.ref_rotation)
        body += struct.pack("<HIIII", self.scale, *self.size, *self.padded_size)
        t = self.tiles or {"tile": 0, "overlap": 0}
        body += struct.pack("<II", t["tile"], t["overlap"])
        body += _str8(self.precision)
        body += _str8(self.codec)
        body += struct.pack("<BII", self.quality or 0, self.lr_length, self.lr_crc)
        body += struct.pack("<B", len(self.side))
        for e in self.side:
            body += _str8(e.name) + _str8(e.dtype) + _str8(e.restore) + struct.pack("<B", len(e.shape))
            body += struct.pack(f"<{len(e.shape)}I", *e.shape)
            body += _str8(e.compression) + struct.pack("<II", e.length, e.crc)
        if self.version >= 3:
            body += struct.pack("<II", self.raster_length, self.raster_crc)
        if self.version >= 5:
            body += struct.pack("<II", self.verify_length, self.verify_crc)
        head = MAGIC + struct.pack("<HI", self.version, len(body)) + bytes(body)
        self.header_bytes = len(head) + 4
        return head + struct.pack("<I", zlib.crc32(head))


def read_header(data: bytes) -> Header:
    """Parse and fully validate a container's header and section checksums (no pixel decoding)."""
    data = _as_bytes(data)
    if len(data) < PREAMBLE + 4:
        raise ContainerError(f"not a .rsc file: only {len(data)} bytes")
    if data[:8] != MAGIC:
        if data[:8] == b"\x89PNG\r\n\x1a\n":
            raise ContainerError("this is a PNG image, not a .rsc container")
        raise ContainerError("not a .rsc file (bad magic bytes)")
    version, body_len = struct.unpack_from("<HI", data, 8)
    if version not in READABLE_VERSIONS:
        raise ContainerError(f"unsupported .rsc format version {version} (this refscale reads versions "
                             f"{', '.join(map(str, READABLE_VERSIONS))})")
    if body_len > MAX_HEADER_BYTES:
        raise ContainerError(f"header length {body_len} exceeds {MAX_HEADER_BYTES} bytes")
    end = PREAMBLE + body_len
    if len(data) < end + 4:
        raise ContainerError(f"file truncated inside the header ({len(data)} bytes, header needs {end + 4})")
    (crc,) = struct.unpack_from("<I", data, end)
    if zlib.crc32(data[:end]) != crc:
        raise ContainerError("header checksum mismatch (file corrupted)")
    r = _Reader(data[PREAMBLE:end])
    model = r.str8("model name")
    weights_hash = r.take(32, "weights hash").hex()
    ref_hash = None
    if version >= 2:
        (has_ref,) = r.unpack("<B", "reference flag")
        if has_ref > 1:
            raise ContainerError(f"reference flag must be 0 or 1, got {has_ref}")
        ref_hash = r.take(32, "reference fingerprint").hex() if has_ref else None
        ref_shift = r.unpack("<ii", "reference shift") if has_ref else (0, 0)
        (ref_rotation,) = r.unpack("<i", "reference rotation") if has_ref and version >= 4 else (0,)
    else:
        ref_shift, ref_rotation = (0, 0), 0
    scale, h, w, ph, pw = r.unpack("<HIIII", "sizes")
    tile, overlap = r.unpack("<II", "tile layout")
    precision = r.str8("precision")
    codec = r.str8("codec name")
    quality, lr_length, lr_crc = r.unpack("<BII", "LR section entry")
    (n_side,) = r.unpack("<B", "side tensor count")
    if n_side > MAX_SIDE_TENSORS:
        raise ContainerError(f"more than {MAX_SIDE_TENSORS} side tensors")
    side = []
    for _ in range(n_side):
        name, dtype, restore = r.str8("side name"), r.str8("side dtype"), r.str8("side restore dtype")
        (ndim,) = r.unpack("<B", "side ndim")
        if not 1 <= ndim <= MAX_NDIM:
            raise ContainerError(f"side tensor {name!r}: {ndim} dimensions")
        shape = r.unpack(f"<{ndim}I", "side shape")
        compression = r.str8("side compression")
        length, scrc = r.unpack("<II", "side section entry")
        side.append(SideEntry(name, dtype, restore, tuple(shape), compression, length, scrc))
    raster_length, raster_crc = r.unpack("<II", "raster record entry") if version >= 3 else (0, 0)
    verify_length, verify_crc = r.unpack("<II", "verification record entry") if version >= 5 else (0, 0)
    if r.pos != len(r.data):
        raise ContainerError(f"header has {len(r.data) - r.pos} unexpected trailing bytes")
    if tile == 0 and overlap != 0:
        raise ContainerError("tile layout has an overlap but no tile size")
    header = Header(
        version, model, weights_hash, ref_hash, tuple(ref_shift), scale, (h, w), (ph, pw), {"tile": tile, "overlap": overlap} if tile else None,
        precision, codec, quality or None, lr_length, lr_crc, side, header_bytes=end + 4,
        raster_length=raster_length, raster_crc=raster_crc, ref_rotation=ref_rotation,
        verify_length=verify_length, verify_crc=verify_crc,
    )
    header.validate()
    if header.total_bytes != len(data):
        what = "truncated" if len(data) < header.total_bytes else "has trailing bytes"
        raise ContainerError(f"file {what}: {len(data)} bytes, header describes {header.total_bytes}")
    pos = header.header_bytes
    sections = [("LR image", lr_length, lr_crc)] + [(f"side tensor {e.name!r}", e.length, e.crc) for e in side]
    if raster_length:
        sections.append(("raster record", raster_length, raster_crc))
    if verify_length:
        sections.append(("verification record", verify_length, verify_crc))
    for label, length, crc in sections:
        if length < 1:
            raise ContainerError(f"{label} section is empty")
        if zlib.crc32(data[pos:pos + length]) != crc:
            raise ContainerError(f"{label} section checksum mismatch (file corrupted)")
        pos += length
    return header


def max_raster_bytes(size: tuple[int, int]) -> int:
    """The longest raster section of an image of ``size`` (H, W): 1 MiB for the record's JSON
    stream plus a zlib stream of a nodata mask of 3 bit planes (stored uncompressible: 5 bytes
    per 16 KiB block, 6 bytes of frame)."""
    h, w = (int(v) for v in size)
    mask = 3 * h * (-(-w // 8))
    return MAX_RASTER_BYTES + mask + 5 * (mask // 16384 + 1) + 6


def section_sizes(data: bytes) -> dict[str, int]:
    """Byte counts of a valid container: ``total``, ``header``, ``lr``, ``side`` and ``side:<name>`` each."""
    h = read_header(data)
    out = {"total": h.total_bytes, "header": h.header_bytes, "lr": h.lr_length, "side": sum(e.length for e in h.side)}
    out.update({f"side:{e.name}": e.length for e in h.side})
    if h.raster_length:
        out["raster"] = h.raster_length
    if h.verify_length:
        out["verification"] = h.verify_length
    return out


def inspect(data: bytes) -> dict[str, Any]:
    """What ``refscale info`` prints: the validated header, section sizes and bpp, without decoding pixels."""
    h = read_header(data)
    end = h.total_bytes - h.verify_length
    raster = RasterRecord.from_bytes(data[end - h.raster_length:end]) if h.raster_length else None
    verification = Verification.from_bytes(data[end:], h.padded_size, h.scale) if h.verify_length else None
    return {
        "format_version": h.version, "model": h.model, "weights_hash": h.weights_hash,
        "reference_fingerprint": h.ref_hash, "reference_shift": list(h.ref_shift), "reference_rotation": h.ref_rotation,
        "scale": h.scale,
        "size": list(h.size), "padded_size": list(h.padded_size), "lr_size": list(h.lr_size), "tiles": h.tiles,
        "precision": h.precision,
        "codec": h.codec, "quality": h.quality,
        "side": {e.name: {"dtype": e.dtype, "shape": list(e.shape), "compression": e.compression} for e in h.side},
        "raster": raster.summary() if raster is not None else None,
        "verification": verification.summary() if verification is not None else None,
        **_sizes_and_bpp(data, h.size),
    }


# ============================================================================= helpers
class _Reader:
    def __init__(self, data: bytes):
        self.data, self.pos = data, 0

    def take(self, n: int, what: str) -> bytes:
        if self.pos + n > len(self.data):
            raise ContainerError(f"header too short while reading the {what}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack(fmt, self.take(struct.calcsize(fmt), what))

    def str8(self, what: str) -> str:
        (n,) = self.unpack("<B", what)
        raw = self.take(n, what)
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            raise ContainerError(f"{what} is not ASCII") from None
        _check_name(text, what)
        return text


def _check_name(text: str, what: str) -> None:
    if not 1 <= len(text) <= MAX_NAME or not all(0x21 <= ord(c) <= 0x7E for c in text):
        raise ContainerError(f"{what} must be 1..{MAX_NAME} printable ASCII characters without spaces, got {text[:40]!r}")


def _str8(text: str) -> bytes:
    _check_name(text, "name")
    return struct.pack("<B", len(text)) + text.encode("ascii")


def _check_mask(record: RasterRecord | None, size: tuple[int, int]) -> None:
    if record is not None and record.mask is not None and (record.mask.height, record.mask.width) != tuple(size):
        raise ContainerError(f"raster record: the nodata mask is {record.mask.width}x{record.mask.height}, "
                             f"the image {size[1]}x{size[0]}")


def _pair(v) -> tuple[int, int]:
    a, b = v
    return int(a), int(b)


def _tiles(t) -> dict | None:
    if not t:
        return None
    return {"tile": int(t["tile"]), "overlap": int(t.get("overlap", 0))}


def _as_bytes(data) -> bytes:
    if isinstance(data, (bytes, bytearray, memoryview)):
        return bytes(data)
    raise ContainerError(f"expected the bytes of a .rsc file, got {type(data).__name__}")


def smallest_integer_array(name: str, arr) -> np.ndarray:
    """The side tensor in the smallest integer dtype of :data:`SIDE_DTYPES` that holds its range."""
    a = np.asarray(arr)
    if a.dtype == bool:
        a = a.astype(np.uint8)
    if not np.issubdtype(a.dtype, np.integer):
        raise ContainerError(f"side tensor {name!r} must be an integer array, got {a.dtype}")
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    for dt in SIDE_DTYPES:
        info = np.iinfo(dt)
        if info.min <= lo and hi <= info.max:
            return a.astype(dt)
    raise ContainerError(f"side tensor {name!r} values {lo}..{hi} do not fit int64")


def _compress(raw: bytes) -> tuple[str, bytes]:
    z = zlib.compress(raw, 9)
    x = lzma.compress(raw, format=lzma.FORMAT_RAW, filters=_LZMA_FILTERS)
    return ("lzma", x) if len(x) < len(z) else ("zlib", z)


def _decompress(blob: bytes, method: str, nbytes: int, name: str) -> bytes:
    """Decompress at most ``nbytes``; anything else (short, long, trailing garbage) is an error."""
    try:
        if method == "zlib":
            d = zlib.decompressobj()
            out = d.decompress(blob, nbytes + 1)
            done = d.eof and not d.unused_data
        else:
            d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=_LZMA_DECODE_FILTERS)
            out = d.decompress(blob, nbytes + 1)
            done = d.eof and not d.unused_data
    except (zlib.error, lzma.LZMAError) as e:
        raise ContainerError(f"side tensor {name!r} does not decompress: {e}") from None
    if len(out) != nbytes or not done:
        raise ContainerError(f"side tensor {name!r} decompresses to the wrong size (expected {nbytes} bytes)")
    return out


def _assemble(header: Header, quality: int | None, lr_bytes: bytes, side_blobs: list[bytes]) -> bytes:
    """Header (with the LR section's quality, length and CRC filled in) + LR + side sections."""
    header.quality, header.lr_length, header.lr_crc = quality, len(lr_bytes), zlib.crc32(lr_bytes)
    return header.pack() + lr_bytes + b"".join(side_blobs)


def bytes_for_bpp(bpp: float, size: tuple[int, int]) -> int:
    """The whole-file byte budget of ``bpp`` bits per pixel of an ``(H, W)`` image (rounded down)."""
    bpp = codecs.check_bpp(bpp)
    n = int(bpp * size[0] * size[1] // 8)
    if n < 1:
        raise InputError(f"{bpp} bpp of a {size[1]}x{size[0]} image is less than one byte")
    return n


def _sizes_and_bpp(data: bytes, size: tuple[int, int]) -> dict[str, Any]:
    sizes = section_sizes(data)
    px = size[0] * size[1]
    return {
        "sections": sizes, "bytes": sizes["total"],
        "bpp": sizes["total"] * 8 / px, "bpp_lr": sizes["lr"] * 8 / px, "bpp_side": sizes["side"] * 8 / px,
    }
