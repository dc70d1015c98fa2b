"""Choosing the reference from an archive (issue 29; docs/archive.md).

A ground station keeps every earlier acquisition. For a new scene, :func:`select_reference`
ranks the archive's images and picks the one the receiver should use as the reference:

1. **Candidates** (:func:`read_archive`): a folder of images / GeoTIFFs (searched recursively) or a
   static STAC catalog (``catalog.json``, local files, read with pystac: the ``stac`` extra). Each
   candidate has, where known, a footprint (a lon/lat bounding box: a GeoTIFF's bounds transformed
   from its CRS to EPSG:4326 by rasterio, a STAC item's ``bbox``, or a ``<stem>.geojson`` beside a
   plain image), a date (STAC ``datetime``, the TIFF tags ``TIFFTAG_DATETIME`` / ``ACQUISITION_DATE``,
   or a ``dates.txt`` in its folder: lines ``NAME: YYYYMMDD`` / ``NAME YYYY-MM-DD``, where ``NAME`` is
   the file name or stem, and the OSCD form ``date_N`` means ``imgN``) and a valid-pixel fraction
   (STAC ``eo:cloud_cover``; for the few read, the share of pixels that are not nodata).
2. **Metadata first, no pixels read**: a candidate whose footprint covers less than
   ``min_overlap`` of the new scene's, or that is not older than the new scene (both dates known),
   or that is the new scene's own file, is out.
3. **Pixels for the few left** (at most ``max_pixels``, largest overlap first): the candidate is
   read, cut to the new scene's footprint when both are georeferenced, brought to a working size,
   fingerprinted (identical to the new scene, the same fingerprint as
   :func:`refscale.pipeline.fingerprint`: out), registered to the new scene
   (:func:`refscale.registration.estimate_transform`) and scored by
   :func:`refscale.metrics.reference_agreement` of the new scene's LR with it: the decoder's own
   plausibility check. Below :data:`refscale.pipeline.MIN_REFERENCE_AGREEMENT` it shows another
   place: out.
4. **Rank** the rest by ``agreement x overlap x valid x recency`` (``recency = 0.5 ** (days / 1825)``:
   halves every five years; unknown overlap, validity or date count as 1). Without any
   georeferencing this is image agreement alone. Nothing left: "no suitable reference".

``find_by_fingerprint`` is the decoder's side: the archive image whose fingerprint is the one a
container records.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from refscale.errors import InputError

#: image suffixes a folder archive is searched for
ARCHIVE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".bmp")
#: longest side of the working images compared in the pixel stage (the LR compared is half of it)
WORK_SIDE = 256
#: candidates registered with rotation too (the best by translation-only agreement); the rest by translation
REFINE = 4
#: default: the share of the new scene's footprint a candidate must cover
MIN_OVERLAP = 0.5
#: default: the most candidates whose pixels are read (after the metadata stage); None = all
MAX_PIXELS = 16
#: recency weight: halves every this many days
RECENCY_HALF_LIFE_DAYS = 1825
STAC_EXTRA_HINT = 'pip install "refscale[stac]" (pystac)'


@dataclass
class Candidate:
    """One archive image and what is known about it (``bounds``: lon/lat ``(west, south, east, north)``)."""

    path: Path
    name: str
    bounds: tuple[float, float, float, float] | None = None
    date: dt.date | None = None
    valid: float | None = None
    georeferenced: bool = False  # its pixels lie on ``bounds`` (GeoTIFF, or a STAC asset with a bbox)
    fingerprint: str | None = None
    scores: dict = field(default_factory=dict)
    reason: str | None = None  # why it is out (None: suitable)

    def as_dict(self) -> dict:
        return {"path": str(self.path), "name": self.name, "suitable": self.reason is None, "reason": self.reason,
                "date": None if self.date is None else self.date.isoformat(),
                "bounds": None if self.bounds is None else [round(v, 6) for v in self.bounds],
                "fingerprint": self.fingerprint, "scores": {k: _round(v) for k, v in self.scores.items()}}


def _round(v):
    return round(v, 4) if isinstance(v, float) and math.isfinite(v) else v


# ============================================================================= metadata
def parse_date(text) -> dt.date | None:
    """``YYYYMMDD``, ``YYYY-MM-DD``, ``YYYY:MM:DD`` (TIFF), or an ISO datetime; None if empty."""
    if text is None:
        return None
    if isinstance(text, dt.datetime):
        return text.date()
    if isinstance(text, dt.date):
        return text
    s = str(text).strip()
    m = re.match(r"^(\d{4})[-:/]?(\d{2})[-:/]?(\d{2})", s)
    if not m:
        raise InputError(f"cannot read the date {s!r} (expected YYYY-MM-DD or YYYYMMDD)")
    try:
        return dt.date(int(m[1]), int(m[2]), int(m[3]))
    except ValueError:
        raise InputError(f"cannot read the date {s!r}") from None


def read_dates(folder: Path) -> dict[str, dt.date]:
    """``dates.txt`` of a folder: ``{file name or stem: date}`` (``date_N`` -> ``imgN``, OSCD)."""
    p = Path(folder) / "dates.txt"
    if not p.is_file():
        return {}
    out = {}
    for line in p.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.match(r"^(\S+?)\s*(?::\s*|\s+)(\S+)$", line)
        if not m:
            raise InputError(f"{p}: cannot read the line {line!r} (expected NAME: YYYYMMDD)")
        key, value = m[1], m[2]
        m = re.match(r"^date_(\d+)$", key)
        if m:
            key = f"img{m[1]}"
        out[key] = parse_date(value)
    return out


def bbox_of_geojson(obj) -> tuple[float, float, float, float]:
    """The lon/lat bounding box of a GeoJSON geometry, feature or feature collection."""
    xs, ys = [], []

    def walk(c):
        if isinstance(c, (list, tuple)) and c and isinstance(c[0], (int, float)):
            xs.append(float(c[0]))
            ys.append(float(c[1]))
        elif isinstance(c, (list, tuple)):
            for v in c:
                walk(v)

    def geoms(o):
        t = o.get("type")
        if t == "FeatureCollection":
            for f in o.get("features", []):
                yield from geoms(f)
        elif t == "Feature":
            if o.get("geometry"):
                yield from geoms(o["geometry"])
        elif t == "GeometryCollection":
            for g in o.get("geometries", []):
                yield from geoms(g)
        else:
            yield o

    for g in geoms(obj):
        walk(g.get("coordinates", []))
    if not xs:
        raise InputError("the GeoJSON has no coordinates")
    return min(xs), min(ys), max(xs), max(ys)


def _tiff_metadata(p: Path) -> tuple[tuple | None, dt.date | None, bool]:
    """``(lon/lat bounds, date, georeferenced)`` of a TIFF from its tags (rasterio, when installed)."""
    from refscale import raster

    if not raster.have_rasterio():
        return None, None, False
    import rasterio
    from rasterio.warp import transform_bounds

    try:
        with rasterio.open(p) as src:
            tags = src.tags()
            date = None
            for key in ("ACQUISITION_DATE", "DATE_ACQUIRED", "datetime", "TIFFTAG_DATETIME"):
                if tags.get(key):
                    try:
                        date = parse_date(tags[key])
                        break
                    except InputError:
                        pass
            if src.crs is None or src.transform.is_identity:
                return None, date, False
            b = transform_bounds(src.crs, "EPSG:4326", *src.bounds, densify_pts=21)
            return tuple(float(v) for v in b), date, True
    except rasterio.errors.RasterioError:
        return None, None, False


def describe(path, date=None, bounds=None, dates: dict | None = None) -> Candidate:
    """What is known about an image file without reading its pixels (module doc, step 1).
    ``date`` / ``bounds`` override what the file and its folder say."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"image not found: {p}")
    c = Candidate(p, p.name)
    if p.suffix.lower() in (".tif", ".tiff"):
        c.bounds, c.date, c.georeferenced = _tiff_metadata(p)
    side = p.with_suffix(".geojson")
    if c.bounds is None and side.is_file():
        c.bounds = bbox_of_geojson(json.loads(side.read_text()))
    if c.date is None:
        table = read_dates(p.parent) if dates is None else dates
        c.date = table.get(p.name) or table.get(p.stem)
    if date is not None:
        c.date = parse_date(date)
    if bounds is not None:
        c.bounds, c.georeferenced = tuple(float(v) for v in bounds), c.georeferenced or False
    return c


