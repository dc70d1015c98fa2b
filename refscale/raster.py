"""Real rasters at the file edge: GeoTIFF (rasterio, the ``geo`` extra), 12/16-bit and float data,
band selection, and the record that lets the decoder give them back (format version 3).

The models work on 8-bit-trained RGB in [0, 1]. A file that is not plain 8-bit RGB reaches them
through three recorded steps, and the record (:class:`RasterRecord`, the container's raster
section, docs/format.md) lets the decoder undo them:

1. **Bands.** ``bands`` (1-based, rasterio's convention, e.g. ``[4, 3, 2]``) picks the three
   bands the model sees (or one, a greyscale image, replicated to RGB). A file with 1 or 3 bands
   needs no choice; with 2 or more than 3 bands, ``bands`` is required and the error lists the
   bands. A 4th TIFF band is never taken for alpha (RGB + NIR is common); a PNG's alpha is
   dropped with a warning as before.
2. **Intensity mapping**, per band, invertible on ``[lo, hi]``:
   ``x = clip((float32(v) - float32(lo)) / float32(hi - lo), 0, 1)`` (float32 arithmetic,
   NaN -> 0 with a warning) and back ``v = lo + x * (hi - lo)`` in float64, rounded half to
   even and clipped to the dtype's range for integer dtypes; a valid pixel that comes back equal
   to the nodata value moves to the nearest other value (1 for integers, 1 ulp for floats, on
   the side of the unrounded value, upwards on a tie), so it is never taken for a pixel without data. uint8 data use ``lo, hi = 0, 255``
   (the identity of the 8-bit pipeline). Other dtypes use by default (:data:`DEFAULT_RANGE`,
   ``"j0,100"``) the minimum and maximum of the valid pixels (finite, not nodata) of the chosen
   bands together, or ``value_range``: ``"pLO,HI"`` percentiles of each band's valid pixels,
   ``"jLO,HI"`` of all chosen bands together, or ``"LO,HI"`` / ``(LO, HI)`` one fixed range
   (e.g. ``0,10000`` for reflectance). The record always holds one range per band. Integer dtypes round ``lo`` down
   and ``hi`` up to integers; ``hi <= lo`` (a constant band) becomes ``lo + 1``. Pixels outside
   ``[lo, hi]`` are clipped (none with the default): that, and the model's 8-bit LR, is what the
   mapping costs
   (``benchmarks/raster_roundtrip.py``; docs/rasters.md, "The intensity mapping").
3. **Georeferencing** (rasterio): CRS as WKT, the affine geotransform, nodata, dtype, band
   count and descriptions are recorded; the decoder writes them back (``.tif``, optionally a
   Cloud Optimized GeoTIFF), and the LR written next to a container (``--lr-out lr.tif``) gets
   the geotransform scaled by the factor.

The reference of a raster image is read with the same bands and mapped with the *image's*
recorded mapping (an 8-bit reference is used as it is), so encoder and decoder see the same
8-bit reference, whose fingerprint the container checks.

A plain 8-bit RGB (or greyscale) file without georeferencing and without ``bands`` /
``value_range`` gets no record and goes through exactly the 8-bit path (:mod:`refscale.imageio`).
Without rasterio, a TIFF with GeoTIFF tags is refused with a message naming the ``geo`` extra
instead of silently losing its georeferencing.

**Pixels without data** (equal to the nodata value, or NaN / not finite in float data) are
masked: before the model, each window the pipeline runs is filled (:func:`fill`, :data:`FILL`:
every such pixel takes the value of the nearest valid pixel of its band in the window, so the
valid border is extended outward and no step between data and fill leaks into the valid pixels
through the model's support); after decoding they get the nodata value back (NaN for float data
without one; :func:`restore_nodata`). The decoder knows where they were from the record's mask
(:class:`Mask`: one bit plane shared by the bands, or one per band, zlib-compressed; record
version 2). A reference's nodata is not filled: the model sees it as it maps (NaN as 0).

**Scenes larger than memory** (:class:`RasterScene`, :class:`TiffSink`): a TIFF with more than
:data:`WINDOWED_PIXELS` pixels is read window by window, in the pipeline's own tile windows
(:mod:`refscale.tiling`), after one streaming pass over strips for the ranges and the mask; its
reference too, and the decoder writes the rebuilt scene window by window. Memory then holds the
tiles of one batch, one row of decoded cores, the 8-bit LR (the container stores it as one
image: scene / scale^2 x 3 bytes) and the mask (1 bit per pixel), not the scene.
"""
from __future__ import annotations

import json
import math
import os
import re
import tempfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from refscale.errors import ContainerError, InputError
from refscale.imageio import (CODECS_EXTRA_HINT, GEOTIFF_TAGS, TIFF_PLANAR_CONFIG, TIFF_SAMPLES_PER_PIXEL,
                              _array_to_tensor, frame_count, multi_frame_error, publish, read_array, tiff_tags,
                              write_image)

GEO_EXTRA_HINT = "pip install 'refscale[geo]'"
#: the range that maps to 0 and 1 when none is given: the minimum and maximum of the valid pixels
#: of the chosen bands together ("j0,100"): nothing is clipped and the bands keep their relative
#: levels (colour balance). Measured (benchmarks/raster_roundtrip.py, docs/rasters.md "The intensity
#: mapping"): clipping even 0.1% of the pixels per tail costs more on the 16-bit scale than the
#: coarser 8-bit steps of the full range, end to end too; a range per band shifts the colours the
#: learned models see and costs IRN 1 dB on the synthetic raster
DEFAULT_RANGE = "j0,100"
TIFF_SUFFIXES = (".tif", ".tiff")
#: source dtypes a record may name
DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
RECORD_VERSION = 2  # the newest record version: 2 when it carries a nodata mask, else 1 (as before)
MAX_RECORD_BYTES = 1 << 20
_KEYS = {"v", "dtype", "band_count", "bands", "descriptions", "ranges", "rule", "nodata", "crs", "transform"}
_MASK_KEYS = {"planes", "height", "width", "length"}
#: scenes with more pixels than this are read and written window by window (rasterio) by default
WINDOWED_PIXELS = 4096 * 4096
#: rows per strip of the streaming passes over a windowed scene (statistics, mask, fingerprint)
STRIP_ROWS = 256
#: GDAL's block cache for windowed scenes, MB (GDAL's own default is 5% of the RAM, which a
#: scene read once window by window would fill); the environment variable GDAL_CACHEMAX wins
GDAL_CACHE_MB = 256


