"""Encoding an image into a :class:`~refscale.format.container.Packet` and decoding it back, with any rescaler.

Written once against the :class:`~refscale.protocol.Rescaler` protocol:

* **Any size.** The HR image (and reference) are padded bottom/right to a multiple of the
  model's alignment (reflect padding, :func:`refscale.ops.pad_to_multiple`); the decoded image
  is cropped back, so the caller never sees the padding.
* **Large scenes.** The padded image is processed in overlapping windows (see
  :mod:`refscale.tiling`: overlap plus cropping of tile borders, no blending) when it has more
  than :data:`AUTO_TILE_PIXELS` pixels, or when ``tile`` is given. Windows have one size and
  are run in batches of up to :data:`BATCH_PIXELS` HR pixels, which bounds memory and is
  faster on a CPU than one huge convolution. Side maps are cropped and stitched the same way, at
  the stride the model declares (:meth:`refscale.protocol.Rescaler.side_spec`); one
  :class:`refscale.tiling.Tiler` does the cutting and stitching for the encoder, the decoder and
  the on-board loop (:mod:`refscale.onnx.onboard`), :func:`layout` chooses its layout. The layout
  is recorded in the container; the decoder repeats it by default.
  A :class:`refscale.io.raster.RasterScene` (a GeoTIFF larger than memory) is read window by
  window, its reference too, and ``decode(..., sink=TiffSink(...))`` writes the rebuilt scene
  window by window; pixels without data are filled in each window (:func:`refscale.io.raster.fill`).
* **Precision.** Models that declare it (``supports_bf16``, :mod:`refscale.nn.speed`) run their
  convolutions in bfloat16 with channels_last when ``precision="bf16"`` (``"auto"``, the default:
  only on CPUs with native bf16). The container records
  the precision the encoder used and the decoder repeats it, so both sides compute the same
  condition. :data:`DEFAULT_PRECISION` is the measured choice (see ``benchmarks/large_scene.py``).
* **Checks.** A reference model without a reference is a :class:`ModelError`; a reference
  of another size is an :class:`InputError` (``resample_ref=True`` resizes it with MATLAB
  bicubic to 8 bits instead, then registers it like any reference; the decoder resizes the
  recorded reference by itself); a packet made by other weights is refused unless ``allow_mismatch``.
* **Inter-frame LR codecs** (``h264-inter``, ... :mod:`refscale.format.inter`) predict the LR from the
  reference at the LR's size (:func:`lr_reference`), so with them the reference is needed (and
  fingerprinted) even for a model that takes none; the model itself still gets it only if it
  uses one.
* **Verification** (``encode(..., verify=True)``, the default; issue 26). The encoder has the HR
  image, so it decodes its own packet exactly as the receiver will (the LR after the codec, the
  seed and temperature it records) and compares it, block by block (:data:`VERIFY_BLOCK` HR
  pixels), with the plain bicubic pipeline at the same scale. A block whose RGB PSNR falls below
  bicubic's by more than :data:`VERIFY_MARGIN_DB`, or that has more pixels off by more than
  :data:`VERIFY_OFF_LEVELS` levels than bicubic has there, is stored as the bicubic LR and
  decoded by bicubic upscaling (the fallback); the check repeats until no block fails (a fallback
  block changes its neighbours' context: from the second round on a block that fails takes its
  eight neighbours along, since such failures spread one block a round, e.g. along an image
  border; after :data:`VERIFY_MAX_ROUNDS` decodes the whole image falls back), and the packet records the blocks' modes
  (:class:`refscale.format.container.Verification`, format version 5) and a summary
  (``packet.verify_report``). It costs one decode (more when blocks fall back). At scale 1 (the
  learned decoders after the inter codec) the bicubic pipeline is the plain codec's decode, so a
  fallback block is decoded without the network. Not done for bicubic and the scale-1 inter modes
  (nothing to check), nor for a scene read window by window
  (it is never whole in memory; a warning says so). With a lossy LR codec the check sees the LR
  after the codec at the packet's quality (the codec's default when a byte budget will choose it).
* **Determinism.** Decoding randomness comes only from ``torch.Generator`` objects seeded from
  ``seed`` (untiled: ``seed`` itself; tiled: one generator per batch of windows, seeded with
  ``SeedSequence([seed, batch index])``), so the same container, reference and seed give the
  same pixels in any process on the same software.
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import warnings

import numpy as np
import torch

from refscale import ops, registration, tiling
from refscale.format import codecs
from refscale.io import raster
from refscale.format.container import (RESTORE_DTYPES, Packet, Verification, reference_fingerprint, reference_hasher,
                                smallest_integer_array)
from refscale.errors import ContainerError, InputError, ModelError
from refscale.io.image import as_image_tensor
from refscale.format.rounding import round_8bit, to_uint8, to_uint8_hwc
from refscale.metrics import reference_agreement
from refscale.protocol import Rescaler, SideSpec
from refscale.nn.speed import native_bf16

#: padded images with more pixels than this are tiled automatically (1024 x 1024)
AUTO_TILE_PIXELS = 1024 * 1024
#: default largest core of a tile, in HR pixels, and context margin, in LR pixels (16 * scale HR
#: pixels). Measured (benchmarks/large_scene.py): ~1 Mpx windows run as fast per pixel as
#: smaller ones here, so large cores keep the redundant work of the overlap small (x2 scene of
#: 6264x3456: 1.15x), while memory stays bounded by the window size
DEFAULT_TILE = 1024
DEFAULT_OVERLAP_LR = 16
#: HR pixels per batch of windows (at least one window per batch)
BATCH_PIXELS = 1024 * 1024
#: arithmetic for models that declare ``supports_bf16``: "fp32", "bf16" or "auto". bf16 + channels_last is much
#: faster than fp32 on a CPU with native bf16 (AVX512-BF16/AMX) at the same end-to-end PSNR, and
#: much slower on an AVX2-only CPU, where bf16 is emulated (``benchmarks/large_scene.py`` prints
#: both; figures in docs/performance.md). "auto" (the default) picks bf16 where it is native
#: (:func:`refscale.nn.speed.native_bf16`), else fp32; the container records the choice.
DEFAULT_PRECISION = "auto"
#: the decoder warns when the stored LR and the reference agree less than this
#: (:func:`refscale.metrics.reference_agreement`): the reference then looks like another place.
#: Calibrated on the OSCD train cities, error rates on the test cities: benchmarks/reference_check.py
#: and docs/reference.md, "Plausibility check".
MIN_REFERENCE_AGREEMENT = 0.2
#: the verifying encoder (see the module doc): block side in HR pixels (rounded up to the model's
#: alignment), the RGB PSNR margin below bicubic a block may have, and the error in 8-bit levels
#: past which a pixel counts as wrong (a block may have ``VERIFY_OFF_SLACK`` of its pixels more
#: of those than bicubic, at least one). Our choice: blocks small enough to isolate a wrongly
#: coloured field, large enough for a stable PSNR; margin 0, so a verified image is never worse
#: than bicubic in any block the encoder checked.
VERIFY_BLOCK = 64
VERIFY_MARGIN_DB = 0.0
VERIFY_OFF_LEVELS = 40
VERIFY_OFF_SLACK = 1e-3
#: the most decodes one verification runs before it gives every still-failing block to bicubic
VERIFY_MAX_ROUNDS = 4


# ============================================================================= encode
def encode(model: Rescaler, hr, ref=None, *, tile: int | None = None, overlap: int | None = None,
           progress: bool = False, resample_ref: bool = False, precision: str | None = None,
           register: bool = True, codec: str | None = None, quality: int | None = None,
           verify: bool = True) -> Packet:
    """Downscale one image into a :class:`Packet` (LR rounded to 8 bits, side info as integers).

    ``hr`` and ``ref``: tensors ``[1,3,H,W]``/``[3,H,W]`` in [0,1], ``HxWx3`` arrays or paths; ``hr``
    may also be a :class:`refscale.io.raster.RasterImage` (``read_raster(path, bands=..., value_range=...)``).
    A path, or a raster image, that is not plain 8-bit RGB (a GeoTIFF, 16-bit, float, chosen bands)
    gives the packet a raster record (``packet.raster``; format version 3) that the decoder's
    writer uses to give back the original dtype, bands and georeferencing
    (:func:`refscale.io.raster.write_decoded`); the reference file is then read with the same bands
    and mapping.
    ``tile``: core tile size in HR pixels (rounded up to the alignment); ``None`` tiles only
    images above :data:`AUTO_TILE_PIXELS`, ``0`` never tiles. ``overlap``: context margin in HR
    pixels (default ``DEFAULT_OVERLAP_LR * scale``). ``register`` (reference models): estimate
    the reference's translation (and small rotation) against the image and move it into place
    (:mod:`refscale.registration`); the transform is recorded and the decoder repeats it.
    ``codec``, ``quality``: what ``packet.to_bytes()`` writes by default (default: the model's
    ``default_codec``); an inter-frame codec keeps the reference for the LR codec (``lr_ref``).
    ``verify``: decode the packet here and fall back to bicubic where the model is worse (see the
    module doc, "Verification"); the summary is ``packet.verify_report``.
    """
    if isinstance(hr, (str, os.PathLike)):
        hr = raster.read_raster(hr)
    scene = hr if isinstance(hr, raster.RasterScene) else None
    record = hr.record if isinstance(hr, (raster.RasterImage, raster.RasterScene)) else None
    if scene is None:
        hr = _image(hr.tensor if isinstance(hr, raster.RasterImage) else hr, "image")
    size = tuple(hr.shape[-2:]) if scene is None else scene.size
    codec, quality = codecs.resolve(codec, quality, model.default_codec, default_quality=model.default_quality)
    ref, ref_hash = _reference(model, ref, size, codec, record, windowed=scene is not None, progress=progress)
    ref_given = ref
    if isinstance(ref, torch.Tensor):
        ref = _to_size(ref, size, resample_ref)
    lr_ref = lr_reference(ref, model.alignment, model.scale) if isinstance(ref, torch.Tensor) else None
    if not model.needs_reference:
        ref = None  # kept for the LR codec only
    shift, rotation = (0, 0), 0
    if ref is not None and register:
        if isinstance(ref, raster.RasterScene) or scene is not None:
            warnings.warn("a scene read window by window is not registered to its reference: give a co-registered "
                          "reference (registration off)", stacklevel=2)
        else:
            estimate, angle = registration.estimate_transform(hr, ref)
            rotation = registration.rotation_to_units(angle)
            shift = (0, 0) if registration.is_none(estimate) and not rotation else registration.to_units(estimate)
            ref = registration.apply_shift(ref, registration.from_units(shift), registration.rotation_from_units(rotation))
    align = model.alignment
    padded = (_round_up(size[0], align), _round_up(size[1], align))
    if scene is None:
        mask = record.mask.rows() if record is not None and record.mask is not None else None
        read_hr = tiling.memory_reader(hr, torch.from_numpy(mask)[None] if mask is not None else None, align)
    else:
        read_hr = tiling.scene_reader(scene, padded)
    read_ref = None if ref is None else tiling.scene_reader(ref, padded) if isinstance(ref, raster.RasterScene) \
        else tiling.memory_reader(ref, None, align)
    tiler = layout(padded, align, model.scale, tile, overlap, context=model.context)
    precision = resolve_precision(model, precision)
    spec = side_spec(model)
    s = model.scale

    lr_u8 = np.empty((padded[0] // s, padded[1] // s, 3), np.uint8)
    lr_planes = lr_u8.transpose(2, 0, 1)[None]  # a [1, 3, h, w] view: the cores are written into lr_u8
    side = {name: torch.zeros(1, sp.channels, *tiler.map_size(sp.stride), dtype=getattr(torch, sp.dtype))
            for name, sp in spec.items()}
    wh, ww = tiler.window_size
    with _inference(model, precision):
        for batch in _progress(tiler.batches(BATCH_PIXELS), progress, "encode"):
            x = tiler.read(read_hr, batch)
            r = tiler.read(read_ref, batch) if read_ref is not None else None
            lr_b, side_b = model.downscale(x, r)
            if tuple(lr_b.shape) != (len(batch), 3, wh // s, ww // s):
                raise ModelError(f"{model.name}.downscale returned {list(lr_b.shape)}, expected {[len(batch), 3, wh // s, ww // s]}")
            _check_side(model, spec, side_b, len(batch), (wh, ww))
            tiler.stitch(lr_planes, lr_b, batch, s, convert=lambda core: to_uint8(core).numpy())
            for name, t in side_b.items():
                tiler.stitch(side[name], t, batch, spec[name].stride)

    side_np, side_dtypes = {}, {}
    for name, t in side.items():
        side_np[name] = smallest_integer_array(name, _integer_array(model, name, t))
        side_dtypes[name] = str(t.dtype).replace("torch.", "")
    packet = Packet(
        model=model.name, weights_hash=model.weights_hash(), scale=s, size=size, padded_size=padded,
        tiles=tiler.record,
        lr=lr_u8, side=side_np, side_dtypes=side_dtypes, precision=precision, ref_hash=ref_hash,
        ref_shift=shift, ref_rotation=rotation, codec=codec, quality=quality, lr_ref=lr_ref, raster=record,
    )
    if verify and verifiable(model):
        if scene is not None:
            warnings.warn("a scene read window by window is not verified against bicubic (it is never whole in "
                          "memory)", stacklevel=2)
        else:
            hr_p = tiling.read_windows(read_hr, [tiling.Window(0, 0, (0, padded[0], 0, padded[1]))], padded)
            packet = _verify(model, packet, hr_p, ref_given, resample_ref, progress)
    return packet


def fit_verified(model: Rescaler, packet: Packet, hr, ref=None, *, max_bytes: int, **options) -> tuple[bytes, Packet, int | None]:
    """The file of ``packet`` at the highest quality whose whole file fits ``max_bytes`` bytes
    (:meth:`Packet.fit`), ``(data, packet, quality)``. When the packet was checked by the verifying
    encoder at another quality than the one that fits (with a budget it is encoded before the
    quality is known), the image is encoded again at the fitted quality, so that the check is of
    what the receiver will decode, and fitted again (at most three rounds; the fallback blocks'
    LR changes the size a little). ``options``: those of :func:`encode` used for ``packet``."""
    data, quality = packet.fit(packet.codec, max_bytes)
    for _ in range(3):
        if packet.verification is None or quality == packet.quality:
            break
        packet = encode(model, hr, ref, **{**options, "codec": packet.codec, "quality": quality})
        data, quality = packet.fit(packet.codec, max_bytes)
    if packet.verification is not None and quality != packet.quality:  # still moving: the checked quality, if it fits
        checked = packet.to_bytes(packet.codec, packet.quality)
        if len(checked) <= max_bytes:
            data, quality = checked, packet.quality
    return data, packet, quality


def encode_best(models: list[Rescaler], hr, ref=None, *, bpp: float | None = None, max_bytes: int | None = None,
                codec: str | None = None, resample_ref: bool = False, progress: bool = False,
                **options) -> tuple[bytes, Packet, list[dict]]:
    """Rate control over models (e.g. one learned decoder per scale, :class:`refscale.zoo.ScalePicker`):
    the file, among one per model, whose decoded image is best within a size budget.

    Each model encodes ``hr`` (:func:`encode` with ``options``: tile, precision, register, verify,
    ...), its packet is fitted to the budget (:meth:`Packet.fit`: the highest codec quality whose
    whole file has at most ``max_bytes``, or ``bpp`` bits per pixel of ``hr``), and the fitted file
    is decoded exactly as the receiver will (from its bytes, with the reference, the recorded
    seed, tiles and precision). The measure is **PSNR-Y** against ``hr`` over the whole image (no
    border cropped: every pixel the receiver gets counts); PSNR-RGB is reported too. The highest
    PSNR-Y wins (a tie: the first model). A model that cannot meet the budget is skipped; when none
    can, an :class:`InputError` names what each needs.

    Returns ``(data, packet, candidates)``: the chosen file, its packet, and one row per model,
    ``{"model", "scale", "quality", "bytes", "psnr_y", "psnr_rgb", "chosen"}``, or ``{"model",
    "scale", "error", "chosen": False}`` for one over the budget.
    """
    from refscale.format.container import bytes_for_bpp
    from refscale.metrics import psnr

    if not models:
        raise ModelError("encode_best needs at least one model")
    if isinstance(hr, (str, os.PathLike)):
        hr = raster.read_raster(hr, windowed=False)
    if isinstance(hr, raster.RasterScene):
        raise InputError("choosing among models decodes each candidate whole: read the image whole (windowed=False)")
    target = _image(hr.tensor if isinstance(hr, raster.RasterImage) else hr, "image")
    size = tuple(target.shape[-2:])
    codecs.check_budget(None, bpp, max_bytes)
    if bpp is None and max_bytes is None:
        raise InputError("encode_best needs a size budget (bpp or max_bytes)")
    budget = bytes_for_bpp(bpp, size) if bpp is not None else int(max_bytes)
    best, candidates = None, []
    for m in models:
        packet = encode(m, hr, ref, codec=codec, resample_ref=resample_ref, progress=progress, **options)
        try:
            data, packet, quality = fit_verified(m, packet, hr, ref, max_bytes=budget, resample_ref=resample_ref,
                                                 progress=progress, **options)
        except InputError as e:
            candidates.append({"model": m.name, "scale": m.scale, "error": str(e), "chosen": False})
            continue
        decoded = decode(m, Packet.from_bytes(data), ref, progress=progress)
        row = {"model": m.name, "scale": m.scale, "quality": codecs.effective_quality(packet.codec, quality),
               "bytes": len(data), "psnr_y": float(psnr(decoded, target, y_channel=True)[0]),
               "psnr_rgb": float(psnr(decoded, target, y_channel=False)[0]), "chosen": False}
        candidates.append(row)
        if best is None or row["psnr_y"] > best[2]["psnr_y"]:
            best = (data, packet, row)
    if best is None:
        raise InputError("no model fits the budget at any quality: "
                         + "; ".join(f"{c['model']} (x{c['scale']}): {c['error']}" for c in candidates))
    best[2]["chosen"] = True
    return best[0], best[1], candidates


# ============================================================================= verification
def verifiable(model: Rescaler) -> bool:
    """Models the verifying encoder checks: every model except bicubic itself and the scale-1 inter
    modes (nothing to check). At scale 1 (the learned decoders after the inter codec, ``enhance-x1``)
    the "bicubic pipeline" is the plain codec's decode, so a fallback block means "no enhancement"."""
    return model.arch not in ("bicubic", "inter")