def read_archive(source) -> list[Candidate]:
    """The candidates of an archive: a folder of images (recursive; hidden entries skipped) or a
    static STAC catalog / collection JSON file (local assets)."""
    p = Path(source)
    if not p.exists():
        raise InputError(f"archive not found: {p}")
    if p.is_file():
        if p.suffix.lower() != ".json":
            raise InputError(f"archive {p} is neither a folder nor a STAC catalog (.json)")
        return read_stac(p)
    out, tables = [], {}
    for f in sorted(p.rglob("*")):
        rel = f.relative_to(p)
        if any(part.startswith(".") for part in rel.parts) or not f.is_file() or f.suffix.lower() not in ARCHIVE_SUFFIXES:
            continue
        if f.parent not in tables:
            tables[f.parent] = read_dates(f.parent)
        c = describe(f, dates=tables[f.parent])
        c.name = str(rel)
        out.append(c)
    if not out:
        raise InputError(f"no images in the archive {p}")
    return out


def read_stac(path) -> list[Candidate]:
    """Candidates of a static STAC catalog (every item, recursively): the item's image asset
    (role ``data`` or key ``visual`` / ``image``, else the first image asset), its ``bbox``
    (WGS84 by the STAC spec), ``datetime`` and ``eo:cloud_cover``."""
    try:
        import pystac
    except ImportError:
        raise InputError(f"a STAC catalog needs pystac: {STAC_EXTRA_HINT}") from None
    try:
        obj = pystac.read_file(str(path))
    except Exception as e:  # noqa: BLE001 - pystac raises many kinds
        raise InputError(f"cannot read the STAC catalog {path}: {str(e).splitlines()[0]}") from None
    items = [obj] if isinstance(obj, pystac.Item) else list(obj.get_items(recursive=True))
    out = []
    for item in items:
        asset = _image_asset(item)
        if asset is None:
            continue
        href = Path(asset.get_absolute_href() or asset.href)
        c = Candidate(href, item.id)
        if item.bbox:
            c.bounds, c.georeferenced = tuple(float(v) for v in item.bbox[:2] + item.bbox[-2:]) if len(item.bbox) == 6 \
                else tuple(float(v) for v in item.bbox), True
        when = item.datetime or item.common_metadata.start_datetime
        c.date = None if when is None else when.date()
        cc = item.properties.get("eo:cloud_cover")
        if cc is not None:
            c.valid = max(0.0, 1.0 - float(cc) / 100.0)
        out.append(c)
    if not out:
        raise InputError(f"no items with an image asset in the STAC catalog {path}")
    return out


