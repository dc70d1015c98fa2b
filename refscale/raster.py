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
   even and clipped to the dtype's range for integer dtypes. uint8 data use ``lo, hi = 0, 255``
   (the identity of the 8-bit pipeline). Other dtypes use by default (:data:`DEFAULT_RANGE`,
   ``"j0,100"``) the minimum and maximum of the valid pixels (finite, not nodata) of the chosen
   bands together, or ``value_range``: ``"pLO,HI"`` percentiles of each band's valid pixels,
   ``"jLO,HI"`` of all chosen bands together, or ``"LO,HI"`` / ``(LO, HI)`` one fixed range
   (e.g. ``0,10000`` for reflectance). The record always holds one range per band. Integer dtypes round ``lo`` down
   and ``hi`` up to integers; ``hi <= lo`` (a constant band) becomes ``lo + 1``. Pixels outside
   ``[lo, hi]`` are clipped (none with the default): that, and the model's 8-bit LR, is what the
   mapping costs
   (``benchmarks/raster_roundtrip.py``; docs/results.md, "Real rasters (issue 16)").
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

Not yet (issue 16 items 4-5): nodata and NaN pixels are only recorded, not masked before the
model nor restored after; scenes are read whole (no windowed reading).
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
                              _array_to_tensor, publish, read_array, tiff_tags, write_image)

GEO_EXTRA_HINT = "pip install 'refscale[geo]'"
#: the range that maps to 0 and 1 when none is given: the minimum and maximum of the valid pixels
#: of the chosen bands together ("j0,100"): nothing is clipped and the bands keep their relative
#: levels (colour balance). Measured (benchmarks/raster_roundtrip.py, docs/results.md "Real rasters
#: (issue 16)"): clipping even 0.1% of the pixels per tail costs more on the 16-bit scale than the
#: coarser 8-bit steps of the full range, end to end too; a range per band shifts the colours the
#: learned models see and costs IRN 1 dB on the synthetic raster
DEFAULT_RANGE = "j0,100"
TIFF_SUFFIXES = (".tif", ".tiff")
#: source dtypes a record may name
DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
RECORD_VERSION = 1
MAX_RECORD_BYTES = 1 << 20
_KEYS = {"v", "dtype", "band_count", "bands", "descriptions", "ranges", "rule", "nodata", "crs", "transform"}


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

    def to_bytes(self) -> bytes:
        """The raster section: a zlib stream of UTF-8 JSON (docs/format.md)."""
        self.validate()
        nodata = self.nodata
        if nodata is not None and not math.isfinite(nodata):
            nodata = "nan" if math.isnan(nodata) else ("inf" if nodata > 0 else "-inf")
        obj = {"v": RECORD_VERSION, "dtype": self.dtype, "band_count": int(self.band_count),
               "bands": [int(b) for b in self.bands], "descriptions": list(self.descriptions),
               "ranges": [[float(lo), float(hi)] for lo, hi in self.ranges], "rule": self.rule, "nodata": nodata,
               "crs": self.crs, "transform": None if self.transform is None else [float(v) for v in self.transform]}
        text = json.dumps(obj, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
        return zlib.compress(text.encode("utf-8"), 9)

    @classmethod
    def from_bytes(cls, blob: bytes) -> RasterRecord:
        d = zlib.decompressobj()
        try:
            raw = d.decompress(bytes(blob), MAX_RECORD_BYTES + 1)
        except zlib.error as e:
            raise ContainerError(f"raster record does not decompress: {e}") from None
        if len(raw) > MAX_RECORD_BYTES or not d.eof or d.unused_data:
            raise ContainerError("raster record is not one complete zlib stream of at most 1 MiB")
        try:
            obj = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
        except (UnicodeDecodeError, ValueError, RecursionError) as e:
            raise ContainerError(f"raster record is not UTF-8 JSON ({type(e).__name__})") from None
        if not isinstance(obj, dict) or set(obj) != _KEYS:
            raise ContainerError(f"raster record must be a JSON object with the keys {', '.join(sorted(_KEYS))}")
        if obj["v"] != RECORD_VERSION:
            raise ContainerError(f"raster record version {obj['v']!r} unknown (this refscale reads {RECORD_VERSION})")
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
                  transform=tuple(obj["transform"]) if isinstance(obj["transform"], list) else obj["transform"])
        rec.validate()
        return rec

    def summary(self) -> dict:
        """JSON-ready, for ``refscale info`` (the CRS by name, not its whole WKT)."""
        return {"dtype": self.dtype, "band_count": self.band_count, "bands": list(self.bands),
                "descriptions": list(self.descriptions), "ranges": [list(r) for r in self.ranges], "rule": self.rule,
                "nodata": None if self.nodata is None else (self.nodata if math.isfinite(self.nodata) else str(self.nodata)),
                "crs": crs_name(self.crs), "transform": None if self.transform is None else list(self.transform)}


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
    arr: np.ndarray  # [B, H, W] in the file's dtype
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


