"""The file-level API under the CLI: encode and decode files, folders and manifests.

``refscale encode`` / ``refscale decode`` only parse arguments, call these functions and print;
everything they do with files lives here, so a script gets the same behaviour::

    from refscale import files
    jobs = files.encode_jobs("scenes/", "out/", model, ref="archive/")   # folder/manifest -> one job each
    files.preflight(jobs, force=False)                                   # refuse bad outputs before any work
    for job in jobs:
        files.encode_file(job, model)
    hr, packet, model = files.decode_file("out/city.rsc", ref="archive/city.png")   # the model the file names

Rules (docs/design.md, "Command line"): outputs are written atomically (:func:`write_bytes`), never
replace an existing file without ``force`` and are never one of the inputs (:func:`preflight`).
A reference model needs a reference for every input; a model without one ignores it with a
warning. Batch inputs: a folder (pair folders ``<name>/hr.png + ref.png``, OSCD cities, single
images; for decode, ``.rsc`` files) or a CSV manifest (``hr,ref[,name]``; for decode
``rsc,ref[,name]``; :func:`refscale.data.read_manifest`).
"""
from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from refscale import pipeline
from refscale.format import codecs
from refscale.io import raster
from refscale.format.container import Packet, bytes_for_bpp
from refscale.data import discover, read_manifest
from refscale.errors import InputError, ModelError, RefScaleError
from refscale.io.image import publish
from refscale.protocol import Rescaler
from refscale.zoo import ScalePicker, load

CONTAINER_SUFFIX = ".rsc"


@dataclass
class Job:
    """One input and where its outputs go (``lr_output``: the viewable LR, encode only)."""

    name: str
    input: Path
    ref: Path | None
    output: Path
    lr_output: Path | None = None


def is_batch(src: Path) -> bool:
    """A folder or a CSV manifest (many inputs) rather than one file."""
    return src.is_dir() or src.suffix.lower() == ".csv"


# ----------------------------------------------------------------------------- jobs
def encode_jobs(src, output, model: Rescaler, ref=None, lr_out=None, codec: str | None = None) -> list[Job]:
    """Jobs for encoding ``src`` (an image, a folder or a ``hr,ref[,name]`` manifest) with ``model``.

    ``output``: the ``.rsc`` file, or for a batch (or an existing folder) the folder of
    ``<name>.rsc``; ``lr_out`` likewise for the LR images. ``ref``: a reference image, or for a
    batch a folder/manifest whose samples are named like the inputs (otherwise each sample's own).
    ``codec``: the LR codec (default the model's); an inter-frame codec needs the reference too.
    """
    src = existing(src, "input")
    batch = is_batch(src)
    samples = [(s.name, s.hr, s.ref) for s in discover(src)] if batch else [(src.stem, src, None)]
    if model.needs_reference or codecs.needs_reference(codec or model.default_codec):
        refs = reference_lookup(ref, batch)
        samples = [(name, hr, refs(name) or own) for name, hr, own in samples]
        missing = [name for name, _, r in samples if r is None]
        if missing:
            who = f"model {model.name}" if model.needs_reference else f"codec {codec}"
            raise ModelError(f"{who} needs a reference image (--ref); none for {', '.join(missing[:3])}")
    else:
        if ref:
            warnings.warn(f"model {model.name} takes no reference; --ref ignored")
        samples = [(name, hr, None) for name, hr, _ in samples]
    out, lr = Path(output), Path(lr_out) if lr_out else None
    return [Job(name, hr, r, _target(out, name, CONTAINER_SUFFIX, batch), _target(lr, name, ".png", batch) if lr else None)
            for name, hr, r in samples]


def decode_jobs(src, output, ref=None) -> list[Job]:
    """Jobs for decoding ``src`` (a ``.rsc`` file, a folder of them or a ``rsc,ref[,name]`` manifest)
    into images: ``output`` is the image file, or for a batch the folder of ``<name>.png``."""
    src = existing(src, "input")
    batch = is_batch(src)
    if src.is_dir():
        found = sorted(p for p in src.iterdir() if p.suffix.lower() == CONTAINER_SUFFIX and p.is_file())
        if not found:
            raise InputError(f"no {CONTAINER_SUFFIX} files in {src}")
        items = [(p.stem, p, None) for p in found]
    elif batch:
        items = read_manifest(src, first="rsc")
    else:
        items = [(src.stem, src, None)]
    refs = reference_lookup(ref, batch)
    return [Job(name, path, refs(name) or own, _target(Path(output), name, _decoded_suffix(path) if batch else ".png", batch))
            for name, path, own in items]