def _image_asset(item):
    assets = item.assets
    for a in assets.values():
        if "data" in (a.roles or []):
            return a
    for key in ("visual", "image", "data"):
        if key in assets:
            return assets[key]
    for a in assets.values():
        if (a.media_type or "").startswith("image/") or Path(a.href).suffix.lower() in ARCHIVE_SUFFIXES:
            return a
    return None


def overlap(new: tuple, cand: tuple) -> float:
    """The share of the bounding box ``new`` covered by ``cand`` (lon/lat; 0-1)."""
    w, s = max(new[0], cand[0]), max(new[1], cand[1])
    e, n = min(new[2], cand[2]), min(new[3], cand[3])
    area = (new[2] - new[0]) * (new[3] - new[1])
    if e <= w or n <= s or area <= 0:
        return 0.0
    return (e - w) * (n - s) / area


# ============================================================================= pixels
def _read_pixels(path: Path) -> tuple[torch.Tensor, float]:
    """``(image [1,3,H,W] in [0,1] as the encoder reads it, valid-pixel fraction)``."""
    from refscale import raster

    img = raster.read_raster(path, windowed=False)
    rec = img.record
    valid = 1.0
    if rec is not None and rec.mask is not None:
        valid = 1.0 - float(rec.mask.rows().any(axis=0).mean())
    return img.tensor, valid


