"""Evaluation of any rescaler on any dataset (``refscale evaluate``), through the real container.

For every sample (HR cropped bottom/right to a multiple of the scale first — the field's
mod-crop — and its reference if the model needs one):

1. ``packet = model.encode(hr, ref)``; ``data = packet.to_bytes(codec, quality)``: the real
   ``.rsc`` bytes; ``bpp`` = all bytes * 8 / (H*W), ``bpp_lr`` / ``bpp_side`` from the section
   sizes (the header counts only in ``bpp``).
2. ``hr_hat = model.decode(Packet.from_bytes(data), ref, seed=d, temperature=temperature)`` for
   ``d < draws`` (deterministic models and temperature 0: one draw); PSNR/SSIM on Y and RGB
   with ``crop_border = scale`` (BasicSR, :mod:`refscale.metrics`) averaged over the draws, and
   ``frac_off40``, the fraction of pixels with any RGB channel off by more than 40 levels
   (:func:`refscale.metrics.fraction_off`: wrong colours that PSNR-Y does not see). For
   an HR stored as a greyscale file the Y metrics use the grey value itself
   (:func:`refscale.metrics.grey_luma`), the convention of the published bicubic tables (Set14's
   bridge).
3. ``si_lr``: SI (RefScale eq. 15) of the LR image as stored in the container (after the codec).
4. ``seconds``: wall time of encode + serialisation + one decode (the mean over draws); with a
   budget the search for the quality (several serialisations, and the verifying encoder's check
   again at the quality found) is included: what ``refscale encode --bpp`` costs.
   ``precision``: the model arithmetic (``fp32``/``bf16``; ``auto`` resolves as in
   :mod:`refscale.pipeline`); the decoder repeats what the container records. The result
   records the resolved value.
5. With ``lr_dir``: the stored LR image of each sample is written to ``lr_dir/<name>.png`` (for
   looking at it, or for no-reference LR quality: ``python -m benchmarks lr_quality --lr DIR``).
6. Where a sample has a change mask (an OSCD train city's ``change_mask.png``): ``psnr_y_changed``
   and ``psnr_y_unchanged``, PSNR-Y over the changed / unchanged pixels (the border cropped as
   above): whether the reference leaks into what changed (issue 27). Their means are over the
   images that have a mask, averaged over draws as the other metrics.
7. A scale picker (:class:`refscale.zoo.ScalePicker`, ``-m enhance-hevc``) with a budget: each
   image is coded as ``refscale encode --bpp`` codes it (:func:`refscale.pipeline.encode_best`:
   every member fitted to the budget and decoded, the best PSNR-Y written), then decoded from its
   bytes by the member it names. Our choice: the image is not mod-cropped and the metrics crop
   one pixel, as for a scale-1 model, so that the picker is scored on the same pixels as
   ``inter-hevc`` whatever scale it picks; each row records the member (``member``, ``scale``)
   and every candidate's row (``candidates``), and ``seconds`` includes every member's encode.

The result is the JSON of docs/design.md ("Evaluation output"): ``model, scale, dataset, split,
draws, images[], mean{}``, and ``worst{}``: the image with the lowest PSNR-RGB (:func:`worst_image`).
"""
from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

from tqdm import tqdm

from refscale import metrics
from refscale.format import codecs
from refscale.data import Sample, iter_full_images, read_change_mask
from refscale.errors import InputError
from refscale.io.image import is_greyscale_file, write_image
from refscale.protocol import Rescaler
from refscale.pipeline import encode_best, fit_verified, stored_lr
from refscale.zoo import ScalePicker

METRIC_KEYS = ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb", "frac_off40", "si_lr", "bpp", "bpp_lr", "bpp_side", "seconds")
#: metrics of the images that have a change mask only (their mean is over those)
CHANGE_KEYS = ("psnr_y_changed", "psnr_y_unchanged")
#: what the ``worst`` summary repeats of the worst image's row
WORST_KEYS = ("name", "psnr_rgb", "psnr_y", "frac_off40")


def _dataset_name(samples: list[Sample]) -> str:
    """The folder holding every sample: ``Set5`` for single images, ``oscd`` for city folders."""
    parents = [Path(s.hr).resolve().parent for s in samples]
    if all(p.name == s.name for p, s in zip(parents, samples)):  # pair / OSCD folders
        parents = [p.parent for p in parents]
    try:
        return Path(os.path.commonpath([str(p) for p in parents])).name
    except ValueError:
        return ""