def _decoded_suffix(path: Path) -> str:
    """``.tif`` for a container whose raster record a PNG cannot hold (georeferencing, or a dtype
    other than 8/16-bit unsigned), else ``.png`` (a 16-bit PNG for uint16)."""
    from refscale.format.container import inspect

    try:
        rec = inspect(read_bytes(path))["raster"]
    except RefScaleError:
        return ".png"  # a damaged file fails with its own message when it is decoded
    if rec is not None and (rec["crs"] is not None or rec["transform"] is not None or rec["dtype"] not in ("uint8", "uint16")):
        return ".tif"
    return ".png"


def _target(out: Path, name: str, suffix: str, batch: bool) -> Path:
    return out / f"{name}{suffix}" if batch or out.is_dir() else out


def reference_lookup(ref, batch: bool):
    """``name -> reference path or None`` from ``ref`` (a file, or for a batch a folder/manifest)."""
    if ref is None:
        return lambda name: None
    p = existing(ref, "reference")
    if p.is_file() and p.suffix.lower() != ".csv":
        return lambda name: p
    if not batch:
        raise InputError(f"--ref {p} is a folder or manifest; for one input give one reference image")
    table = {s.name: (s.ref or s.hr) for s in discover(p)}

    def lookup(name: str) -> Path:
        if name not in table:
            raise InputError(f"no reference named {name!r} in {p}")
        return table[name]

    return lookup


def preflight(jobs: list[Job], force: bool = False, image_outputs: bool = False) -> None:
    """Refuse, before any work, outputs that exist (without ``force``), collide, are inputs, or
    cannot be written (:func:`check_writable`)."""
    inputs = {os.path.realpath(j.input) for j in jobs} | {os.path.realpath(j.ref) for j in jobs if j.ref is not None}
    seen = set()
    for j in jobs:
        for out in (j.output, j.lr_output):
            if out is None:
                continue
            r = os.path.realpath(out)
            if r in inputs:
                raise InputError(f"output {out} is one of the inputs; refusing to overwrite an input")
            if r in seen:
                raise InputError(f"two outputs would be written to {out}")
            seen.add(r)
            if out.is_dir():
                raise InputError(f"output {out} is a folder")
            if out.exists() and not force:
                raise InputError(f"{out} exists; use --force to overwrite it")
            check_writable(out)
        if image_outputs:
            _check_image_suffix(j.output)  # unknown suffix -> clear error now, not after decoding
        if j.lr_output is not None:
            _check_image_suffix(j.lr_output)


def check_writable(path) -> None:
    """Refuse, before any work, an output that could not be written: its folder (or, when the
    folder is still to be created, the nearest existing folder above it) is a file, or no file
    can be created in it (permissions, a read-only file system). Tested by creating and removing
    an empty temporary file there, as the atomic write will (so it holds for root and ACLs too)."""
    path = Path(path)
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise InputError(f"cannot write {path}: {folder} is not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".probe", dir=folder)
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e} (folder {folder})") from None
    os.close(fd)
    os.unlink(tmp)


def _check_image_suffix(path: Path) -> None:
    from PIL import Image

    if path.suffix.lower() not in Image.registered_extensions():
        raise InputError(f"cannot write {path.name}: unknown image suffix {path.suffix or '(none)'} (use .png)")