def _working(x: torch.Tensor, side: int = WORK_SIDE, size: tuple[int, int] | None = None) -> torch.Tensor:
    """``x`` resized (area / bilinear, antialiased) to ``size``, or to ``side`` on its longer side, even sizes."""
    h, w = x.shape[-2:]
    if size is None:
        f = min(1.0, side / max(h, w))
        size = (max(2, int(round(h * f / 2)) * 2), max(2, int(round(w * f / 2)) * 2))
    if tuple(size) == (h, w):
        return x.float()
    return F.interpolate(x.float(), size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)


def _cut(x: torch.Tensor, cand_bounds: tuple, new_bounds: tuple) -> torch.Tensor:
    """The part of a georeferenced image (north up) that lies on ``new_bounds`` (lon/lat, linear)."""
    h, w = x.shape[-2:]
    cw, cs, ce, cn = cand_bounds
    fx0, fx1 = (new_bounds[0] - cw) / (ce - cw), (new_bounds[2] - cw) / (ce - cw)
    fy0, fy1 = (cn - new_bounds[3]) / (cn - cs), (cn - new_bounds[1]) / (cn - cs)
    x0, x1 = int(round(max(0.0, fx0) * w)), int(round(min(1.0, fx1) * w))
    y0, y1 = int(round(max(0.0, fy0) * h)), int(round(min(1.0, fy1) * h))
    if x1 - x0 < 8 or y1 - y0 < 8:
        return x
    return x[..., y0:y1, x0:x1]


def agreement(new_w: torch.Tensor, cand_w: torch.Tensor, rotation: bool = True) -> tuple[float, tuple, float]:
    """``(agreement, shift, angle)``: the candidate (already at the new scene's working size)
    registered to the new scene (translation, and with ``rotation`` a small rotation:
    :func:`refscale.registration.estimate_transform`), then :func:`refscale.metrics.reference_agreement`
    of the new scene's x2 LR with it."""
    import warnings

    from refscale import ops, registration
    from refscale.metrics import reference_agreement

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if rotation:
            shift, angle = registration.estimate_transform(new_w, cand_w)
        else:
            shift, angle = registration.estimate_shift(new_w, cand_w), 0.0
        moved = registration.apply_shift(cand_w, shift, angle) if not registration.is_none(shift) or angle else cand_w
    lr = ops.bicubic_down(new_w, 2)
    a = reference_agreement(lr, moved, 2)
    return (a if math.isfinite(a) else -1.0), shift, angle