def verify_block(model: Rescaler) -> int:
    """The verification block side of ``model`` in HR pixels (:data:`VERIFY_BLOCK`, at least 8 LR
    pixels, rounded up to the alignment)."""
    return _round_up(max(VERIFY_BLOCK, 8 * model.scale), model.alignment)


def _as_received(packet: Packet, lr_u8: np.ndarray) -> np.ndarray:
    """The LR the receiver will decode: ``lr_u8`` through the packet's codec at its quality."""
    if codecs.is_lossless(packet.codec, packet.quality):
        return lr_u8
    ref = packet.lr_ref if codecs.needs_reference(packet.codec) else None
    data = codecs.encode_image(lr_u8, packet.codec, packet.quality, ref=ref)
    return codecs.decode_image(data, packet.codec, lr_u8.shape[:2], ref=ref)


def _block_errors(x: torch.Tensor, hr: torch.Tensor, size: tuple[int, int], block: int) -> tuple[np.ndarray, np.ndarray]:
    """Per block of ``block`` pixels (inside the original ``size``): the RGB squared error summed
    over 8-bit values, and the count of pixels with a channel off by more than
    :data:`VERIFY_OFF_LEVELS` levels."""
    h, w = size
    d = to_uint8(x[..., :h, :w]).to(torch.int32) - to_uint8(hr[..., :h, :w]).to(torch.int32)
    sq = (d * d).sum(1)[0].double()
    off = (d.abs().amax(1)[0] > VERIFY_OFF_LEVELS).double()
    rows, cols = Verification.grid((h, w), block)
    pad = (0, cols * block - w, 0, rows * block - h)

    def per_block(t):
        t = torch.nn.functional.pad(t, pad)
        return t.reshape(rows, block, cols, block).sum((1, 3)).numpy()

    return per_block(sq), per_block(off)