# ----------------------------------------------------------------------------- work
def encode_file(job: Job, model: Rescaler, *, codec: str | None = None, quality: int | None = None, bpp: float | None = None,
                max_bytes: int | None = None, tile=None, resample_ref: bool = False, precision: str | None = None,
                register: bool = True, force: bool = False, progress: bool = False, bands=None,
                value_range=None, windowed: bool | None = None, verify: bool = True) -> dict:
    """Encode one job: write the container (and the LR as the receiver sees it). Returns
    ``{"output", "bytes", "bpp", "size", "model", "codec", "quality", "raster", "verify", "inter_mode",
    "candidates", "left_out"}``
    (``quality``: the one used and recorded, a lossy codec's default when none was given;
    ``verify``: the verifying encoder's report, ``refscale.pipeline.encode``, or None;
    ``inter_mode``: what an inter-frame codec coded, ``inter`` or ``intra``; else None).
    ``codec=None``: the model's default.

    ``bands`` (e.g. ``[4, 3, 2]``, 1-based) and ``value_range`` (``"p2,98"``, ``"0,10000"``):
    how a raster's bands and intensities reach the model (:func:`refscale.io.raster.read_raster`;
    ``windowed``: read a TIFF window by window, default: when it is larger than
    :data:`refscale.io.raster.WINDOWED_PIXELS`);
    a GeoTIFF, 16-bit or float input is recorded in the container so decoding gives it back.
    With a raster record, an LR written to a ``.tif`` is a GeoTIFF (:func:`refscale.io.raster.write_lr`).

    ``bpp`` or ``max_bytes``: a budget for the whole file instead of a quality (the quality is
    chosen by :meth:`refscale.Packet.fit`); the budget is checked before anything is written.

    ``model`` may be a scale picker (:class:`refscale.zoo.ScalePicker`, ``load("enhance-hevc")``): it
    needs a budget and no quality; each member is encoded, fitted and decoded, and the file of the
    one with the best decoded PSNR-Y is written (:func:`refscale.pipeline.encode_best`). Then
    ``model`` in the result is the chosen member (the container names it) and ``candidates`` the
    rows of every member (model, scale, quality, bytes, psnr_y, psnr_rgb, chosen; or error);
    ``candidates`` is None for a single model. ``left_out``: the picker's members without weights."""
    picker = model if isinstance(model, ScalePicker) else None
    if picker is not None:
        picker.check_budget(quality, bpp, max_bytes)
        if windowed:
            raise InputError(f"{picker.name} decodes each candidate whole: it cannot read {job.input} window by window")
        windowed = False
    codec, quality = codecs.resolve(codec, quality, model.default_codec, bpp=bpp, max_bytes=max_bytes, available=True,
                                    default_quality=model.default_quality)
    for out in (job.output, job.lr_output):
        if out is not None:
            check_writable(out)
    image = raster.read_raster(job.input, bands=bands, value_range=value_range, windowed=windowed, progress=progress)
    options = {"tile": tile, "resample_ref": resample_ref, "precision": precision, "register": register,
               "progress": progress, "codec": codec, "verify": verify}
    candidates = None
    if picker is not None:
        data, packet, candidates = pipeline.encode_best(picker.members, image, job.ref, bpp=bpp, max_bytes=max_bytes,
                                                        **options)
        quality = next(c["quality"] for c in candidates if c["chosen"])
    else:
        packet = pipeline.encode(model, image, job.ref, quality=quality, **options)
        if bpp is not None:
            max_bytes = bytes_for_bpp(bpp, packet.size)
        if max_bytes is not None:
            data, packet, quality = pipeline.fit_verified(model, packet, image, job.ref, max_bytes=max_bytes,
                                                          quality=quality, **options)
        else:
            data = packet.to_bytes(codec=codec, quality=quality)
    write_bytes(job.output, data, force)
    if job.lr_output is not None:
        try:
            raster.write_lr(Packet.from_bytes(data, lr_ref=packet.lr_ref).lr, job.lr_output, packet.raster,
                            packet.scale, overwrite=force)
        except BaseException:
            Path(job.output).unlink(missing_ok=True)  # both outputs or neither
            raise
    h, w = packet.size
    mode = codecs.inter_payload(codec, Packet.from_bytes(data).lr_data)["mode"] if codecs.needs_reference(codec) else None
    return {"output": job.output, "bytes": len(data), "bpp": len(data) * 8 / (h * w), "size": (h, w),
            "model": packet.model, "codec": codec, "quality": codecs.effective_quality(codec, quality), "raster": packet.raster,
            "verify": packet.verify_report, "inter_mode": mode, "candidates": candidates,
            "left_out": picker.left_out if picker is not None else None}


def write_decoded(hr: torch.Tensor, packet: Packet, path, *, cog: bool = False, force: bool = False) -> Path:
    """Write a decoded image: 8-bit by suffix for a plain container; with a raster record, the
    original dtype, bands, descriptions and georeferencing (``cog``: a Cloud Optimized GeoTIFF)."""
    return raster.write_decoded(hr, path, packet.raster, cog=cog, overwrite=force)


