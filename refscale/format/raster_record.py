"""The raster record (docs/format.md, "Raster record"): what the 8-bit RGB image the model saw came
from -- source dtype, band count and the chosen bands, the intensity mapping's ranges, nodata,
CRS and geotransform, and the nodata mask (:class:`Mask`, record version 2) -- as the container's
raster section holds it: the fields, their validation and their bytes.

The pure data of the record, below any file: reading a raster into a record and writing one back
(rasterio, GDAL, the mapping, nodata fill, COG) is :mod:`refscale.io.raster`; docs/rasters.md
tells what each field means for a GeoTIFF.
"""
from __future__ import annotations

import json
import math
import re
import zlib
from dataclasses import dataclass

import numpy as np

from refscale.errors import ContainerError

#: source dtypes a record may name
DTYPES = ("uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64")
RECORD_VERSION = 2  # the newest record version: 2 when it carries a nodata mask, else 1 (as before)
MAX_RECORD_BYTES = 1 << 20
_KEYS = {"v", "dtype", "band_count", "bands", "descriptions", "ranges", "rule", "nodata", "crs", "transform"}
_MASK_KEYS = {"planes", "height", "width", "length"}


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