# ============================================================================= the nodata mask
@dataclass(frozen=True)
class Mask:
    """Which pixels had no data (nodata value or NaN), ``planes x height x width`` bits: one
    plane shared by all bands the model saw, or one per band. ``bits`` are the rows packed
    with :func:`numpy.packbits` (most significant bit first, each row padded to whole bytes),
    C order; a set bit is a pixel without data."""

    planes: int
    height: int
    width: int
    bits: bytes

    @property
    def row_bytes(self) -> int:
        return -(-self.width // 8)

    @classmethod
    def from_bool(cls, invalid: np.ndarray) -> Mask:
        """From a bool array ``[C, H, W]`` (True = no data); identical planes are stored once."""
        if invalid.ndim != 3:
            raise ValueError(f"a mask is a bool array [C, H, W], got shape {invalid.shape}")
        return cls.from_packed(np.packbits(invalid, axis=-1), invalid.shape[-1])

    @classmethod
    def from_packed(cls, packed: np.ndarray, width: int) -> Mask:
        """From packed rows ``[C, H, ceil(W / 8)]`` (identical planes stored once)."""
        packed = shared_plane(packed)
        return cls(packed.shape[0], packed.shape[1], width, np.ascontiguousarray(packed).tobytes())

    def packed(self) -> np.ndarray:
        return np.frombuffer(self.bits, np.uint8).reshape(self.planes, self.height, self.row_bytes)

    def rows(self, y0: int = 0, y1: int | None = None) -> np.ndarray:
        """bool ``[planes, y1 - y0, width]`` of rows ``y0..y1``."""
        return np.unpackbits(self.packed()[:, y0:y1], axis=-1, count=self.width).astype(bool)




def shared_plane(planes: np.ndarray) -> np.ndarray:
    """``planes[:1]`` when all planes ``[C, ...]`` are identical (one mask for every band), else ``planes``."""
    if len(planes) > 1 and all(np.array_equal(planes[0], m) for m in planes[1:]):
        return planes[:1]
    return planes


# ============================================================================= the record
@dataclass
class RasterRecord:
    """What the 8-bit RGB image the model saw came from (docs/format.md, "Raster record").

    ``bands``: 1-based indices into the source's ``band_count`` bands (1 or 3 of them);
    ``ranges``: ``(lo, hi)`` of the intensity mapping, one per band; ``rule``: how they were
    chosen (informative); ``transform``: the affine geotransform ``(a, b, c, d, e, f)`` in
    rasterio's order (``x = a*col + b*row + c``, ``y = d*col + e*row + f``), ``crs`` its WKT.
    """

    dtype: str
    band_count: int
    bands: list[int]
    ranges: list[tuple[float, float]]
    descriptions: list[str | None] | None = None
    rule: str = "identity"
    nodata: float | None = None
    crs: str | None = None
    transform: tuple[float, ...] | None = None
    mask: Mask | None = None  # pixels without data, restored on decoding (record version 2)

    def __post_init__(self):
        if self.descriptions is None and isinstance(self.bands, list):
            self.descriptions = [None] * len(self.bands)

    @property
    def georeferenced(self) -> bool:
        return self.crs is not None or self.transform is not None

    # ------------------------------------------------------------------ bytes
    def validate(self) -> None:
        """Every rule of docs/format.md on the record; :class:`ContainerError` otherwise."""
        def bad(what):
            return ContainerError(f"raster record: {what}")

        if self.dtype not in DTYPES:
            raise bad(f"unknown dtype {self.dtype!r} (known: {', '.join(DTYPES)})")
        if not _is_int(self.band_count) or not 1 <= self.band_count <= 65535:
            raise bad(f"band count {self.band_count!r} out of range 1..65535")
        if not isinstance(self.bands, list) or len(self.bands) not in (1, 3) or \
                not all(_is_int(b) and 1 <= b <= self.band_count for b in self.bands):
            raise bad(f"bands {self.bands!r} must be 1 or 3 indices in 1..{self.band_count}")
        if not isinstance(self.ranges, list) or len(self.ranges) != len(self.bands):
            raise bad("one (lo, hi) range per band expected")
        for r in self.ranges:
            if not (isinstance(r, (list, tuple)) and len(r) == 2 and all(_is_num(v) and math.isfinite(v) for v in r)
                    and r[0] < r[1] and math.isfinite(r[1] - r[0])):
                raise bad(f"range {r!r} must be two finite numbers lo < hi (with a finite hi - lo)")
        if not isinstance(self.descriptions, list) or len(self.descriptions) != len(self.bands) or \
                not all(d is None or (isinstance(d, str) and len(d) <= 1024) for d in self.descriptions):
            raise bad("one description (a string of at most 1024 characters, or null) per band expected")
        if not isinstance(self.rule, str) or not 1 <= len(self.rule) <= 64:
            raise bad("rule must be a string of 1..64 characters")
        if self.nodata is not None and not _is_num(self.nodata):
            raise bad(f"nodata {self.nodata!r} must be a number")
        if self.crs is not None and (not isinstance(self.crs, str) or not 1 <= len(self.crs) <= 65536):
            raise bad("crs must be a WKT string of 1..65536 characters")
        if self.transform is not None:
            t = self.transform
            if not (isinstance(t, (list, tuple)) and len(t) == 6 and all(_is_num(v) and math.isfinite(v) for v in t)) \
                    or not (math.isfinite(t[0] * t[4] - t[1] * t[3]) and t[0] * t[4] - t[1] * t[3] != 0):
                raise bad(f"transform {t!r} must be six finite numbers with a non-zero determinant")
        m = self.mask
        if m is not None:
            if not (isinstance(m, Mask) and all(_is_int(v) for v in (m.planes, m.height, m.width))
                    and m.planes in (1, len(self.bands)) and 1 <= m.height <= 1 << 18 and 1 <= m.width <= 1 << 18):
                raise bad(f"mask must have 1 or {len(self.bands)} planes of 1..262144 x 1..262144 pixels")
            if not isinstance(m.bits, bytes) or len(m.bits) != m.planes * m.height * m.row_bytes:
                raise bad("mask bits do not match its size")

    def to_bytes(self) -> bytes:
        """The raster section: a zlib stream of UTF-8 JSON; with a mask (record version 2) followed
        by a zlib stream of its packed bits (docs/format.md)."""
        self.validate()
        nodata = self.nodata
        if nodata is not None and not math.isfinite(nodata):
            nodata = "nan" if math.isnan(nodata) else ("inf" if nodata > 0 else "-inf")
        obj = {"v": 1 if self.mask is None else RECORD_VERSION, "dtype": self.dtype, "band_count": int(self.band_count),
               "bands": [int(b) for b in self.bands], "descriptions": list(self.descriptions),
               "ranges": [[float(lo), float(hi)] for lo, hi in self.ranges], "rule": self.rule, "nodata": nodata,
               "crs": self.crs, "transform": None if self.transform is None else [float(v) for v in self.transform]}
        mask = b""
        if self.mask is not None:
            mask = zlib.compress(self.mask.bits, 9)
            obj["mask"] = {"planes": self.mask.planes, "height": self.mask.height, "width": self.mask.width,
                           "length": len(mask)}
        text = json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
        return zlib.compress(text.encode("utf-8"), 9) + mask

    @classmethod
    def from_bytes(cls, blob: bytes) -> RasterRecord:
        d = zlib.decompressobj()
        try:
            raw = d.decompress(bytes(blob), MAX_RECORD_BYTES + 1)
        except zlib.error as e:
            raise ContainerError(f"raster record does not decompress: {e}") from None
        if len(raw) > MAX_RECORD_BYTES or not d.eof:
            raise ContainerError("raster record is not one complete zlib stream of at most 1 MiB")
        rest = d.unused_data
        try:
            obj = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ContainerError(f"raster record is not UTF-8 JSON ({type(e).__name__})") from None
        if not isinstance(obj, dict) or obj.get("v") not in range(1, RECORD_VERSION + 1):
            version = obj.get("v") if isinstance(obj, dict) else None
            raise ContainerError(f"raster record version {version!r} unknown (this refscale reads 1 to {RECORD_VERSION})")
        keys = _KEYS | ({"mask"} if obj["v"] == 2 else set())
        if set(obj) != keys:
            raise ContainerError(f"raster record version {obj['v']} must be a JSON object with the keys {', '.join(sorted(keys))}")
        mask = _read_mask(obj["mask"], rest) if obj["v"] == 2 else None
        if mask is None and rest:
            raise ContainerError("raster record has trailing bytes")
        if not isinstance(obj["descriptions"], list):
            raise ContainerError("raster record: descriptions must be a list (one string or null per band)")
        nodata = obj["nodata"]
        if isinstance(nodata, str):
            if nodata not in ("nan", "inf", "-inf"):
                raise ContainerError(f"raster record: nodata {nodata!r} must be a number, nan, inf or -inf")
            nodata = float(nodata)
        rec = cls(dtype=obj["dtype"], band_count=obj["band_count"], bands=obj["bands"],
                  ranges=[tuple(r) if isinstance(r, list) else r for r in obj["ranges"]] if isinstance(obj["ranges"], list) else obj["ranges"],
                  descriptions=obj["descriptions"],
                  rule=obj["rule"], nodata=nodata, crs=obj["crs"],
                  transform=tuple(obj["transform"]) if isinstance(obj["transform"], list) else obj["transform"], mask=mask)
        rec.validate()
        return rec

    def summary(self) -> dict:
        """JSON-ready, for ``refscale info`` (the CRS by name, not its whole WKT)."""
        return {"dtype": self.dtype, "band_count": self.band_count, "bands": list(self.bands),
                "descriptions": list(self.descriptions), "ranges": [list(r) for r in self.ranges], "rule": self.rule,
                "nodata": None if self.nodata is None else (self.nodata if math.isfinite(self.nodata) else str(self.nodata)),
                "crs": crs_name(self.crs), "transform": None if self.transform is None else list(self.transform),
                "nodata_pixels": None if self.mask is None else
                [int(np.unpackbits(plane).sum()) for plane in self.mask.packed()]}  # padding bits are 0


def _read_mask(spec, blob: bytes) -> Mask:
    """The mask stream after the record's JSON, bounded by the size the JSON declares."""
    if not isinstance(spec, dict) or set(spec) != _MASK_KEYS or not all(_is_int(spec[k]) for k in _MASK_KEYS):
        raise ContainerError(f"raster record: mask must be an object of the integers {', '.join(sorted(_MASK_KEYS))}")
    planes, h, w = spec["planes"], spec["height"], spec["width"]
    if not (planes in (1, 3) and 1 <= h <= 1 << 18 and 1 <= w <= 1 << 18) or spec["length"] != len(blob):
        raise ContainerError(f"raster record: mask {spec} invalid (1 or 3 planes, sizes 1..262144, "
                             f"length = the {len(blob)} bytes after the record)")
    n = planes * h * (-(-w // 8))
    d = zlib.decompressobj()
    try:
        bits = d.decompress(blob, n + 1)
    except zlib.error as e:
        raise ContainerError(f"raster record: mask does not decompress: {e}") from None
    if len(bits) != n or not d.eof or d.unused_data:
        raise ContainerError(f"raster record: mask does not decompress to its {n} bytes")
    return Mask(planes, h, w, bits)


def crs_name(wkt: str | None) -> str | None:
    """The name in a WKT's first ``[...]`` (e.g. ``WGS 84 / UTM zone 31N``), else its start."""
    if wkt is None:
        return None
    m = re.match(r'\s*[A-Z_0-9]+\["([^"]*)"', wkt)
    return m.group(1) if m else wkt[:60]


def _no_constant(name):
    raise ValueError(f"non-standard JSON constant {name}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    """A JSON number a float holds (huge integers would overflow float arithmetic)."""
    return isinstance(v, float) or (_is_int(v) and abs(v) <= 2 ** 53)


# ============================================================================= reading
@dataclass
class RasterImage:
    """An image read for encoding: ``tensor`` ``[1,3,H,W]`` in [0,1] for the model and the
    ``record`` that maps it back (``None`` for a plain 8-bit file)."""

    tensor: torch.Tensor
    record: RasterRecord | None = None


@dataclass
class _Source:
    arr: np.ndarray | None  # [B, H, W] in the file's dtype (None: metadata only)
    descriptions: list[str | None]
    kinds: list[str]  # colour interpretation per band ('' when unknown)
    crs: str | None = None
    transform: tuple[float, ...] | None = None
    nodata: float | None = None
    tiff: bool = False


def have_rasterio() -> bool:
    try:
        import rasterio  # noqa: F401
    except ImportError:
        return False
    return True


def parse_bands(text) -> list[int] | None:
    """``"4,3,2"`` (or a sequence) -> ``[4, 3, 2]``; 1 or 3 positive indices."""
    if text is None:
        return None
    try:
        bands = [int(b) for b in (text.split(",") if isinstance(text, str) else text)]
    except (TypeError, ValueError):
        raise InputError(f"bands must be 1-based band numbers like 4,3,2, got {text!r}") from None
    if len(bands) not in (1, 3) or min(bands) < 1:
        raise InputError(f"give three bands (or one, greyscale), numbered from 1 like rasterio: got {text!r}")
    return bands


def parse_range(spec) -> tuple[str, float, float] | None:
    """``None``/``"auto"`` -> the default; ``"p2,98"`` -> percentiles of each band; ``"j0,100"`` ->
    percentiles of the bands' valid pixels together (one range for all); ``"0,10000"`` or
    ``(0, 10000)`` -> a fixed range for every band. Returns ``(kind, lo, hi)``, kind ``"p"``, ``"j"``
    or ``"fixed"``."""
    if spec is None or spec == "auto":
        return None
    kind = "fixed"
    if isinstance(spec, str):
        text = spec.strip()
        if text[:1].lower() in ("p", "j"):
            kind, text = text[0].lower(), text[1:]
        parts = text.split(",")
    else:
        parts = list(spec)
    try:
        lo, hi = (float(v) for v in parts)
    except (TypeError, ValueError):
        raise InputError(f"range must be LO,HI (e.g. 0,10000), pLO,HI percentiles of each band (e.g. p2,98) or jLO,HI "
                         f"percentiles of all bands together (e.g. j0,100), got {spec!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi) or (kind != "fixed" and not 0 <= lo < hi <= 100):
        raise InputError(f"range {spec!r}: need LO < HI" + (" within 0..100" if kind != "fixed" else ""))
    return kind, lo, hi


def read_raster(path, bands=None, value_range=None, windowed: bool | None = None,
                progress: bool = False) -> RasterImage | RasterScene:
    """Read an image or raster file for encoding (module doc): the model's tensor and the record.
    ``windowed``: a TIFF read by rasterio becomes a :class:`RasterScene`, read window by window
    by the pipeline (``None``: when it has more than :data:`WINDOWED_PIXELS` pixels; ``progress``:
    a progress bar over the strips of its first pass)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"image not found: {p}")
    bands = parse_bands(bands)
    spec = parse_range(value_range)
    if windowed is not False and p.suffix.lower() in TIFF_SUFFIXES and have_rasterio():
        scene = RasterScene.open_image(p, bands, spec, force=bool(windowed), progress=progress)
        if scene is not None:
            return scene
    elif windowed:
        raise InputError(f"reading {p.name} window by window needs a TIFF and rasterio ({GEO_EXTRA_HINT})")
    src = _read_source(p)
    if src is None:  # not a TIFF: Pillow (16-bit colour PNG through imagecodecs)
        arr = read_array(p)
        if arr.dtype == np.uint8 and bands is None and spec is None:  # the 8-bit path, unchanged
            return RasterImage(_array_to_tensor(arr, p.name), None)
        src = _source_from_array(arr, p)
    b, h, w = src.arr.shape
    dtype = src.arr.dtype
    plain = dtype == np.uint8 and b in (1, 3) and bands is None and spec is None and src.crs is None and \
        src.transform is None and src.nodata is None
    if plain:
        return RasterImage(_array_to_tensor(np.moveaxis(src.arr, 0, -1), p.name), None)
    if dtype.name not in DTYPES:
        raise InputError(f"{p.name}: unsupported pixel type {dtype.name} (supported: {', '.join(DTYPES)})")
    bands = _choose_bands(src, bands, p.name)
    sel = src.arr[[i - 1 for i in bands]]
    ranges, rule = _ranges(sel, src.nodata, spec)
    invalid = invalid_pixels(sel, src.nodata)
    record = RasterRecord(dtype=dtype.name, band_count=b, bands=bands, ranges=ranges,
                          descriptions=[src.descriptions[i - 1] for i in bands], rule=rule,
                          nodata=src.nodata, crs=src.crs, transform=src.transform,
                          mask=None if invalid is None else Mask.from_bool(invalid))
    record.validate()
    return RasterImage(to_model(sel, ranges, p.name, warn_nan=False), record)


def invalid_pixels(sel: np.ndarray, nodata) -> np.ndarray | None:
    """bool ``[C, H, W]``: samples without data (equal to ``nodata``, or not finite), or None if there are none."""
    bad = None
    if np.issubdtype(sel.dtype, np.floating):
        bad = ~np.isfinite(sel)
    if nodata is not None and not math.isnan(nodata):
        eq = sel == nodata
        bad = eq if bad is None else bad | eq
    return bad if bad is not None and bad.any() else None


def read_reference(path, record: RasterRecord | None) -> torch.Tensor:
    """The reference of an image with ``record``, as the model sees it: the same bands, mapped
    with the image's recorded ranges (an 8-bit reference as it is). ``record=None``: the 8-bit path."""
    from refscale.imageio import as_image_tensor

    if record is None or isinstance(path, (torch.Tensor, np.ndarray)):
        return as_image_tensor(path)
    p = Path(path)
    if not p.is_file():
        raise InputError(f"image not found: {p}")
    src = _read_source(p)
    if src is None:
        src = _source_from_array(read_array(p), p)
    indexes, ranges = _reference_mapping(p.name, src.arr.shape[0], src.arr.dtype, record)
    return to_model(src.arr[[i - 1 for i in indexes]], ranges, p.name)


def _reference_mapping(name: str, b: int, dtype: np.dtype, record: RasterRecord) -> tuple[list[int], list]:
    """The bands (1-based) of a reference with ``b`` bands of ``dtype`` that the model sees, and
    their ranges: the image's bands (or all, when it has just as many), the image's recorded
    ranges (identity for 8-bit data)."""
    if b >= max(record.bands):
        indexes = list(record.bands)
    elif b == len(record.bands):
        indexes = list(range(1, b + 1))
    else:
        raise InputError(f"reference {name} has {b} bands; the image uses bands {','.join(map(str, record.bands))}")
    if dtype == np.uint8:
        return indexes, [(0.0, 255.0)] * len(indexes)
    if np.dtype(dtype).name != record.dtype:
        raise InputError(f"reference {name} is {np.dtype(dtype).name} but the image was {record.dtype}: give a reference "
                         "of the same type (mapped with the image's recorded ranges) or an 8-bit one")
    return indexes, record.ranges


def to_model(sel: np.ndarray, ranges, name: str, warn_nan: bool = True, warn_grey: bool = True) -> torch.Tensor:
    """``[C, H, W]`` source pixels (C = 1 or 3) -> ``[1,3,H,W]`` float32 in [0,1] (module doc, step 2).
    NaN becomes 0 (the image's are masked and filled by the pipeline; ``warn_nan`` for a reference's)."""
    out = np.empty(sel.shape, np.float32)
    for c, (lo, hi) in enumerate(ranges):
        out[c] = (sel[c].astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    if np.isnan(out).any():
        if warn_nan:
            warnings.warn(f"{name} has NaN pixels; given to the model as 0", stacklevel=3)
        np.nan_to_num(out, copy=False, nan=0.0)
    np.clip(out, 0.0, 1.0, out=out)
    if out.shape[0] == 1:
        if warn_grey:
            warnings.warn(f"{name} is greyscale; converted to RGB", stacklevel=3)
        out = np.repeat(out, 3, axis=0)
    return torch.from_numpy(np.ascontiguousarray(out)).unsqueeze(0)


#: how pixels without data are filled in each window before the model sees it: "nearest" (the
#: value of the nearest valid pixel of the same band in the window, i.e. the valid border
#: extended outward), "mean" (the window's mean of the band's valid pixels) or "zero". Measured
#: (benchmarks/raster_roundtrip.py --nodata; docs/rasters.md, "Nodata and NaN"): see there
FILL = "nearest"


def fill(x: torch.Tensor, invalid: np.ndarray, mode: str | None = None) -> torch.Tensor:
    """Fill the pixels without data of a batch of windows ``x`` ``[N,3,h,w]`` (in place) so they do
    not poison their valid neighbours through the model's support; ``invalid`` bool ``[N,C,h,w]``
    (C = 1: all channels; C = 3: per channel). Per window, so tiled, untiled and windowed runs
    fill alike; a band without any valid pixel in the window becomes 0. Returns ``x``."""
    from scipy import ndimage

    mode = FILL if mode is None else mode
    a = x.numpy()
    for n in range(a.shape[0]):
        for c in range(invalid.shape[1]):
            m = invalid[n, c]
            if not m.any():
                continue
            chans = range(3) if invalid.shape[1] == 1 else (c,)
            if m.all() or mode == "zero":
                for ch in chans:
                    a[n, ch][m] = 0.0
            elif mode == "mean":
                for ch in chans:
                    a[n, ch][m] = a[n, ch][~m].mean()
            else:
                iy, ix = ndimage.distance_transform_edt(m, return_distances=False, return_indices=True)
                for ch in chans:
                    a[n, ch] = a[n, ch][iy, ix]
    return x


def restore_nodata(arr: np.ndarray, invalid: np.ndarray, record: RasterRecord) -> np.ndarray:
    """Write the record's nodata value (NaN for float data without one) into ``arr`` ``[C, h, w]``
    where ``invalid`` (``[1 or C, h, w]``) is set: the pixels that had no data get it back."""
    value = float("nan") if record.nodata is None else record.nodata
    if invalid.any() and _representable(value, arr.dtype):
        arr[np.broadcast_to(invalid, arr.shape)] = value
    return arr


def from_model(x, record: RasterRecord) -> np.ndarray:
    """The inverse mapping: ``[1,3,H,W]`` / ``[3,H,W]`` in [0,1] -> ``[C, H, W]`` in the record's dtype
    (C = the record's band count; a greyscale image is the mean of the three channels)."""
    t = x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.dim() == 4:
        t = t[0]
    a = t.double().clamp(0, 1).numpy()
    if len(record.bands) == 1:
        a = a.mean(axis=0, keepdims=True)
    dtype = np.dtype(record.dtype)
    out = np.empty(a.shape, dtype)
    for c, (lo, hi) in enumerate(record.ranges):
        v = lo + a[c] * (hi - lo)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            out[c] = np.clip(np.rint(v), info.min, info.max).astype(dtype)
        else:
            out[c] = v.astype(dtype)
        _off_nodata(out[c], v, record.nodata)
    return out


def _off_nodata(band: np.ndarray, v: np.ndarray, nodata) -> None:
    """Move the pixels of ``band`` (in place) that equal ``nodata`` to the nearest other value of
    the dtype, on the side of their unrounded values ``v`` (upwards on a tie or at the dtype's
    minimum, downwards at its maximum): the decoder's valid pixels never read as nodata
    (:func:`restore_nodata` then writes nodata where the mask says)."""
    if nodata is None or not _representable(nodata, band.dtype):
        return  # none, NaN (never equal) or outside the dtype (never produced)
    hit = band == nodata
    if not hit.any():
        return
    up = v[hit] >= nodata
    if np.issubdtype(band.dtype, np.integer):
        info = np.iinfo(band.dtype)
        up = (up | (nodata == info.min)) & (nodata != info.max)
        band[hit] = np.where(up, int(nodata) + 1, int(nodata) - 1).astype(band.dtype)
    else:
        t = band.dtype.type
        band[hit] = np.where(up, np.nextafter(t(nodata), t(np.inf)), np.nextafter(t(nodata), t(-np.inf)))


def _choose_bands(src: _Source, bands: list[int] | None, name: str) -> list[int]:
    b = len(src.descriptions)
    if bands is None:
        if b in (1, 3):
            return list(range(1, b + 1))
        raise InputError(f"{name} has {b} bands ({band_listing(src)}); choose the three the model sees, "
                         f"e.g. --bands {','.join(str(i) for i in range(min(b, 3), 0, -1))} (1-based; bands=[...] in Python)")
    if max(bands) > b:
        raise InputError(f"{name} has {b} bands ({band_listing(src)}); band {max(bands)} does not exist")
    return bands


def band_listing(src: _Source) -> str:
    items = []
    for i, (d, k) in enumerate(zip(src.descriptions, src.kinds), 1):
        label = d or (k if k not in ("", "gray", "undefined") else "")
        items.append(f"{i}" + (f" {label}" if label else ""))
    return ", ".join(items)


def _ranges(sel: np.ndarray, nodata, spec) -> tuple[list[tuple[float, float]], str]:
    if spec is None and sel.dtype == np.uint8:
        return [(0.0, 255.0)] * len(sel), "identity"
    kind, a, b = spec if spec is not None else parse_range(DEFAULT_RANGE)
    integer = np.issubdtype(sel.dtype, np.integer)

    def percentiles(values: np.ndarray) -> tuple[float, float]:
        valid = values[np.isfinite(values)] if not integer else values.ravel()
        if nodata is not None and not math.isnan(nodata):
            valid = valid[valid != nodata]
        if valid.size == 0:
            return 0.0, 1.0
        return tuple(float(v) for v in np.percentile(valid, (a, b)))

    per = [percentiles(band) for band in sel] if kind == "p" else None
    joint = percentiles(sel) if kind == "j" else None
    return _finish_ranges((kind, a, b), per, joint, len(sel), integer)


def _finish_ranges(spec, per, joint, n: int, integer: bool) -> tuple[list[tuple[float, float]], str]:
    """The ranges from each band's (``per``) or all bands' (``joint``) percentiles, and the rule."""
    kind, a, b = spec
    rule = f"{kind}{a:g},{b:g}" if kind != "fixed" else f"fixed {a:g},{b:g}"
    out = []
    for c in range(n):
        lo, hi = per[c] if kind == "p" else joint if kind == "j" else (a, b)
        if integer:
            lo, hi = float(math.floor(lo)), float(math.ceil(hi))
        if not hi > lo:
            hi = lo + 1.0
        out.append((lo, hi))
    return out, rule


# ----------------------------------------------------------------------------- sources
def _source_from_array(arr: np.ndarray, p: Path) -> _Source:
    """An ``HxW[xC]`` array from Pillow / imagecodecs -> bands first (a PNG's alpha dropped with a warning)."""
    if arr.ndim == 2:
        arr = arr[:, :, None]
    c = arr.shape[2]
    if p.suffix.lower() not in TIFF_SUFFIXES and c in (2, 4):
        warnings.warn(f"{p.name} has an alpha channel; dropped", stacklevel=4)
        arr = arr[:, :, :c - 1]
    return _Source(np.ascontiguousarray(np.moveaxis(arr, -1, 0)), [None] * arr.shape[2], [""] * arr.shape[2])


def _read_source(p: Path) -> _Source | None:
    """A TIFF's bands, georeferencing and descriptions (rasterio, else imagecodecs / Pillow), or
    None for any other file (read by Pillow)."""
    if p.suffix.lower() not in TIFF_SUFFIXES:
        return None
    if have_rasterio():
        return _read_rasterio(p)
    tags = tiff_tags(p) or {}
    geo = sorted(name for tag, name in GEOTIFF_TAGS.items() if tag in tags)
    if geo:
        raise InputError(f"{p.name} is a GeoTIFF ({', '.join(geo)}); keeping its georeferencing needs rasterio: "
                         f"{GEO_EXTRA_HINT} (or convert it to a plain image first)")
    samples = tags.get(TIFF_SAMPLES_PER_PIXEL, 1)
    pages = frame_count(p)
    if pages > 1:
        raise multi_frame_error(p.name, pages)
    try:
        import imagecodecs
    except ImportError:
        imagecodecs = None
    if imagecodecs is not None:
        try:
            arr = imagecodecs.tiff_decode(p.read_bytes())
        except Exception as e:  # noqa: BLE001 - any decoder failure is an unreadable file
            raise InputError(f"cannot read image {p}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        if arr.ndim == 3 and tags.get(TIFF_PLANAR_CONFIG) == 2 and arr.shape[0] == samples:
            arr = np.moveaxis(arr, 0, -1)  # planar (separate) storage
    elif samples in (1, 3):
        arr = read_array(p)
    else:
        raise InputError(f"{p.name} has {samples} bands; reading it needs rasterio ({GEO_EXTRA_HINT}) or imagecodecs "
                         f"({CODECS_EXTRA_HINT})")
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return _Source(np.ascontiguousarray(np.moveaxis(arr, -1, 0)), [None] * arr.shape[2], [""] * arr.shape[2], tiff=True)


def _read_rasterio(p: Path) -> _Source:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(p) as src:
                _one_page(src, p)
                return _rasterio_source(src, src.read())
    except RasterioIOError as e:
        raise InputError(f"cannot read image {p}: {str(e).splitlines()[0]}") from None


def _rasterio_source(src, arr: np.ndarray | None) -> _Source:
    """The metadata of an open rasterio dataset (and its pixels ``arr``, or None)."""
    identity = tuple(src.transform)[:6] == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    transform = None if identity and src.crs is None else tuple(float(v) for v in tuple(src.transform)[:6])
    crs = src.crs.to_wkt() if src.crs is not None else None
    kinds = [ci.name for ci in src.colorinterp]
    return _Source(arr, list(src.descriptions), kinds, crs=crs, transform=transform,
                   nodata=None if src.nodata is None else float(src.nodata), tiff=True)



# ============================================================================= windowed scenes
class RasterScene:
    """A raster read window by window (rasterio), for scenes larger than memory.

    :meth:`open_image` makes one streaming pass over strips of :data:`STRIP_ROWS` rows for the
    record (the ranges: minimum and maximum of the valid pixels, i.e. ``j0,100``, ``p0,100`` or a
    fixed range; other percentiles would need the whole scene and are refused) and the nodata
    mask; :meth:`open_reference` maps a reference with an image's record and fingerprints it in
    one pass. :meth:`window` then reads ``[1,3,h,w]`` in [0,1] and the pixels without data of any
    window: the same values :func:`read_raster` / :func:`read_reference` give for that region, so
    the pipeline's windowed and in-memory paths see the same pixels."""

    def __init__(self, path: Path, indexes: list[int], ranges, size: tuple[int, int], nodata=None,
                 record: RasterRecord | None = None, masked: bool = True):
        _limit_gdal_cache()
        self.path, self.indexes, self.ranges, self.size = path, indexes, ranges, size
        self.nodata, self.record, self.masked = nodata, record, masked
        self._src = None

    @classmethod
    def open_image(cls, p: Path, bands, spec, force: bool = False, progress: bool = False) -> RasterScene | None:
        """The scene of an image to encode (None when not ``force`` and it is small enough to read whole)."""
        from rasterio.windows import Window

        with _open_rasterio(p) as src:
            h, w = src.height, src.width
            if not force and h * w <= WINDOWED_PIXELS:
                return None
            _limit_gdal_cache()  # before the scan (also set by __init__, for references)
            meta = _rasterio_source(src, None)
            dtype = np.dtype(src.dtypes[0])
            if dtype.name not in DTYPES or len(set(src.dtypes)) != 1:
                raise InputError(f"{p.name}: unsupported pixel type {', '.join(sorted(set(src.dtypes)))} "
                                 f"(supported: {', '.join(DTYPES)})")
            bands = _choose_bands(meta, bands, p.name)
            kind, a, b = spec if spec is not None else (("fixed", 0.0, 255.0) if dtype == np.uint8
                                                        else parse_range(DEFAULT_RANGE))
            if kind != "fixed" and (a, b) != (0.0, 100.0):
                raise InputError(f"{p.name} ({w}x{h}) is read window by window: percentile ranges other than 0,100 "
                                 "need the whole scene; use --range j0,100, p0,100 or LO,HI")
            n = len(bands)
            lo, hi = [math.inf] * n, [-math.inf] * n
            bits = None  # packed mask rows, one plane until the bands' masks differ
            for y in _strips(h, progress, f"scan {p.name}"):
                sel = src.read(bands, window=Window(0, y, w, min(STRIP_ROWS, h - y)))
                bad = invalid_pixels(sel, meta.nodata)
                for c in range(n):
                    valid = sel[c] if bad is None else sel[c][~bad[c]]
                    if valid.size:
                        lo[c], hi[c] = min(lo[c], float(valid.min())), max(hi[c], float(valid.max()))
                if bad is None:
                    continue
                planes = len(shared_plane(bad))
                if bits is None:
                    bits = np.zeros((planes, h, -(-w // 8)), np.uint8)
                elif planes > bits.shape[0]:
                    bits = np.repeat(bits, n, axis=0)
                bits[:, y:y + len(sel[0])] = np.packbits(bad[:bits.shape[0]], axis=-1)
        per = [(a_, b_) if a_ <= b_ else (0.0, 1.0) for a_, b_ in zip(lo, hi)]
        joint = (min(lo), max(hi)) if min(lo) <= max(hi) else (0.0, 1.0)
        if spec is None and dtype == np.uint8:
            ranges, rule = [(0.0, 255.0)] * n, "identity"
        else:
            ranges, rule = _finish_ranges((kind, a, b), per, joint, n, np.issubdtype(dtype, np.integer))
        record = RasterRecord(dtype=dtype.name, band_count=len(meta.descriptions), bands=bands, ranges=ranges,
                              descriptions=[meta.descriptions[i - 1] for i in bands], rule=rule, nodata=meta.nodata,
                              crs=meta.crs, transform=meta.transform,
                              mask=None if bits is None else Mask.from_packed(bits, w))
        record.validate()
        if n == 1:
            warnings.warn(f"{p.name} is greyscale; converted to RGB", stacklevel=3)
        return cls(p, bands, ranges, (h, w), meta.nodata, record)

    @classmethod
    def open_reference(cls, path, record: RasterRecord) -> RasterScene:
        """The reference of an image with ``record``, window by window (as :func:`read_reference`:
        its nodata and NaN are given to the model as they map, not filled)."""
        p = Path(path)
        if not p.is_file():
            raise InputError(f"image not found: {p}")
        with _open_rasterio(p) as src:
            b, dtype = src.count, np.dtype(src.dtypes[0])
            size = (src.height, src.width)
        indexes, ranges = _reference_mapping(p.name, b, dtype, record)
        return cls(p, indexes, ranges, size, masked=False)

    def window(self, y0: int, y1: int, x0: int, x1: int) -> tuple[torch.Tensor, np.ndarray | None]:
        """Rows ``y0..y1``, columns ``x0..x1``: ``([1,3,h,w] in [0,1], bool [C,h,w] without data or None)``."""
        from rasterio.windows import Window

        if self._src is None:
            self._src = _open_rasterio(self.path)
        sel = self._src.read(self.indexes, window=Window(x0, y0, x1 - x0, y1 - y0))
        bad = invalid_pixels(sel, self.nodata) if self.masked else None
        if bad is not None:
            bad = shared_plane(bad)  # one plane for all bands, as the record stores it: filled once
        return to_model(sel, self.ranges, self.path.name, warn_nan=not self.masked, warn_grey=False), bad

    def rows_u8(self, progress: bool = False):
        """The scene's 8-bit pixels ``[rows, W, 3]``, strip by strip from the top (what
        :func:`refscale.pipeline.fingerprint` hashes for a scene read window by window)."""
        from refscale.metrics import to_uint8

        h, w = self.size
        for y in _strips(h, progress, f"fingerprint {self.path.name}"):
            t, _ = self.window(y, min(y + STRIP_ROWS, h), 0, w)
            yield to_uint8(t)[0].permute(1, 2, 0).contiguous().numpy()

    def close(self) -> None:
        if self._src is not None:
            self._src.close()
            self._src = None

    def __del__(self):
        self.close()


def _strips(h: int, progress: bool, desc: str):
    """Strip origins ``0, STRIP_ROWS, ...`` below ``h``, with a progress bar if asked."""
    ys = range(0, h, STRIP_ROWS)
    if not progress:
        return ys
    from tqdm import tqdm

    return tqdm(ys, desc=desc, unit="strip", leave=False, dynamic_ncols=True)


def _limit_gdal_cache() -> None:
    """Cap GDAL's block cache at :data:`GDAL_CACHE_MB` for the windowed paths (unless GDAL_CACHEMAX is set)."""
    if "GDAL_CACHEMAX" not in os.environ:
        from rasterio.env import set_gdal_config

        set_gdal_config("GDAL_CACHEMAX", GDAL_CACHE_MB)


def _open_rasterio(p: Path):
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning, RasterioIOError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            src = rasterio.open(p)
    except RasterioIOError as e:
        raise InputError(f"cannot read image {p}: {str(e).splitlines()[0]}") from None
    _one_page(src, p)
    return src


def _one_page(src, p: Path) -> None:
    """Refuse (closing ``src``) a TIFF of several pages, which GDAL lists as subdatasets (its
    overviews and masks are not): reading would take the first page without a word."""
    pages = len(src.subdatasets)
    if pages > 1:
        src.close()
        raise multi_frame_error(p.name, pages)


# ============================================================================= writing
def write_decoded(x, path, record: RasterRecord | None, *, cog: bool = False, overwrite: bool = False) -> Path:
    """Write a decoded image ``[1,3,H,W]`` with its record: original dtype and bands; in a ``.tif``
    (rasterio) with its CRS, geotransform, nodata and band descriptions, a Cloud Optimized GeoTIFF
    with ``cog``. ``record=None``: an 8-bit RGB image (as :func:`refscale.imageio.write_image`)."""
    if record is None:
        if not cog:
            return write_image(x, path, overwrite=overwrite)
        record = RasterRecord(dtype="uint8", band_count=3, bands=[1, 2, 3], ranges=[(0.0, 255.0)] * 3)
    arr = from_model(x, record)
    if record.mask is not None:
        restore_nodata(arr, record.mask.rows(), record)
    return _write(arr, Path(path), record, record.transform, cog=cog, overwrite=overwrite, nodata=record.nodata)


def write_lr(lr_u8: np.ndarray, path, record: RasterRecord | None, scale: int, *, overwrite: bool = False) -> Path:
    """Write the stored 8-bit LR ``[h, w, 3]``. With a record and a ``.tif`` path: a GeoTIFF whose
    geotransform is the image's scaled by ``scale`` (an LR pixel covers ``scale x scale`` image
    pixels), the record's band descriptions, and per band GDAL scale/offset ``(hi - lo) / 255``,
    ``lo`` that give the values in the source's units. Otherwise the 8-bit RGB LR as stored."""
    p = Path(path)
    if record is None or p.suffix.lower() not in TIFF_SUFFIXES:
        if record is not None and record.georeferenced:
            warnings.warn(f"{p.name} holds no georeferencing (CRS, geotransform); write a .tif to keep it", stacklevel=2)
        return write_image(lr_u8, p, overwrite=overwrite)
    arr = np.moveaxis(np.asarray(lr_u8, np.uint8), -1, 0)
    if len(record.bands) == 1:
        arr = np.rint(arr.mean(axis=0, keepdims=True)).astype(np.uint8)
    t = record.transform
    lr_transform = None if t is None else (t[0] * scale, t[1] * scale, t[2], t[3] * scale, t[4] * scale, t[5])
    scales = [(hi - lo) / 255.0 for lo, hi in record.ranges]
    offsets = [lo for lo, _ in record.ranges]
    nodata = None
    if record.mask is not None:  # an LR pixel is nodata (0) when none of its image pixels has data
        arr = np.maximum(arr, 1)
        arr[np.broadcast_to(_lr_mask(record.mask, scale, arr.shape[1:]), arr.shape)] = 0
        nodata = 0
    return _write(arr, p, record, lr_transform, overwrite=overwrite, nodata=nodata, scales_offsets=(scales, offsets))


def _lr_mask(mask: Mask, scale: int, lr_size: tuple[int, int], rows: int = 256) -> np.ndarray:
    """bool ``[planes, h, w]``: LR pixels all of whose ``scale x scale`` image pixels are without
    data (the padding past the image's edge repeats its last row and column)."""
    h, w = lr_size
    out = np.empty((mask.planes, h, w), bool)
    for y in range(0, h, rows):
        y1 = min(y + rows, h)
        m = mask.rows(min(y * scale, mask.height - 1), min(y1 * scale, mask.height))
        m = np.pad(m, ((0, 0), (0, (y1 - y) * scale - m.shape[1]), (0, w * scale - m.shape[2])), mode="edge")
        out[:, y:y1] = m.reshape(mask.planes, y1 - y, scale, w, scale).all(axis=(2, 4))
    return out


def _write(arr: np.ndarray, p: Path, record: RasterRecord, transform, *, cog: bool = False, overwrite: bool = False,
           nodata=None, scales_offsets=None) -> Path:
    """``[C, H, W]`` in any supported dtype to ``p`` by suffix, atomically, umask honoured."""
    if p.exists() and not overwrite:
        raise InputError(f"{p} exists; refusing to overwrite it")
    suffix = p.suffix.lower()
    tif = suffix in TIFF_SUFFIXES
    if cog and not tif:
        raise InputError(f"a Cloud Optimized GeoTIFF (--cog) needs a .tif output, not {p.name}")
    if tif and have_rasterio():
        return _write_rasterio(arr, p, record, transform, cog=cog, nodata=nodata, scales_offsets=scales_offsets)
    if tif and (record.georeferenced or cog):
        what = "a Cloud Optimized GeoTIFF" if cog else "the georeferencing (CRS, geotransform)"
        raise InputError(f"writing {what} to {p.name} needs rasterio: {GEO_EXTRA_HINT} (or write a .png)")
    if record.georeferenced:
        warnings.warn(f"{p.name} holds no georeferencing (CRS, geotransform); write a .tif to keep it", stacklevel=3)
    hwc = np.ascontiguousarray(np.moveaxis(arr, 0, -1))
    if arr.dtype == np.uint8 and arr.shape[0] in (1, 3):
        from PIL import Image

        from refscale.imageio import _format_for

        fmt = _format_for(p)
        image = Image.fromarray(hwc[:, :, 0] if arr.shape[0] == 1 else hwc, mode="L" if arr.shape[0] == 1 else "RGB")
        return _atomic(p, lambda f: image.save(f, format=fmt))
    try:
        import imagecodecs
    except ImportError:
        imagecodecs = None
    if suffix == ".png" and arr.dtype == np.uint16:
        if imagecodecs is None:
            raise InputError(f"writing a 16-bit PNG ({p.name}) needs imagecodecs: {CODECS_EXTRA_HINT} (or write a .tif)")
        data = imagecodecs.png_encode(hwc[:, :, 0] if arr.shape[0] == 1 else hwc)
        return _atomic(p, lambda f: f.write(data))
    if tif and imagecodecs is not None:
        data = imagecodecs.tiff_encode(hwc[:, :, 0] if arr.shape[0] == 1 else hwc, compression="zlib")
        return _atomic(p, lambda f: f.write(data))
    if tif:
        raise InputError(f"writing a {arr.dtype.name} TIFF ({p.name}) needs rasterio ({GEO_EXTRA_HINT}) or imagecodecs "
                         f"({CODECS_EXTRA_HINT})")
    raise InputError(f"{p.name} cannot hold the decoded {arr.dtype.name} image without losing bits: write a .tif"
                     + (" or .png" if arr.dtype == np.uint16 else ""))


def _atomic(p: Path, write) -> Path:
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
        publish(tmp, p)
    except BaseException:
        _unlink(tmp)
        raise
    return p


def _unlink(path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _write_rasterio(arr: np.ndarray, p: Path, record: RasterRecord, transform, *, cog: bool, nodata,
                    scales_offsets) -> Path:
    c, h, w = arr.shape
    profile = _profile(record, transform, (c, h, w), arr.dtype, nodata)
    if cog:
        profile.update(driver="COG", overview_resampling="average")
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp.tif", dir=p.parent)
    os.close(fd)
    with _rasterio_errors(p, tmp):
        with _open_for_writing(tmp, profile) as dst:
            dst.write(arr)
            _describe(dst, record, scales_offsets)
        publish(tmp, p)
    return p


def _profile(record: RasterRecord, transform, shape: tuple[int, int, int], dtype, nodata) -> dict:
    from rasterio.crs import CRS
    from rasterio.transform import Affine

    c, h, w = shape
    profile = {"driver": "GTiff", "width": w, "height": h, "count": c, "dtype": np.dtype(dtype).name, "compress": "deflate"}
    if record.crs is not None:
        profile["crs"] = CRS.from_wkt(record.crs)
    if transform is not None:
        profile["transform"] = Affine(*transform)
    if nodata is not None and _representable(nodata, np.dtype(dtype)):
        profile["nodata"] = nodata
    return profile


def _open_for_writing(path, profile):
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path, "w", **profile)


def _describe(dst, record: RasterRecord, scales_offsets=None) -> None:
    c = dst.count
    for i, d in enumerate(record.descriptions if len(record.descriptions) == c else [None] * c, 1):
        if d:
            dst.set_band_description(i, d)
    if scales_offsets is not None:
        dst.scales, dst.offsets = tuple(scales_offsets[0]), tuple(scales_offsets[1])
    dst.update_tags(REFSCALE_BANDS=",".join(map(str, record.bands)), REFSCALE_SOURCE_DTYPE=record.dtype)


class _rasterio_errors:
    """Remove the temporary ``tmp`` on any failure; rasterio's errors become one-line :class:`InputError`."""

    def __init__(self, p: Path, *tmps):
        self.p, self.tmps = p, tmps

    def __enter__(self):
        return self

    def __exit__(self, kind, e, tb):
        if kind is None:
            return False
        for t in self.tmps:
            _unlink(t)
        from rasterio.errors import RasterioError

        if isinstance(e, RasterioError):
            raise InputError(f"cannot write {self.p}: {str(e).splitlines()[0]}") from None
        return False


class TiffSink:
    """Writes a decoded scene into a GeoTIFF window by window (``refscale.pipeline.decode(...,
    sink=...)``): each core ``[1,3,h,w]`` is mapped back (:func:`from_model`), gets its nodata back
    (:func:`restore_nodata`), and waits in a buffer for the rest of its row of cores, which is
    then written as one full-width strip; memory is one row of cores, not the scene. The file
    is written under a temporary name and published by :meth:`close` (``cog``: copied into a
    Cloud Optimized GeoTIFF by GDAL first)."""

    def __init__(self, path, record: RasterRecord, size: tuple[int, int], padded: tuple[int, int], *,
                 cog: bool = False, overwrite: bool = False):
        self.p, self.record, self.size, self.padded, self.cog = Path(path), record, size, padded, cog
        if self.p.suffix.lower() not in TIFF_SUFFIXES:
            raise InputError(f"writing window by window needs a .tif output, not {self.p.name}")
        if self.p.exists() and not overwrite:
            raise InputError(f"{self.p} exists; refusing to overwrite it")
        self.p.parent.mkdir(parents=True, exist_ok=True)
        self.tmps = []
        for suffix in (".tmp.tif", ".cog.tif") if cog else (".tmp.tif",):
            fd, tmp = tempfile.mkstemp(prefix=f".{self.p.name}.", suffix=suffix, dir=self.p.parent)
            os.close(fd)
            self.tmps.append(tmp)
        self.dtype = np.dtype(record.dtype)
        _limit_gdal_cache()
        profile = _profile(record, record.transform, (len(record.bands), *size), self.dtype, record.nodata)
        profile.update(BIGTIFF="IF_SAFER", blockysize=1)  # strips of one row: any row range is whole strips
        with _rasterio_errors(self.p, *self.tmps):
            self.dst = _open_for_writing(self.tmps[0], profile)
        self.rows: dict[int, tuple[np.ndarray, np.ndarray | None]] = {}

    def put(self, core: tuple[int, int, int, int], y: torch.Tensor) -> None:
        """One decoded core (padded coordinates ``y0, y1, x0, x1``) ``[1,3,y1-y0,x1-x0]``."""
        (h, w), (y0, y1, x0, x1) = self.size, core
        if y0 >= h:
            return  # padding rows only
        yc, xc = min(y1, h), min(x1, w)
        if y0 not in self.rows:
            mask = self.record.mask.rows(y0, yc) if self.record.mask is not None else None
            self.rows[y0] = (np.empty((len(self.record.bands), yc - y0, w), self.dtype), mask)
        buf, mask = self.rows[y0]
        if x0 < w:
            a = from_model(y[..., :yc - y0, :xc - x0], self.record)
            if mask is not None:
                restore_nodata(a, mask[:, :, x0:xc], self.record)
            buf[:, :, x0:xc] = a
        if x1 >= self.padded[1]:
            from rasterio.windows import Window

            with _rasterio_errors(self.p, *self.tmps):
                self.dst.write(buf, window=Window(0, y0, w, yc - y0))
            del self.rows[y0]

    def close(self) -> Path:
        with _rasterio_errors(self.p, *self.tmps):
            if self.rows:
                raise InputError(f"{self.p}: {len(self.rows)} rows of tiles were never completed")
            _describe(self.dst, self.record)
            self.dst.close()
            out = self.tmps[0]
            if self.cog:
                from rasterio.shutil import copy

                copy(self.tmps[0], self.tmps[1], driver="COG", compress="deflate", overview_resampling="average",
                     BIGTIFF="IF_SAFER")
                _unlink(self.tmps[0])
                out = self.tmps[1]
            publish(out, self.p)
        return self.p

    def abort(self) -> None:
        self.dst.close()
        for t in self.tmps:
            _unlink(t)


def _representable(v: float, dtype: np.dtype) -> bool:
    if np.issubdtype(dtype, np.floating):
        return True
    info = np.iinfo(dtype)
    return math.isfinite(v) and float(v).is_integer() and info.min <= v <= info.max