def evaluate(model: Rescaler | ScalePicker, samples: list[Sample], draws: int = 1, codec: str | None = None, quality: int | None = None,
             progress: bool = True, *, bpp: float | None = None, max_bytes: int | None = None,
             dataset: str | None = None, split: str | None = None,
             lr_dir: str | os.PathLike | None = None, overwrite: bool = False,
             precision: str | None = None, temperature: float | None = None, verify: bool = True) -> dict:
    """Evaluate ``model`` on ``samples``; returns the evaluation dict of docs/design.md.

    ``draws`` decodes of different seeds are averaged for stochastic models (``model.stochastic``);
    deterministic models (and any model at temperature 0) are decoded once and report
    ``draws: 1``. ``dataset`` and ``split`` only label the result (default: the samples' common folder name, and None). ``lr_dir``: also save
    the stored LR images there as ``<name>.png`` (existing files only with ``overwrite``).
    ``precision``: ``fp32``, ``bf16`` or ``auto``/None (the pipeline default). ``temperature``:
    the latent temperature of every decode (stochastic models; default the model's
    ``decode_temperature``).
    ``bpp`` / ``max_bytes``: a budget for each whole ``.rsc`` file instead of ``quality`` (the
    codec quality is chosen per image by :meth:`refscale.Packet.fit`; each row records it).
    ``codec=None``: the model's default codec (PNG, or an ``inter-*`` model's P-frame codec).
    ``verify``: encode with the verifying encoder (the default, as ``refscale encode``; each row
    records the fraction of blocks that fell back to bicubic, ``fallback``, the RGB PSNR of the
    worst block minus bicubic's there, ``worst_block_gap``, and the check's time,
    ``verify_seconds``); the first draw (seed 0) decodes what the encoder checked.
    """
    from refscale.format.container import Packet, bytes_for_bpp, section_sizes
    from refscale.pipeline import resolve_precision

    picker = model if isinstance(model, ScalePicker) else None
    if picker is not None:
        picker.check_budget(quality, bpp, max_bytes)
    codec, quality = codecs.resolve(codec, quality, model.default_codec, bpp=bpp, max_bytes=max_bytes,
                                    default_quality=model.default_quality)
    if lr_dir is not None:
        check_lr_dir(samples, lr_dir, overwrite)
    members = picker.members if picker is not None else [model]
    for m in members:
        m.eval()
    scale = 1 if picker is not None else model.scale  # a picker: scored on every pixel, as a scale-1 model
    temperature = members[0].decode_temperature if temperature is None else temperature
    draws = max(1, int(draws)) if any(m.stochastic for m in members) and temperature > 0 else 1  # t = 0: z = 0, no randomness
    precision = resolve_precision(members[0], precision)
    images, over_budget = [], []
    bar = tqdm(total=len(samples), desc=f"evaluate {model.name}", unit="img", disable=not progress, dynamic_ncols=True)
    try:
        for sample, (name, hr, ref) in zip(samples, iter_full_images(samples, multiple=scale)):
            if not model.needs_reference and not codecs.needs_reference(codec):
                ref = None
            h, w = hr.shape[-2:]
            budget = bytes_for_bpp(bpp, (h, w)) if bpp is not None else max_bytes
            start = time.perf_counter()
            try:
                data, packet, used_quality, member, candidates = _encode_one(
                    model, hr, ref, codec=codec, quality=quality, max_bytes=budget, precision=precision, verify=verify)
            except InputError as e:
                if budget is None:
                    raise
                over_budget.append({"name": name, "error": str(e)})
                warnings.warn(f"{name}: {e}; left out of the means")
                bar.update(1)
                continue
            t_encode = time.perf_counter() - start
            sizes = section_sizes(data)
            stored = Packet.from_bytes(data, lr_ref=packet.lr_ref)
            scores = {k: 0.0 for k in ("psnr_y", "ssim_y", "psnr_rgb", "ssim_rgb", "frac_off40")}
            t_decode = 0.0
            grey = is_greyscale_file(sample.hr)
            hr_y = metrics.grey_luma(hr) if grey else hr
            mask = _change_mask(sample.change_mask, hr) if sample.change_mask is not None else None
            changed = {k: 0.0 for k in CHANGE_KEYS} if mask is not None else {}
            for d in range(draws):
                start = time.perf_counter()
                hr_hat = member.decode(Packet.from_bytes(data), ref, seed=d, temperature=temperature)
                t_decode += time.perf_counter() - start
                hat_y = metrics.grey_luma(hr_hat) if grey else hr_hat
                scores["psnr_y"] += float(metrics.psnr(hat_y, hr_y, crop_border=scale, y_channel=True)[0]) / draws
                scores["ssim_y"] += float(metrics.ssim(hat_y, hr_y, crop_border=scale, y_channel=True)[0]) / draws
                scores["psnr_rgb"] += float(metrics.psnr(hr_hat, hr, crop_border=scale, y_channel=False)[0]) / draws
                scores["ssim_rgb"] += float(metrics.ssim(hr_hat, hr, crop_border=scale, y_channel=False)[0]) / draws
                scores["frac_off40"] += float(metrics.fraction_off(hr_hat, hr, crop_border=scale)[0]) / draws
                if mask is not None:
                    changed["psnr_y_changed"] += metrics.psnr_y_masked(hat_y, hr_y, mask, crop_border=scale) / draws
                    changed["psnr_y_unchanged"] += metrics.psnr_y_masked(hat_y, hr_y, ~mask, crop_border=scale) / draws
            lr = stored_lr(stored)
            if lr_dir is not None:
                write_image(lr, Path(lr_dir) / f"{name}.png", overwrite=overwrite)
            row = {
                "name": name,
                **scores,
                "si_lr": float(metrics.spatial_information(lr)[0]),
                "bpp": metrics.bits_per_pixel(sizes["total"], h, w),
                "bpp_lr": metrics.bits_per_pixel(sizes["lr"], h, w),
                "bpp_side": metrics.bits_per_pixel(sizes["side"], h, w),
                "quality": used_quality,
                "fallback": (packet.verify_report["fallback_blocks"] / packet.verify_report["blocks"]
                             if packet.verify_report else None),
                "worst_block_gap": (packet.verify_report["worst_block_psnr_rgb"] - packet.verify_report["bicubic_there"]
                                    if packet.verify_report else None),
                "verify_seconds": packet.verify_report["seconds"] if packet.verify_report else None,
                "seconds": t_encode + t_decode / draws,
            }
            row.update(changed)
            if picker is not None:
                row.update(member=member.name, scale=member.scale, candidates=candidates)
            images.append(row)
            bar.update(1)
            bar.set_postfix(psnr_y=f"{row['psnr_y']:.2f}")
    finally:
        bar.close()
    if over_budget and not images:
        raise InputError(f"no image fits the budget ({over_budget[0]['error']})")
    mean = {k: sum(r[k] for r in images) / len(images) for k in METRIC_KEYS} if images else {k: None for k in METRIC_KEYS}
    for k in CHANGE_KEYS:
        values = [r[k] for r in images if k in r]
        if values:
            mean[k] = sum(values) / len(values)
    result = {
        "model": model.name,
        "scale": scale,
        "dataset": dataset if dataset is not None else _dataset_name(samples),
        "split": split,
        "draws": draws,
        "precision": precision,
        "verify": bool(verify),
        "temperature": float(temperature),
        "codec": codec,
        "budget": {"bpp": bpp} if bpp is not None else ({"bytes": max_bytes} if max_bytes is not None else None),
        "images": images,
        "over_budget": over_budget,
        "mean": mean,
    }
    result["worst"] = worst_image(result)
    return result