def _with_neighbours(blocks: np.ndarray) -> np.ndarray:
    """``blocks`` (a boolean block grid) grown by one block in every direction (3 x 3)."""
    grown = blocks.copy()
    grown[1:] |= blocks[:-1]
    grown[:-1] |= blocks[1:]
    rows = grown.copy()
    grown[:, 1:] |= rows[:, :-1]
    grown[:, :-1] |= rows[:, 1:]
    return grown


def _verify(model: Rescaler, packet: Packet, hr_p: torch.Tensor, ref, resample_ref: bool, progress: bool) -> Packet:
    """The verifying encoder (module doc): decode ``packet`` as the receiver will, fall back to
    bicubic block by block where the model is worse; the packet with the modes and a report."""
    import time

    start = time.perf_counter()
    s, size, padded = model.scale, tuple(packet.size), tuple(packet.padded_size)
    block = verify_block(model)
    rows, cols = Verification.grid(padded, block)
    lr_model = packet.lr
    bic_lr = to_uint8_hwc(ops.bicubic_down(hr_p, s))
    bic = ops.bicubic_up(u8_to_float(_as_received(packet, bic_lr)), s).clamp(0, 1)
    sq_b, off_b = _block_errors(bic, hr_p, size, block)
    px = _block_pixels(size, block)
    lb = block // s

    def attempt(fallback: np.ndarray):
        """The LR with the fallback blocks' bicubic LR, and its per-block errors as decoded."""
        lr = lr_model.copy()
        for i, j in zip(*np.nonzero(fallback)):
            lr[i * lb:(i + 1) * lb, j * lb:(j + 1) * lb] = bic_lr[i * lb:(i + 1) * lb, j * lb:(j + 1) * lb]
        trial = dataclasses.replace(packet, lr=_as_received(packet, lr), verify_report=None,
                                    verification=Verification(block, 0, model.decode_temperature, fallback.copy()))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the reference's checks speak when the receiver decodes
            out = decode(model, trial, ref, resample_ref=resample_ref, progress=progress)
        return lr, _block_errors(out, hr_p, size, block)

    fallback = np.zeros((rows, cols), bool)
    for rounds in range(1, VERIFY_MAX_ROUNDS + 1):
        lr, (sq_m, off_m) = attempt(fallback)
        worse = sq_m > sq_b * 10 ** (VERIFY_MARGIN_DB / 10) + 1e-9
        wrong = off_m > off_b + np.maximum(1, VERIFY_OFF_SLACK * px)
        bad = (worse | wrong) & ~fallback
        if not bad.any():
            break
        fallback |= bad if rounds == 1 else _with_neighbours(bad)
    else:  # still failing after the last round: the whole image goes to bicubic
        fallback[:] = True
        lr, (sq_m, off_m) = attempt(fallback)
    psnr_m = _psnr_from(sq_m, px)
    k = int(np.argmin(np.where(px > 0, psnr_m, np.inf)))
    total = lambda sq: float(10 * np.log10(255.0**2 * 3 * px.sum() / max(sq.sum(), 1e-12)))  # noqa: E731
    report = {
        "blocks": int(fallback.size), "fallback_blocks": int(fallback.sum()), "block": block, "rounds": rounds,
        "psnr_rgb": total(sq_m), "bicubic_psnr_rgb": total(sq_b),
        "worst_block_psnr_rgb": float(psnr_m.flat[k]), "bicubic_there": float(_psnr_from(sq_b, px).flat[k]),
        "seconds": time.perf_counter() - start,
        "fallback": "bicubic" if model.scale > 1 else "the plain decode",  # at scale 1 bicubic is the LR itself
    }
    return dataclasses.replace(packet, lr=lr, verification=Verification(block, 0, model.decode_temperature, fallback),
                               verify_report=report)