# ============================================================================= selection
@dataclass
class Selection:
    new: Candidate
    chosen: Candidate | None
    candidates: list[Candidate]  # best first; unsuitable ones after the suitable
    seconds: float = 0.0
    pixels_read: int = 0

    def as_dict(self) -> dict:
        return {"new": str(self.new.path), "new_date": None if self.new.date is None else self.new.date.isoformat(),
                "new_bounds": None if self.new.bounds is None else list(self.new.bounds),
                "new_fingerprint": self.new.fingerprint,
                "chosen": None if self.chosen is None else str(self.chosen.path),
                "chosen_fingerprint": None if self.chosen is None else self.chosen.fingerprint,
                "reason": None if self.chosen is not None else "no suitable reference",
                "pixels_read": self.pixels_read, "seconds": round(self.seconds, 3),
                "candidates": [c.as_dict() for c in self.candidates]}

    def explain(self, top: int = 5) -> str:
        lines = []
        if self.chosen is None:
            lines.append(f"{self.new.path.name}: no suitable reference among {len(self.candidates)} candidates")
        else:
            s = self.chosen.scores
            lines.append(f"{self.new.path.name}: reference {self.chosen.name} (score {s['score']:.3f}: {_why(self.chosen)})")
        for c in self.candidates[:top]:
            mark = "  ok " if c.reason is None else "  -- "
            detail = _why(c) if c.reason is None else c.reason
            lines.append(f"{mark}{c.name}: {detail}")
        rest = len(self.candidates) - top
        if rest > 0:
            lines.append(f"  ... {rest} more (--json lists all)")
        return "\n".join(lines)


def _why(c: Candidate) -> str:
    s = c.scores
    parts = [f"agreement {s['agreement']:.3f}" if "agreement" in s else None,
             f"overlap {s['overlap']:.2f}" if s.get("overlap") is not None else None,
             f"{s['days']} days older" if s.get("days") is not None else None,
             f"valid {s['valid']:.2f}" if s.get("valid") is not None else None]
    return ", ".join(p for p in parts if p)


def select_reference(new, archive, *, date=None, bounds=None, min_overlap: float = MIN_OVERLAP,
                     min_agreement: float | None = None, max_pixels: int | None = MAX_PIXELS,
                     work_side: int = WORK_SIDE, refine: int = REFINE, cache: dict | None = None) -> Selection:
    """Rank the archive's candidates for the new scene ``new`` (a path) and choose one (module doc).

    ``archive``: a folder, a STAC catalog path, or a list of :class:`Candidate` (from
    :func:`read_archive`, to read an archive once for many scenes). ``date`` / ``bounds``: the
    new scene's, when its file does not say. ``cache``: a dict that keeps the working-size
    pixels of candidates between calls (many scenes against one archive)."""
    import time

    from refscale import pipeline
    from refscale.metrics import to_uint8

    t0 = time.perf_counter()
    if min_agreement is None:
        min_agreement = pipeline.MIN_REFERENCE_AGREEMENT
    new_c = describe(new, date=date, bounds=bounds)
    cands = [Candidate(c.path, c.name, c.bounds, c.date, c.valid, c.georeferenced, c.fingerprint)
             for c in (read_archive(archive) if not isinstance(archive, list) else archive)]
    cache = {} if cache is None else cache
    # --- metadata stage
    live = []
    for c in cands:
        ov = overlap(new_c.bounds, c.bounds) if new_c.bounds is not None and c.bounds is not None else None
        days = (new_c.date - c.date).days if new_c.date is not None and c.date is not None else None
        c.scores.update(overlap=ov, days=days, valid=c.valid)
        if _same_file(c.path, new_c.path):
            c.reason = "the new scene itself"
        elif ov is not None and ov < min_overlap:
            c.reason = f"footprint overlap {ov:.2f} < {min_overlap:g}"
        elif days is not None and days <= 0:
            c.reason = f"not older than the new scene ({c.date.isoformat()} vs {new_c.date.isoformat()})"
        else:
            live.append(c)
    live.sort(key=lambda c: -(c.scores["overlap"] if c.scores["overlap"] is not None else 0.0))
    if max_pixels is not None and len(live) > max_pixels:
        for c in live[max_pixels:]:
            c.reason = f"not read: more than {max_pixels} candidates passed the metadata stage (--max-pixels)"
        live = live[:max_pixels]
    # --- pixel stage
    n_read = 0
    if live:
        new_px, _ = _read_pixels(new_c.path)
        new_c.fingerprint = pipeline.fingerprint(new_px)
        new_w = _working(new_px, work_side)
        work = {}
        for c in live:
            key = str(c.path)
            if key not in cache:
                px, valid = _read_pixels(c.path)
                cache[key] = (to_uint8(px), valid, pipeline.fingerprint(px))  # 8-bit: a quarter of the memory
                n_read += 1
            px, valid, c.fingerprint = cache[key]
            px = px.float() / 255.0
            if c.valid is None:
                c.valid = valid
                c.scores["valid"] = valid
            if c.fingerprint == new_c.fingerprint:
                c.reason = "identical to the new scene (same fingerprint)"
                continue
            part = _cut(px, c.bounds, new_c.bounds) if c.georeferenced and new_c.bounds is not None and c.bounds else px
            work[id(c)] = _working(part, size=tuple(new_w.shape[-2:]))
            a, shift, angle = agreement(new_w, work[id(c)], rotation=False)
            c.scores.update(agreement=a, shift=[round(v, 2) for v in shift], angle=0.0)
        # the best few by translation alone are registered with rotation too (docs/archive.md)
        pending = sorted((c for c in live if c.reason is None), key=lambda c: -c.scores["agreement"])
        for c in pending[:refine]:
            a, shift, angle = agreement(new_w, work[id(c)], rotation=True)
            if a > c.scores["agreement"]:
                c.scores.update(agreement=a, shift=[round(v, 2) for v in shift], angle=round(angle, 2))
        for c in pending:
            a = c.scores["agreement"]
            if a < min_agreement:
                c.reason = f"agreement {a:.3f} < {min_agreement:g} after registration: another place or view"
                continue
            days = c.scores["days"]
            recency = 1.0 if days is None else 0.5 ** (days / RECENCY_HALF_LIFE_DAYS)
            ov = c.scores["overlap"]
            c.scores["score"] = a * (1.0 if ov is None else ov) * (1.0 if c.valid is None else c.valid) * recency
    ok = sorted((c for c in cands if c.reason is None), key=lambda c: -c.scores["score"])
    rest = sorted((c for c in cands if c.reason is not None),
                  key=lambda c: -c.scores.get("agreement", -2.0) - (c.scores.get("overlap") or 0.0))
    return Selection(new_c, ok[0] if ok else None, ok + rest, time.perf_counter() - t0, n_read)


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