def _change_mask(path, hr):
    """A change mask (white = changed) as a bool array cropped to ``hr`` as ``hr`` was mod-cropped."""
    mask = read_change_mask(path)
    h, w = hr.shape[-2:]
    if mask.shape[0] < h or mask.shape[1] < w:
        raise InputError(f"{path}: change mask {mask.shape[1]}x{mask.shape[0]} is smaller than the image {w}x{h}")
    return mask[:h, :w]


def _encode_one(model: Rescaler | ScalePicker, hr, ref, *, codec: str, quality: int | None, max_bytes: int | None,
                precision: str, verify: bool) -> tuple[bytes, "Packet", int | None, Rescaler, list[dict] | None]:
    """One image's ``.rsc`` bytes as ``refscale encode`` writes them: ``(data, packet, quality,
    member, candidates)``; with a budget the quality search and the checks at the quality found
    (:func:`fit_verified`), and for a scale picker the choice among its members
    (:func:`encode_best`: ``member`` is the one written, ``candidates`` every member's row). An
    :class:`InputError` when nothing fits the budget."""
    if isinstance(model, ScalePicker):
        data, packet, candidates = encode_best(model.members, hr, ref, max_bytes=max_bytes, codec=codec,
                                               precision=precision, verify=verify)
        chosen = next(c for c in candidates if c["chosen"])
        return data, packet, chosen["quality"], model.member(chosen["model"]), candidates
    packet = model.encode(hr, ref, precision=precision, codec=codec, quality=quality, verify=verify)
    if max_bytes is None:
        return packet.to_bytes(codec, quality), packet, codecs.effective_quality(codec, quality), model, None
    data, packet, used = fit_verified(model, packet, hr, ref, max_bytes=max_bytes, precision=precision, codec=codec,
                                      verify=verify)
    return data, packet, used, model, None