def model_for(packet: Packet, model=None, cache: dict | None = None) -> Rescaler:
    """The model to decode ``packet`` with: ``model`` (a name, path or model) if given, else the
    one the container names (loaded once per name when a ``cache`` dict is passed). A scale picker
    (``-m enhance-hevc``) gives its member that the container names."""
    if isinstance(model, (Rescaler, ScalePicker)):
        found = model
    else:
        key = model or packet.model
        found = cache.get(key) if cache is not None else None
        if found is None:
            try:
                found = load(key)
            except ModelError as e:
                if model:
                    raise
                raise ModelError(f"the container was made by model {key!r}, which cannot be loaded here ({e}); "
                                 "pass -m NAME or -m path/to/weights.safetensors") from None
            if cache is not None:
                cache[key] = found
    return found.member(packet.model) if isinstance(found, ScalePicker) else found


def decode_to_file(src, output, ref=None, *, model=None, cache: dict | None = None, warn_ref: bool = True,
                   cog: bool = False, force: bool = False, windowed: bool | None = None,
                   **decode_options) -> tuple[Packet, Rescaler]:
    """Decode a ``.rsc`` file and write the image to ``output`` (:func:`write_decoded`). A raster
    written to a ``.tif`` goes window by window (:class:`refscale.io.raster.TiffSink`: memory does not
    grow with the scene) when ``windowed``, or by default when its padded size exceeds
    :data:`refscale.io.raster.WINDOWED_PIXELS` and nothing needs the whole image (no recorded
    registration transform, no inter-frame LR codec). Returns ``(packet, model)``."""
    output = Path(output)
    check_writable(output)
    packet, m, ref = _open_container(src, ref, model, cache, warn_ref)
    big = packet.padded_size[0] * packet.padded_size[1] > raster.WINDOWED_PIXELS
    if windowed is None:
        windowed = big and not packet.registered and not codecs.needs_reference(packet.codec)
    if not (windowed and packet.raster is not None and output.suffix.lower() in raster.TIFF_SUFFIXES
            and raster.have_rasterio()):
        write_decoded(pipeline.decode(m, packet, ref, **decode_options), packet, output, cog=cog, force=force)
        return packet, m
    sink = raster.TiffSink(output, packet.raster, packet.size, packet.padded_size, cog=cog, overwrite=force)
    try:
        pipeline.decode(m, packet, ref, sink=sink, **decode_options)
        sink.close()
    except BaseException:
        sink.abort()
        raise
    return packet, m


def decode_file(src, ref=None, *, model=None, cache: dict | None = None, warn_ref: bool = True,
                **decode_options) -> tuple[torch.Tensor, Packet, Rescaler]:
    """Decode a ``.rsc`` file (path or bytes) with the model it names (or ``model``). Returns
    ``(hr [1,3,H,W], packet, model)``; ``decode_options`` go to :func:`refscale.pipeline.decode`
    (temperature, seed, tile, allow_mismatch, resample_ref, precision, progress). A reference
    given to a model that takes none is ignored (with a warning if ``warn_ref``)."""
    packet, m, ref = _open_container(src, ref, model, cache, warn_ref)
    return pipeline.decode(m, packet, ref, **decode_options), packet, m


def _open_container(src, ref, model, cache, warn_ref) -> tuple[Packet, Rescaler, object]:
    """The packet, its model, and the reference (None for a model and codec that take none)."""
    data = src if isinstance(src, (bytes, bytearray)) else read_bytes(Path(src))
    packet = Packet.from_bytes(bytes(data))
    m = model_for(packet, model, cache)
    if not m.needs_reference and not codecs.needs_reference(packet.codec) and ref is not None:
        if warn_ref:
            warnings.warn(f"model {m.name} takes no reference; --ref ignored")
        ref = None
    return packet, m, ref


# ----------------------------------------------------------------------------- file helpers
def write_bytes(path, data: bytes, force: bool = False) -> Path:
    """Write ``data`` atomically: a temporary file in the same folder, then ``os.replace``."""
    path = Path(path)
    if path.exists() and not force:
        raise InputError(f"{path} exists; use --force to overwrite it")
    if path.is_dir():
        raise InputError(f"{path} is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise InputError(f"cannot write {path}: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        publish(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise InputError(f"cannot write {path}: {e.strerror or e}") from None
        raise
    return path


def read_bytes(path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from None


def existing(name, what: str) -> Path:
    p = Path(name)
    if not p.exists():
        raise InputError(f"{what} not found: {p}")
    return p