def read_raster(path, bands=None, value_range=None) -> RasterImage:
    """Read an image or raster file for encoding (module doc): the model's tensor and the record."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"image not found: {p}")
    bands = parse_bands(bands)
    spec = parse_range(value_range)
    src = _read_source(p)
    if src is None:  # not a TIFF: Pillow (16-bit colour PNG through imagecodecs)
        arr = read_array(p)
        if arr.dtype == np.uint8 and bands is None and spec is None:  # the 8-bit path, unchanged
            return RasterImage(_array_to_tensor(arr, p.name), None)
        src = _source_from_array(arr, p)
    b, h, w = src.arr.shape
    dtype = src.arr.dtype
    plain = dtype == np.uint8 and b in (1, 3) and bands is None and spec is None and src.crs is None and src.transform is None
    if plain:
        return RasterImage(_array_to_tensor(np.moveaxis(src.arr, 0, -1), p.name), None)
    if dtype.name not in DTYPES:
        raise InputError(f"{p.name}: unsupported pixel type {dtype.name} (supported: {', '.join(DTYPES)})")
    bands = _choose_bands(src, bands, p.name)
    sel = src.arr[[i - 1 for i in bands]]
    ranges, rule = _ranges(sel, src.nodata, spec)
    record = RasterRecord(dtype=dtype.name, band_count=b, bands=bands, ranges=ranges,
                          descriptions=[src.descriptions[i - 1] for i in bands], rule=rule,
                          nodata=src.nodata, crs=src.crs, transform=src.transform)
    record.validate()
    return RasterImage(to_model(sel, ranges, p.name), record)


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
    b = src.arr.shape[0]
    if b >= max(record.bands):
        sel = src.arr[[i - 1 for i in record.bands]]
    elif b == len(record.bands):
        sel = src.arr
    else:
        raise InputError(f"reference {p.name} has {b} bands; the image uses bands {','.join(map(str, record.bands))}")
    if sel.dtype == np.uint8:
        return to_model(sel, [(0.0, 255.0)] * len(sel), p.name)
    if sel.dtype.name != record.dtype:
        raise InputError(f"reference {p.name} is {sel.dtype.name} but the image was {record.dtype}: give a reference "
                         "of the same type (mapped with the image's recorded ranges) or an 8-bit one")
    return to_model(sel, record.ranges, p.name)


def to_model(sel: np.ndarray, ranges, name: str) -> torch.Tensor:
    """``[C, H, W]`` source pixels (C = 1 or 3) -> ``[1,3,H,W]`` float32 in [0,1] (module doc, step 2)."""
    out = np.empty(sel.shape, np.float32)
    for c, (lo, hi) in enumerate(ranges):
        out[c] = (sel[c].astype(np.float32) - np.float32(lo)) / np.float32(hi - lo)
    if np.isnan(out).any():
        warnings.warn(f"{name} has NaN pixels; given to the model as 0 (not restored on decoding)", stacklevel=3)
        np.nan_to_num(out, copy=False, nan=0.0)
    np.clip(out, 0.0, 1.0, out=out)
    if out.shape[0] == 1:
        warnings.warn(f"{name} is greyscale; converted to RGB", stacklevel=3)
        out = np.repeat(out, 3, axis=0)
    return torch.from_numpy(np.ascontiguousarray(out)).unsqueeze(0)


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
            v = np.clip(np.rint(v), info.min, info.max)
        out[c] = v.astype(dtype)
    return out


def _choose_bands(src: _Source, bands: list[int] | None, name: str) -> list[int]:
    b = src.arr.shape[0]
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
    rule = f"{kind}{a:g},{b:g}" if kind != "fixed" else f"fixed {a:g},{b:g}"
    integer = np.issubdtype(sel.dtype, np.integer)

    def percentiles(values: np.ndarray) -> tuple[float, float]:
        valid = values[np.isfinite(values)] if not integer else values.ravel()
        if nodata is not None and not math.isnan(nodata):
            valid = valid[valid != nodata]
        if valid.size == 0:
            return 0.0, 1.0
        return tuple(float(v) for v in np.percentile(valid, (a, b)))

    joint = percentiles(sel) if kind == "j" else None
    out = []
    for band in sel:
        if kind == "p":
            lo, hi = percentiles(band)
        elif kind == "j":
            lo, hi = joint
        else:
            lo, hi = a, b
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
                arr = src.read()
                identity = tuple(src.transform)[:6] == (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
                transform = None if identity and src.crs is None else tuple(float(v) for v in tuple(src.transform)[:6])
                crs = src.crs.to_wkt() if src.crs is not None else None
                kinds = [ci.name for ci in src.colorinterp]
                return _Source(arr, list(src.descriptions), kinds, crs=crs, transform=transform,
                               nodata=None if src.nodata is None else float(src.nodata), tiff=True)
    except RasterioIOError as e:
        raise InputError(f"cannot read image {p}: {str(e).splitlines()[0]}") from None


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
    return _write(arr, p, record, lr_transform, overwrite=overwrite, scales_offsets=(scales, offsets))


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
    import rasterio
    from rasterio.crs import CRS
    from rasterio.errors import NotGeoreferencedWarning, RasterioError
    from rasterio.transform import Affine

    c, h, w = arr.shape
    profile = {"driver": "COG" if cog else "GTiff", "width": w, "height": h, "count": c, "dtype": arr.dtype.name,
               "compress": "deflate"}
    if cog:
        profile["overview_resampling"] = "average"
    if record.crs is not None:
        profile["crs"] = CRS.from_wkt(record.crs)
    if transform is not None:
        profile["transform"] = Affine(*transform)
    if nodata is not None and _representable(nodata, arr.dtype):
        profile["nodata"] = nodata
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp.tif", dir=p.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(tmp, "w", **profile) as dst:
                dst.write(arr)
                for i, d in enumerate(record.descriptions if len(record.descriptions) == c else [None] * c, 1):
                    if d:
                        dst.set_band_description(i, d)
                if scales_offsets is not None:
                    dst.scales, dst.offsets = tuple(scales_offsets[0]), tuple(scales_offsets[1])
                dst.update_tags(REFSCALE_BANDS=",".join(map(str, record.bands)), REFSCALE_SOURCE_DTYPE=record.dtype)
        publish(tmp, p)
    except RasterioError as e:
        _unlink(tmp)
        raise InputError(f"cannot write {p}: {str(e).splitlines()[0]}") from None
    except BaseException:
        _unlink(tmp)
        raise
    return p


def _representable(v: float, dtype: np.dtype) -> bool:
    if np.issubdtype(dtype, np.floating):
        return True
    info = np.iinfo(dtype)
    return math.isfinite(v) and float(v).is_integer() and info.min <= v <= info.max