def worst_image(result: dict) -> dict | None:
    """The image of lowest PSNR-RGB in an evaluation result, ``{name, psnr_rgb, psnr_y, frac_off40}``
    (a key its row lacks is None): ``result["worst"]`` where present, else from ``images`` (results
    written before it was recorded); None without per-image PSNR-RGB."""
    if result.get("worst"):
        return result["worst"]
    rows = [r for r in result.get("images", []) if r.get("psnr_rgb") is not None]
    if not rows:
        return None
    row = min(rows, key=lambda r: r["psnr_rgb"])
    return {k: row.get(k) for k in WORST_KEYS}


def check_lr_dir(samples: list[Sample], lr_dir: str | os.PathLike, overwrite: bool) -> None:
    """Refuse, before any work, an ``lr_dir`` whose ``<name>.png`` files would overwrite an input
    image (always) or an existing file (unless ``overwrite``)."""
    inputs = {Path(p).resolve() for s in samples for p in (s.hr, s.ref) if p is not None}
    targets = [Path(lr_dir) / f"{s.name}.png" for s in samples]
    clash = [t for t in targets if t.resolve() in inputs]
    if clash:
        raise InputError(f"saving the LR images would overwrite the input image {clash[0]}; choose another folder")
    taken = [t for t in targets if t.exists()]
    if taken and not overwrite:
        raise InputError(f"{taken[0]} exists; use --force to overwrite LR images")


_COLUMNS = (
    ("psnr_y", "PSNR-Y", ".2f"), ("ssim_y", "SSIM-Y", ".4f"), ("psnr_rgb", "PSNR-RGB", ".2f"),
    ("ssim_rgb", "SSIM-RGB", ".4f"), ("frac_off40", ">40 levels", ".2%"), ("si_lr", "SI (LR)", ".3f"), ("bpp", "bpp", ".3f"),
    ("bpp_lr", "bpp LR", ".3f"), ("bpp_side", "bpp side", ".4f"), ("seconds", "s/img", ".2f"),
)


def to_markdown(result: dict) -> str:
    """A Markdown table: one row per image and a bold mean row, then the worst image (PSNR-RGB)."""
    split = f", split {result['split']}" if result.get("split") else ""
    lines = [
        f"**{result['model']}** (x{result['scale']}) on {result.get('dataset') or 'dataset'}{split}, "
        f"{len(result['images'])} images, {result['draws']} draw(s)",
        "",
        "| image | " + " | ".join(title for _, title, _ in _COLUMNS) + " |",
        "|---|" + "---:|" * len(_COLUMNS),
    ]

    def cells(row: dict) -> str:
        return " | ".join("" if row.get(k) is None else format(row[k], fmt) for k, _, fmt in _COLUMNS)

    for row in result["images"]:
        lines.append(f"| {row['name']} | {cells(row)} |")
    lines.append(f"| **mean** | {cells(result['mean'])} |")
    worst = worst_image(result)
    if worst:
        lines += ["", f"Worst image (lowest PSNR-RGB): {worst['name']}, PSNR-RGB {worst['psnr_rgb']:.2f} dB."]
    if result.get("over_budget"):
        names = ", ".join(r["name"] for r in result["over_budget"])
        lines += ["", f"Left out, over the budget even at the lowest quality: {names}."]
    return "\n".join(lines) + "\n"