# ============================================================================= the decoder's side
def reference_fingerprint(path, record=None) -> str:
    """The fingerprint an encoder records for ``path`` given as the reference of an image read
    with raster ``record`` (None: a plain 8-bit image), as :mod:`refscale.pipeline` computes it."""
    from refscale import pipeline, raster
    from refscale.imageio import as_image_tensor

    t = raster.read_reference(path, record) if record is not None else as_image_tensor(Path(path))
    return pipeline.fingerprint(t)


def find_by_fingerprint(fingerprint: str, archive, record=None, size: tuple[int, int] | None = None,
                        hint: str | None = None, cache: dict | None = None) -> Path | None:
    """The archive image whose reference fingerprint is ``fingerprint`` (None if none is).
    ``size`` ``(H, W)``: candidates of another size are tried last (a resampled reference is
    recorded by its own fingerprint); ``hint``: a file name tried first (the encoder's record)."""
    cands = read_archive(archive) if not isinstance(archive, list) else archive
    cache = {} if cache is None else cache

    def size_of(c):
        try:
            from PIL import Image

            with Image.open(c.path) as im:
                return im.size[1], im.size[0]
        except Exception:  # noqa: BLE001 - unknown size: try it anyway
            return None

    order = sorted(cands, key=lambda c: (0 if hint and (c.name == hint or c.path.name == Path(hint).name) else 1,
                                         0 if size is None or size_of(c) in (None, tuple(size)) else 1))
    for c in order:
        key = (str(c.path), None if record is None else id(record))
        if key not in cache:
            try:
                cache[key] = reference_fingerprint(c.path, record)
            except InputError:
                cache[key] = None
        if cache[key] == fingerprint:
            return c.path
    return None