def _block_pixels(size: tuple[int, int], block: int) -> np.ndarray:
    """Pixels of each block inside the original ``size``."""
    h, w = size
    rows, cols = Verification.grid((h, w), block)
    hs = np.minimum(block, h - np.arange(rows) * block)
    ws = np.minimum(block, w - np.arange(cols) * block)
    return np.outer(hs, ws).astype(np.float64)


def _psnr_from(sq: np.ndarray, px: np.ndarray) -> np.ndarray:
    """RGB PSNR of each block from its summed squared 8-bit error and pixel count."""
    with np.errstate(divide="ignore"):
        return 10 * np.log10(255.0**2 * 3 * px / np.maximum(sq, 1e-12))


# ============================================================================= decode
def decode(model: Rescaler, packet, ref=None, *, temperature: float | None = None, seed: int | None = None,
           tile: int | None = None, overlap: int | None = None, allow_mismatch: bool = False, progress: bool = False,
           resample_ref: bool | None = None, precision: str | None = None,
           allow_other_reference: bool = False, sink=None) -> torch.Tensor | None:
    """Rebuild the HR image ``[1,3,H,W]`` (float32 in [0,1]) from a :class:`Packet` (or its bytes).

    ``sink`` (e.g. :class:`refscale.io.raster.TiffSink`): instead of assembling the image, hand each
    decoded core to ``sink.put((y0, y1, x0, x1), core)`` as it is ready (row-major, padded
    coordinates) and return None; a reference path is then read window by window too
    (:meth:`refscale.io.raster.RasterScene.open_reference`), so memory does not grow with the scene.
    Such a reference cannot be moved by a recorded registration shift, and its agreement with
    the LR is not checked.

    ``temperature``: stochastic models draw their latent ``z ~ temperature * N(0, I)`` (seeded by
    ``seed``). ``None`` (default): the seed and temperature the verifying encoder checked, as the
    file records them, else seed 0 and the model's ``decode_temperature`` (docs/evaluation.md,
    "Temperature"). Blocks the file marks as fallback are rebuilt by bicubic upscaling of their LR
    (:class:`refscale.format.container.Verification`).
    The tile layout and precision default to what the encoder recorded. ``allow_mismatch``
    decodes a packet made by other weights of the same scale (for experts; results are
    unlikely to be good). A reference whose :func:`fingerprint` differs from the one the encoder
    recorded is refused (:class:`InputError`), unless ``allow_other_reference`` (e.g. a re-encoded
    copy of the archive image), which warns instead; a version-1 container has no fingerprint
    and decodes with a warning that the reference cannot be checked. ``resample_ref``: ``None``
    (default) resamples a reference of another size when it is the one the encoder recorded (the
    encoder accepts such a reference only with ``resample_ref=True``); ``True``/``False`` force it.
    The reference is then moved by the transform the encoder recorded (registration), exactly as
    the encoder moved it.
    """
    if isinstance(packet, (bytes, bytearray, memoryview)):
        packet = Packet.from_bytes(bytes(packet))
    if not isinstance(packet, Packet):
        raise InputError(f"decode needs a Packet or the bytes of a .rsc file, got {type(packet).__name__}")
    _check_model(model, packet, allow_mismatch)
    checked = packet.verification
    if temperature is None:
        temperature = checked.temperature if checked is not None else model.decode_temperature
    if seed is None:
        seed = checked.seed if checked is not None else 0
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature >= 0):
        raise InputError(f"temperature must be a finite number >= 0, got {temperature!r}")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
        raise InputError(f"seed must be an integer >= 0, got {seed!r}")
    size, padded, s = tuple(packet.size), tuple(packet.padded_size), model.scale
    windowed = sink is not None and packet.raster is not None
    ref, ref_hash = _reference(model, ref, size, packet.codec, packet.raster, windowed=windowed, progress=progress)
    if isinstance(ref, raster.RasterScene):
        _check_reference(packet, ref_hash, allow_other_reference)
        if packet.registered:
            raise InputError("the container records a registration transform: decode it in memory (a reference read "
                             "window by window cannot be moved)")
    elif ref is not None:
        same = _check_reference(packet, ref_hash, allow_other_reference)
        # the recorded reference of another size: the encoder resampled it (it accepts no other)
        ref = _to_size(ref, size, resample_ref if resample_ref is not None else ref_hash == packet.ref_hash)
        if packet.lr is None:  # an inter-frame LR: decoded from the reference at LR size, into a copy
            lr_ref = lr_reference(ref, model.alignment, s)
            if lr_ref.shape[:2] != (padded[0] // s, padded[1] // s):
                raise ContainerError(f"padded size {padded[1]}x{padded[0]} in the container does not match the model's alignment")
            packet = packet.with_lr(lr_ref, exact=same)  # a new packet: the caller's is left as it is
        ref = registration.apply_shift(ref, registration.from_units(packet.ref_shift),
                                       registration.rotation_from_units(packet.ref_rotation)) if model.needs_reference else None
    if _round_up(size[0], model.alignment) != padded[0] or _round_up(size[1], model.alignment) != padded[1]:
        raise ContainerError(f"padded size {padded[1]}x{padded[0]} in the container does not match the model's alignment")
    read_ref = None if ref is None else tiling.scene_reader(ref, padded) if isinstance(ref, raster.RasterScene) \
        else tiling.memory_reader(ref, None, model.alignment)
    spec = side_spec(model)
    side = _side_tensors(model, spec, packet)
    if tile is None and packet.tiles is not None and overlap is None:
        tiler = layout(padded, model.alignment, s, packet.tiles["tile"], packet.tiles["overlap"], recorded=True)
    else:
        tiler = layout(padded, model.alignment, s, tile, overlap, context=model.context)
    # "auto" on decode means what the encoder chose (the condition must be computed the same way)
    precision = resolve_precision(model, packet.precision if precision in (None, "auto") else precision)

    lr = np.asarray(packet.lr)
    if isinstance(ref, torch.Tensor):
        agreement = reference_agreement(stored_lr(packet), ops.pad_to_multiple(ref, model.alignment)[0], s)
        if math.isnan(agreement):  # a flat LR (e.g. the lowest codec quality) or a flat reference
            warnings.warn("the stored LR or the reference has no detail to compare, so whether the reference "
                          "shows the same place was not checked", stacklevel=2)
        elif agreement < MIN_REFERENCE_AGREEMENT:
            warnings.warn(f"the reference looks unrelated to this image (agreement of their detail "
                          f"{agreement:.2f} < {MIN_REFERENCE_AGREEMENT}); is it the right place?", stacklevel=2)
    out = torch.empty(1, 3, *padded) if sink is None else None
    wh, ww = tiler.window_size
    groups = tiler.batches(BATCH_PIXELS)
    with _inference(model, precision):
        for b, batch in enumerate(_progress(groups, progress, "decode")):
            gen = torch.Generator().manual_seed(int(seed) if len(groups) == 1 else _batch_seed(int(seed), b))
            x = tiler.cut(lambda rows, cols: u8_to_float(lr[rows, cols]), batch, s)
            side_b = {name: tiler.cut(lambda rows, cols, t=t: t[..., rows, cols], batch, spec[name].stride)
                      for name, t in side.items()}
            r = tiler.read(read_ref, batch) if read_ref is not None else None
            y = model.upscale(x, side_b, r, temperature=float(temperature), generator=gen)
            if tuple(y.shape) != (len(batch), 3, wh, ww):
                raise ModelError(f"{model.name}.upscale returned {list(y.shape)}, expected {[len(batch), 3, wh, ww]}")
            if checked is not None:
                _bicubic_fallback(y, x, batch, checked, s)
            if sink is None:
                tiler.stitch(out, y, batch)
            else:
                for w, _, core in tiler.cores(y, batch):
                    sink.put(w.core, core.clamp(0, 1).nan_to_num(0.0))
    return None if sink is not None else ops.crop_to(out, size).clamp_(0, 1).nan_to_num_(0.0)


def _bicubic_fallback(y: torch.Tensor, x: torch.Tensor, batch: list, checked: Verification, s: int) -> None:
    """Overwrite, in the decoded windows ``y``, the cores' pixels of the blocks the verifying
    encoder gave to bicubic with the bicubic upscale of the windows' LR ``x``."""
    b = checked.block
    for i, w in enumerate(batch):
        y0, y1, x0, x1 = w.core
        rows, cols = slice(y0 // b, (y1 - 1) // b + 1), slice(x0 // b, (x1 - 1) // b + 1)
        marks = np.argwhere(checked.fallback[rows, cols])
        if not len(marks):
            continue
        up = ops.bicubic_up(x[i:i + 1], s).to(y.dtype)
        for r, c in marks + (rows.start, cols.start):
            by0, by1 = max(r * b, y0), min((r + 1) * b, y1)
            bx0, bx1 = max(c * b, x0), min((c + 1) * b, x1)
            y[i, :, by0 - w.y:by1 - w.y, bx0 - w.x:bx1 - w.x] = up[0, :, by0 - w.y:by1 - w.y, bx0 - w.x:bx1 - w.x]


# ============================================================================= helpers
def _image(x, what: str) -> torch.Tensor:
    t = as_image_tensor(x).detach()
    if not torch.isfinite(t).all():
        raise InputError(f"{what} contains NaN or infinite values")
    lo, hi = float(t.min()), float(t.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise InputError(f"{what} values span {lo:.3g}..{hi:.3g}; expected floats in [0,1] (divide 8-bit data by 255)")
    return t.clamp(0, 1)


def fingerprint(ref, progress: bool = False) -> str:
    """The reference fingerprint (``refscale.format.container.reference_fingerprint``) of a reference
    tensor as it was given (before resampling and registration), from its 8-bit pixels: exactly
    what the receiver holds, independent of float arithmetic that may differ between machines.
    A :class:`refscale.io.raster.RasterScene` is hashed strip by strip (one pass, the same digest)."""
    if isinstance(ref, raster.RasterScene):
        digest = reference_hasher((*ref.size, 3))
        for rows in ref.rows_u8(progress):
            digest.update(rows.tobytes())
        return digest.hexdigest()
    return reference_fingerprint(to_uint8_hwc(ref))


def lr_reference(ref: torch.Tensor, align: int, scale: int) -> np.ndarray:
    """The reference at the LR's size that an inter-frame LR codec predicts from, uint8 ``[h, w, 3]``.

    Normative, computed alike by encoder and decoder from the reference as given (before
    registration; after ``resample_ref``): reflect-padded to the model's alignment like the image,
    then for ``scale > 1`` MATLAB bicubic down (:func:`refscale.ops.bicubic_down`) in float64,
    clamped and rounded to 8 bits; at scale 1 the 8-bit reference itself. float64 keeps the rounding
    away from ties on any CPU; the inter codec's frame-0 digest refuses a file if it ever differs.
    """
    ref_p = ops.pad_to_multiple(ref, align)[0]
    if scale > 1:
        ref_p = ops.bicubic_down(ref_p.to(torch.float64), scale)
    return to_uint8_hwc(ref_p)


def _check_reference(packet: Packet, got: str, allow_other: bool) -> bool:
    """True when the reference is the one the encoder recorded (or none is recorded); refuses
    another one unless ``allow_other`` (then warns and returns False)."""
    if packet.ref_hash is None:
        warnings.warn(f"the container (format version {packet.version}) records no reference fingerprint; "
                      "the reference cannot be checked", stacklevel=3)
        return True
    if got == packet.ref_hash:
        return True
    text = (f"the reference is not the one this image was encoded with (fingerprint {got[:12]}, "
            f"the container records {packet.ref_hash[:12]})")
    if not allow_other:
        raise InputError(text + "; give the same reference, or allow another one (--allow-other-reference) "
                                "for a re-encoded copy of it")
    warnings.warn(text + "; decoding anyway", stacklevel=3)
    return False


def _reference(model: Rescaler, ref, size: tuple[int, int], codec: str = "png", record=None, windowed: bool = False,
               progress: bool = False) -> tuple[torch.Tensor | raster.RasterScene | None, str | None]:
    """``(reference as given, its fingerprint)``; ``(None, None)`` for models without one, unless
    the LR ``codec`` predicts from the reference. A reference file of an image with a raster
    ``record`` is read with its bands and intensity mapping (:func:`refscale.io.raster.read_reference`);
    with ``windowed``, a reference path becomes a :class:`refscale.io.raster.RasterScene` of the
    image's ``size``, read window by window and fingerprinted in one pass."""
    if not model.needs_reference and not codecs.needs_reference(codec):
        if ref is not None:
            warnings.warn(f"model {model.name} takes no reference; ignoring it", stacklevel=3)
        return None, None
    model.check_reference(ref)
    if ref is None:
        raise ModelError(f"LR codec {codec} predicts from a reference image: give one (--ref)")
    if windowed and isinstance(ref, (str, os.PathLike)):
        if codecs.needs_reference(codec):
            raise InputError(f"LR codec {codec} predicts from the whole reference: it cannot be read window by window")
        scene = raster.RasterScene.open_reference(ref, record)
        if scene.size != tuple(size):
            raise InputError(f"reference is {scene.size[1]}x{scene.size[0]} but the image is {size[1]}x{size[0]} "
                             "(width x height); a reference read window by window must have the image's size")
        return scene, fingerprint(scene, progress)
    if record is not None and isinstance(ref, (str, os.PathLike)):
        ref = raster.read_reference(ref, record)
    ref = _image(ref, "reference")
    return ref, fingerprint(ref)


def _to_size(ref: torch.Tensor | None, size: tuple[int, int], resample: bool) -> torch.Tensor | None:
    """The reference at the image ``size``: as it is, or (``resample``) resized from another size.

    Normative, so that encoder and decoder get the same pixels: MATLAB bicubic
    (:func:`refscale.ops.imresize`) in float64, clipped and rounded to 8 bits like any image
    refscale reads. Registration follows (a footprint that differs by a translation is recovered
    there); a reference covering another area or at another orientation is not corrected here.
    """
    if ref is None or tuple(ref.shape[-2:]) == tuple(size):
        return ref
    rsize = tuple(ref.shape[-2:])
    if not resample:
        raise InputError(
            f"reference is {rsize[1]}x{rsize[0]} but the image is {size[1]}x{size[0]} (width x height); give a co-registered "
            "reference of the same size (or resample it: --resample-ref / resample_ref=True)"
        )
    out = ops.imresize(ref.double(), size=tuple(size)).clamp(0, 1)
    return round_8bit(out).float()


def layout(padded: tuple[int, int], align: int, scale: int, tile, overlap, recorded: bool = False,
           context: int = 0) -> tiling.Tiler:
    """The :class:`refscale.tiling.Tiler` of a padded image for a model of alignment ``align`` and
    ``scale``: ``tile`` / ``overlap`` in HR pixels (rounded up to the alignment; ``tile=None``:
    :data:`DEFAULT_TILE` above :data:`AUTO_TILE_PIXELS`, else one window; ``0``: one window;
    ``overlap=None``: :data:`DEFAULT_OVERLAP_LR` LR pixels, or the model's ``context`` where that
    is larger). ``recorded``: a container's layout,
    taken as it is after checking it fits the alignment."""
    def tiler(t: int, o: int) -> tiling.Tiler:
        return tiling.Tiler(tuple(padded), t, o, align)

    whole = (max(padded), 0)
    if recorded:
        if tile % align or overlap % align:
            raise ContainerError(f"recorded tile layout {tile}/{overlap} is not a multiple of the model's alignment {align}")
        return tiler(tile, overlap)
    if tile is None:
        if padded[0] * padded[1] <= AUTO_TILE_PIXELS:
            return tiler(*whole)
        tile = DEFAULT_TILE
    if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 0:
        raise InputError(f"tile must be a non-negative integer (pixels), got {tile!r}")
    if tile == 0:
        return tiler(*whole)
    tile = _round_up(int(tile), align)
    overlap = max(DEFAULT_OVERLAP_LR * scale, int(context)) if overlap is None else overlap
    if isinstance(overlap, bool) or not isinstance(overlap, (int, np.integer)) or overlap < 0:
        raise InputError(f"overlap must be a non-negative integer (pixels), got {overlap!r}")
    overlap = min(_round_up(int(overlap), align), tile)
    if tile >= max(padded):
        return tiler(*whole)
    return tiler(tile, overlap)


def side_spec(model: Rescaler) -> dict[str, SideSpec]:
    """The model's declared side tensors (:meth:`refscale.protocol.Rescaler.side_spec`), checked:
    positive channels, a stride that divides the alignment, a dtype a container can restore."""
    spec = dict(model.side_spec())
    for name, sp in spec.items():
        if not isinstance(sp, SideSpec) or sp.channels < 1 or sp.stride < 1 or model.alignment % sp.stride \
                or sp.dtype not in RESTORE_DTYPES:
            raise ModelError(f"{model.name}: side tensor {name!r} is declared as {sp!r}; it needs channels >= 1, a "
                             f"stride that divides the alignment {model.alignment} and a dtype in {', '.join(RESTORE_DTYPES)}")
    return spec


def _check_side(model: Rescaler, spec: dict[str, SideSpec], side: dict, n: int, window: tuple[int, int]) -> None:
    """``downscale``'s side tensors for ``n`` windows of ``window`` are exactly the declared ones."""
    if set(side) != set(spec):
        raise ModelError(f"{model.name}.downscale returned side tensors {sorted(side)} but side_spec declares {sorted(spec)}")
    for name, t in side.items():
        sp = spec[name]
        want = (n, sp.channels, window[0] // sp.stride, window[1] // sp.stride)
        if tuple(t.shape) != want or str(t.dtype).replace("torch.", "") != sp.dtype:
            raise ModelError(f"{model.name}: side tensor {name!r} is {str(t.dtype).replace('torch.', '')} "
                             f"{list(t.shape)}; side_spec declares {sp.dtype} {list(want)}")


def _integer_array(model: Rescaler, name: str, t: torch.Tensor) -> np.ndarray:
    if t.is_floating_point():
        if not torch.isfinite(t).all() or not torch.equal(t, t.round()):
            raise ModelError(f"{model.name}: side tensor {name!r} is not integer-valued; quantize it in downscale")
        return t.to(torch.int64).numpy()
    if t.dtype == torch.bool:
        return t.to(torch.uint8).numpy()
    return t.to(torch.int64).numpy()


def _side_tensors(model: Rescaler, spec: dict[str, SideSpec], packet: Packet) -> dict[str, torch.Tensor]:
    """The packet's side arrays as the tensors the model expects, after checking names, channels
    and strides against the model's declaration ``spec``."""
    if set(spec) != set(packet.side):
        raise ContainerError(f"side information {sorted(packet.side)} does not match model {model.name} (expects {sorted(spec)})")
    out = {}
    for name, arr in packet.side.items():
        channels, stride = spec[name].channels, spec[name].stride
        a = np.asarray(arr)
        if a.ndim != 4 or a.shape[0] != 1 or a.shape[1] != channels or \
                a.shape[2] * stride != packet.padded_size[0] or a.shape[3] * stride != packet.padded_size[1]:
            raise ContainerError(f"side tensor {name!r} has shape {list(a.shape)}; model {model.name} needs "
                                 f"[1, {channels}, padded/{stride}]")
        dtype = getattr(torch, packet.side_dtypes.get(name, "int64"))
        out[name] = torch.from_numpy(a.astype(np.int64)).to(dtype)
    return out


def _check_model(model: Rescaler, packet: Packet, allow_mismatch: bool) -> None:
    if packet.scale != model.scale:
        raise ModelError(f"container is x{packet.scale} ({packet.model}) but model {model.name} is x{model.scale}")
    ours = model.weights_hash()
    if packet.weights_hash != ours and not allow_mismatch:
        raise ModelError(
            f"container was made by {packet.model} (weights {packet.weights_hash[:12]}) but the model is {model.name} "
            f"(weights {ours[:12]}); load the same model, or allow_mismatch=True / --allow-mismatch to force it"
        )
    align = model.alignment
    ph, pw = packet.padded_size
    if ph % align or pw % align or ph - packet.size[0] >= align or pw - packet.size[1] >= align:
        raise ContainerError(f"padded size {pw}x{ph} does not fit model {model.name} (alignment {align})")


def stored_lr(packet: Packet) -> torch.Tensor:
    """The LR image as the container holds it (after the codec), ``[1,3,h,w]`` float in [0,1]."""
    return u8_to_float(packet.lr)


def u8_to_float(a: np.ndarray) -> torch.Tensor:
    """8-bit pixels ``[h, w, 3]`` as a ``[1, 3, h, w]`` float tensor in [0, 1]."""
    return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).unsqueeze(0).float() / 255.0


def resolve_precision(model: Rescaler, precision: str | None) -> str:
    """``fp32`` or ``bf16`` for ``precision`` in fp32/bf16/auto/None (None = the default, auto)."""
    precision = DEFAULT_PRECISION if precision is None else str(precision)
    if precision not in ("fp32", "bf16", "auto"):
        raise InputError(f"precision must be fp32, bf16 or auto, got {precision!r}")
    if not model.supports_bf16:
        return "fp32"
    if precision == "auto":
        device = next((p.device.type for p in model.parameters()), "cpu")
        return "bf16" if native_bf16(device) else "fp32"
    return precision


@contextlib.contextmanager
def _inference(model: Rescaler, precision: str):
    """Eval mode, no gradients and the requested precision; restores the model's settings after."""
    was_training = model.training
    speed = (model.bf16, model.channels_last) if model.supports_bf16 else None
    model.eval()
    if speed is not None:
        fast = precision == "bf16"
        model.set_speed(bf16=fast, channels_last=fast or getattr(model, "fp32_channels_last", False))
    try:
        with torch.no_grad():
            yield
    finally:
        if speed is not None:
            model.set_speed(bf16=speed[0], channels_last=speed[1])
        model.train(was_training)


def _progress(items, enabled: bool, desc: str):
    if not enabled or len(items) < 2:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="batch", leave=False, dynamic_ncols=True)


def _batch_seed(seed: int, index: int) -> int:
    return int(np.random.SeedSequence([seed, index]).generate_state(1, np.uint64)[0] >> 1)


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m