def _record_key(record) -> str | None:
    return None if record is None else repr((record.dtype, list(record.bands), [tuple(r) for r in record.ranges]))


def sidecar_path(output) -> Path:
    """Where ``encode --ref-archive`` records the chosen reference beside a container: ``<output>.ref.json``."""
    p = Path(output)
    return p.with_name(p.name + ".ref.json")


def write_reference_record(output, sel: Selection, force: bool = False) -> Path:
    """Record the reference chosen for ``output`` (name, path, fingerprint, scores, the runners-up)."""
    from refscale.files import write_bytes

    c = sel.chosen
    rec = {"reference": None if c is None else c.name, "path": None if c is None else str(c.path),
           "fingerprint": None if c is None else c.fingerprint, "scores": None if c is None else c.as_dict()["scores"],
           "reason": None if c is not None else "no suitable reference",
           "candidates": [x.as_dict() for x in sel.candidates[:5]]}
    return write_bytes(sidecar_path(output), (json.dumps(rec, indent=1) + "\n").encode(), force=force)


def reference_for_container(path, archive, cache: dict | None = None) -> Path | None:
    """The archive image to decode the container ``path`` with: the one whose fingerprint the
    container records (the ``.ref.json`` beside it, if any, names the file to try first). None
    for a container that records no reference; an :class:`InputError` when no image matches."""
    from refscale.container import Packet
    from refscale.files import read_bytes

    packet = Packet.from_bytes(read_bytes(path))
    if packet.ref_hash is None:
        return None
    cache = {} if cache is None else cache
    key = ("candidates", str(archive))
    if key not in cache:
        cache[key] = read_archive(archive) if not isinstance(archive, list) else archive
    hint = None
    side = sidecar_path(path)
    if side.is_file():
        try:
            hint = json.loads(side.read_text()).get("reference")
        except (OSError, ValueError):
            hint = None
    fps = cache.setdefault(("fingerprints", _record_key(packet.raster)), {})
    found = find_by_fingerprint(packet.ref_hash, cache[key], record=packet.raster, size=packet.size, hint=hint, cache=fps)
    if found is None:
        raise InputError(f"no image in the archive {archive} has the reference fingerprint {packet.ref_hash[:12]} "
                         f"that {Path(path).name} records")
    return found


def encode_jobs(src, output, model, archive, lr_out=None, fallback_model=None, select_options: dict | None = None,
                echo=None):
    """``[(job, model, selection)]`` for encoding ``src`` (an image, folder or manifest, as
    :func:`refscale.files.encode_jobs`) with the reference chosen from ``archive`` for each input.
    A scene without a suitable reference is coded with ``fallback_model`` (one that takes no
    reference) when given, else refused (:class:`InputError`) before anything is encoded."""
    from refscale import files
    from refscale.data import discover

    src = files.existing(src, "input")
    batch = files.is_batch(src)
    samples = [(s.name, s.hr) for s in discover(src)] if batch else [(src.stem, src)]
    cands = read_archive(archive)
    cache: dict = {}
    out, lr = Path(output), Path(lr_out) if lr_out else None
    result = []
    for name, hr in samples:
        sel = select_reference(hr, cands, cache=cache, **(select_options or {}))
        if echo is not None:
            echo(sel.explain(top=3))
        target = out / f"{name}{files.CONTAINER_SUFFIX}" if batch or out.is_dir() else out
        lr_target = None if lr is None else (lr / f"{name}.png" if batch or lr.is_dir() else lr)
        m = model
        if sel.chosen is None:
            if fallback_model is None:
                raise InputError(f"{name}: no suitable reference in the archive {archive} "
                                 "(without --refuse-without-ref such scenes are coded with a model that takes none)")
            m = fallback_model
        ref = None if sel.chosen is None else sel.chosen.path
        result.append((files.Job(name, Path(hr), ref, target, lr_target), m, sel))
    return result
