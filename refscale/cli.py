"""The ``refscale`` command line: a thin layer over the Python API (docs/design.md, "Command line").

::

    refscale encode HR.png --ref REF.png [-m refscale-x2] [--codec png] [-q Q] -o scene.rsc [--lr-out lr.png]
    refscale encode HR.png --ref REF.png -m inter-h264 -q 60 -o scene.rsc    # a P-frame from the reference, or intra
                                                   # where that is cheaper (--inter-mode auto|inter|intra)
    refscale decode scene.rsc --ref REF.png -o rebuilt.png [--temperature T] [--seed 0]
    refscale info scene.rsc
    refscale models
    refscale evaluate --data DIR -m MODEL [--split test] [--draws 5] [--temperature T] [--codec C] [-q Q] --json out.json [--md out.md]
    refscale train CONFIG.yaml [--resume] [--out RUN_DIR]
    refscale demo [-m refscale-x2] [-o DIR]
    refscale export -m MODEL --part encoder|decoder -o model.onnx [--tile N] [--opset 17]   # pip install 'refscale[onnx]'
    refscale wrap onboard.npz --onnx encoder.onnx [--ref REF.png] -o scene.rsc                # on-board outputs -> .rsc
    refscale select-ref NEW.tif --archive DIR|catalog.json [--json]                            # the reference from an archive
    refscale batch encode|decode IN -o OUT [-m MODEL] [--ref DIR | --ref-archive A] --workers N [--scheduler ADDR]  # on Dask

Behaviour shared by every command:

* Errors refscale raises on purpose (:class:`~refscale.errors.RefScaleError`) print one line,
  ``refscale: error: ...``, on stderr and exit with code 2 (as argparse does for bad usage);
  Python warnings (e.g. a greyscale input converted to RGB) print as ``refscale: warning: ...``.
* Outputs are written atomically (a temporary file in the target folder, then ``os.replace``),
  an existing output is never replaced without ``--force``, and an output may never be one of
  the inputs. In a batch, every output is checked before any work starts.
* ``encode`` and ``decode`` take one file or many: a folder or a CSV manifest as the input
  (``-o`` is then a folder, created if needed; one output per sample, named after it) with a
  progress bar. A failing sample is reported on its own line and the others still run; the
  exit code is then 2.
* Models without a reference (bicubic, IRN, ...) ignore ``--ref`` with a warning rather than
  failing, so that one script can run every model over a pairs folder.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings
from pathlib import Path

from refscale import pipeline
from refscale.errors import InputError, ModelError, RefScaleError


# ============================================================================= entry point
def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 success, 2 refused input, 130 interrupted)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors: argparse already printed
        return int(e.code) if isinstance(e.code, int) else (0 if e.code is None else 2)
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = _show_warning
        try:
            return int(args.func(args) or 0)
        except RefScaleError as e:
            _error(str(e))
            return 2
        except KeyboardInterrupt:
            print("refscale: interrupted", file=sys.stderr)
            return 130


def _show_warning(message, category, filename, lineno, file=None, line=None):  # noqa: ARG001
    print(f"refscale: warning: {str(message).splitlines()[0]}", file=sys.stderr)


def _error(message: str) -> None:
    print(f"refscale: error: {' '.join(str(message).split())}", file=sys.stderr)


def _add_inter_mode_option(parser: argparse.ArgumentParser) -> None:
    """``--inter-mode`` of the commands that write inter-frame LR sections (encode, evaluate)."""
    from refscale.format.inter import MODES

    parser.add_argument("--inter-mode", choices=MODES, default="auto",
                        help="*-inter codecs: code the P-frame (inter), the image alone (intra), or whichever needs fewer "
                             "bits at equal quality (auto, the default; recorded in the file)")


def _add_precision_option(parser: argparse.ArgumentParser) -> None:
    """``--precision`` of the commands that choose the model arithmetic (encode, evaluate)."""
    parser.add_argument("--precision", choices=("fp32", "bf16", "auto"), default=None,
                        help="model arithmetic (default auto: bf16 where the CPU has native bf16, else fp32)")


def build_parser() -> argparse.ArgumentParser:
    from refscale import __version__
    from refscale.format.codecs import CODECS, available_codecs

    avail = available_codecs()
    codec_help = "LR codec: " + ", ".join(CODECS) + " (default: the model's, png (lossless) except inter-* models; " \
        "*-inter code the LR as a video P-frame predicted from the reference, pip install 'refscale[inter]'); available here: " + \
        (", ".join(c for c, ok in avail.items() if ok) or "none")
    missing = [c for c, ok in avail.items() if not ok]
    if missing:
        codec_help += "; missing: " + ", ".join(missing)
    q_help = ("codec quality 1..100 (omit or 100 = lossless for webp, avif, jxl, j2k; jpeg defaults to 95; "
              "*-inter: CRF = round(51 (100 - q) / 99) for h264/hevc, default q 60)")

    p = argparse.ArgumentParser(
        prog="refscale",
        description="Learned image rescaling with a reference image: encode a new image into a small .rsc file "
                    "using an older image of the same place, and rebuild it.",
        epilog="Codecs available on this machine: " + ", ".join(f"{c} ({'yes' if ok else 'no'})" for c, ok in avail.items()),
    )
    p.add_argument("--version", action="version", version=f"refscale {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    e = sub.add_parser("encode", help="downscale an image (or a folder / CSV manifest) into .rsc containers",
                       description="Downscale HR into a .rsc container. HR may be an image, a folder "
                                   "(pair folders, OSCD cities or single images) or a CSV manifest hr,ref[,name]; "
                                   "then -o is a folder.")
    e.add_argument("input", metavar="HR", help="image, folder or .csv manifest")
    e.add_argument("--ref", help="reference image (for a batch: a folder or manifest whose samples are named like the inputs)")
    _add_archive_options(e, "encode")
    e.add_argument("-m", "--model", default="refscale-x2",
                   help="catalogue name or .safetensors path (default refscale-x2); a scale picker (enhance-hevc) with "
                        "--bpp / --bytes also picks the scale, per image, by the decoded PSNR-Y within the budget")
    e.add_argument("--codec", default=None, help=codec_help)
    _add_quality_options(e, q_help)
    e.add_argument("-o", "--output", required=True, help="output .rsc file (or folder for several inputs)")
    e.add_argument("--lr-out", help="also save the viewable LR image as stored in the container (file, or folder for a batch); "
                                    "lr.tif for a GeoTIFF input: georeferenced, geotransform scaled by the factor")
    e.add_argument("--bands", default=None, metavar="B,B,B",
                   help="the three bands the model sees, 1-based like rasterio (e.g. 4,3,2); needed for files with 2 or more "
                        "than 3 bands; recorded, and decoding writes these bands")
    e.add_argument("--range", dest="value_range", default=None, metavar="LO,HI",
                   help="intensity mapping of 12/16-bit and float data to the model's 8-bit domain, recorded and inverted "
                        "on decoding: LO,HI for every band (e.g. 0,10000), pLO,HI percentiles of each band's valid pixels (e.g. p2,98) "
                        "or jLO,HI of the bands together (default j0,100: their minimum and maximum, nothing clipped, "
                        "colour balance kept; 8-bit data are used as they are)")
    e.add_argument("--tile", type=int, default=None, help="process in tiles of N HR pixels (default: automatic above 1 Mpx; 0 = never)")
    e.add_argument("--resample-ref", action="store_true",
                   help="resize a reference of another size to the image size (bicubic, 8-bit), then register it like any other")
    e.add_argument("--no-register", dest="register", action="store_false",
                   help="do not estimate and correct a translation and small rotation of the reference (default: register it; "
                        "recorded for the decoder)")
    e.add_argument("--no-verify", dest="verify", action="store_false",
                   help="do not decode the result here to check it block by block against bicubic (default: check, and "
                        "code the blocks where the model is worse with the bicubic fallback; recorded for the decoder)")
    _add_inter_mode_option(e)
    _add_precision_option(e)
    e.add_argument("--force", action="store_true", help="overwrite existing outputs")
    e.set_defaults(func=cmd_encode)

    d = sub.add_parser("decode", help="rebuild images from .rsc containers",
                       description="Rebuild HR from a .rsc container (or a folder of them, or a CSV manifest rsc,ref[,name]).")
    d.add_argument("input", metavar="RSC", help=".rsc file, folder of .rsc files or .csv manifest rsc,ref[,name]")
    d.add_argument("--ref", help="reference image (for a batch: a folder or manifest whose samples are named like the containers)")
    _add_archive_options(d, "decode")
    d.add_argument("-m", "--model", default=None, help="model to decode with (default: the one recorded in the container)")
    d.add_argument("-o", "--output", required=True, help="output image (format by suffix; or a folder for several inputs)")
    d.add_argument("--temperature", type=float, default=None,
                   help="latent temperature for stochastic models (default: the one the encoder verified, else "
                        "the weights' own, 1 unless they say otherwise)")
    d.add_argument("--seed", type=int, default=None,
                   help="random seed; the same seed gives the same pixels (default: the one the encoder verified, else 0)")
    d.add_argument("--tile", type=int, default=None, help="tile size in HR pixels (default: as recorded by the encoder)")
    d.add_argument("--resample-ref", action="store_true", default=None,
                   help="resize a reference of another size to the image size (default: only the reference the encoder "
                        "recorded, which it resized too)")
    d.add_argument("--precision", choices=("fp32", "bf16"), default=None, help="model arithmetic (default: as recorded)")
    d.add_argument("--allow-mismatch", action="store_true", help="decode even if the container was made by other weights (experts)")
    d.add_argument("--allow-other-reference", action="store_true",
                   help="decode with a reference other than the one the image was encoded with (warns; e.g. a re-encoded copy)")
    d.add_argument("--cog", action="store_true",
                   help="write -o x.tif as a Cloud Optimized GeoTIFF (tiled, with overviews; needs the geo extra)")
    d.add_argument("--frame0-cache", metavar="DIR", default=None,
                   help="keep the inter codecs' frame 0 per reference in DIR, so the next image decoded against the "
                        "same reference skips regenerating it (about 1.5 bytes per LR pixel; default: "
                        "$REFSCALE_FRAME0_CACHE, else in memory only)")
    d.add_argument("--force", action="store_true", help="overwrite existing outputs")
    d.set_defaults(func=cmd_decode)

    i = sub.add_parser("info", help="print a container's header, section sizes and bpp as JSON")
    i.add_argument("inputs", metavar="RSC", nargs="+", help=".rsc file(s)")
    i.set_defaults(func=cmd_info)

    m = sub.add_parser("models", help="list the model catalogue and the available codecs")
    m.add_argument("--json", action="store_true", help="print JSON instead of a table")
    m.set_defaults(func=cmd_models)

    v = sub.add_parser("evaluate", help="evaluate a model on a dataset through real containers")
    v.add_argument("--data", required=True, help="dataset folder or CSV manifest")
    v.add_argument("-m", "--model", required=True,
                   help="catalogue name or .safetensors path; a scale picker (enhance-hevc) with --bpp / --bytes, "
                        "each image coded as refscale encode codes it")
    v.add_argument("--split", default=None, help="split from the dataset's split.json (e.g. test)")
    v.add_argument("--draws", type=int, default=1, help="decodes averaged per image for stochastic models (default 1)")
    v.add_argument("--temperature", type=float, default=None,
                   help="latent temperature of every decode (stochastic models; default the weights' own, 1 unless "
                        "they say otherwise)")
    v.add_argument("--codec", default=None, help=codec_help)
    _add_quality_options(v, q_help)
    v.add_argument("--json", dest="json_out", default=None, help="write the result JSON here (default: print it)")
    v.add_argument("--md", dest="md_out", default=None, help="also write a Markdown table here")
    v.add_argument("--no-verify", dest="verify", action="store_false",
                   help="encode without the verifying encoder's bicubic fallback (default: as refscale encode, verified)")
    v.add_argument("--save-lr", default=None, metavar="DIR", help="also save each stored LR image as DIR/<name>.png")
    _add_inter_mode_option(v)
    _add_precision_option(v)
    v.add_argument("--force", action="store_true", help="overwrite existing outputs")
    v.set_defaults(func=cmd_evaluate)

    t = sub.add_parser("train", help="train a model from a YAML config")
    t.add_argument("config", metavar="CONFIG.yaml")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--out", default=None, help="run folder (default runs/<config name>)")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set schedule.steps=100 (repeatable)")
    t.set_defaults(func=cmd_train)

    g = sub.add_parser("demo", help="encode and decode a shipped Sentinel-2 revisit pair (no data needed)")
    g.add_argument("-m", "--model", default="refscale-x2")
    g.add_argument("-o", "--output", default=None, help="folder for the demo files (default: write nothing)")
    g.add_argument("--synthetic", action="store_true", help="a procedural pair instead of the shipped real one")
    g.add_argument("--size", type=int, default=None,
                   help="real pair: centre crop of this size (default: all 384 px); synthetic: side (default 512)")
    g.add_argument("--seed", type=int, default=0, help="seed of the synthetic pair")
    g.add_argument("--codec", default="png", help=codec_help)
    g.set_defaults(func=cmd_demo)

    x = sub.add_parser("export", help="export a model's encoder or decoder to ONNX (on-board deployment; the onnx extra)",
                       description="Export one direction of a model to an ONNX graph that takes padded tiles, with a "
                                   "refscale.* metadata block, checked against PyTorch with ONNX Runtime "
                                   "(pip install 'refscale[onnx]'). See refscale/onnx.")
    x.add_argument("-m", "--model", required=True, help="catalogue name or .safetensors path")
    x.add_argument("--part", required=True, choices=("encoder", "decoder"),
                   help="encoder: HR (+ reference) -> LR before rounding + side map; decoder: LR, side, reference, z -> HR")
    x.add_argument("-o", "--output", required=True, help="output .onnx file")
    x.add_argument("--tile", type=int, default=None,
                   help="fix the graph to N x N HR windows (default: dynamic batch, height and width)")
    x.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    x.add_argument("--no-check", dest="check", action="store_false",
                   help="skip the ONNX Runtime vs PyTorch check on a procedural pair")
    x.add_argument("--force", action="store_true", help="overwrite an existing output")
    x.set_defaults(func=cmd_export)

    w = sub.add_parser("wrap", help="build a .rsc container from the outputs of an exported encoder (on board -> ground)",
                       description="Wrap the LR (before or after 8-bit rounding) and side maps made on board with an "
                                   "exported encoder into a .rsc container that refscale decode decodes.")
    w.add_argument("lr", metavar="LR", help=".npz from refscale.onnx.OnboardOutput.save (LR, side maps, sizes, tiles), "
                                            "or the padded LR as .npy (float in [0,1] before rounding, or uint8) or 8-bit image")
    w.add_argument("--onnx", required=True, help="the exported encoder graph (its metadata names model, weights, scale)")
    w.add_argument("--side", action="append", default=[], metavar="[NAME=]FILE.npy",
                   help="a side tensor as .npy (repeatable; NAME may be left out when the model has one, e.g. smap)")
    w.add_argument("--ref", help="the reference image as uploaded (its fingerprint is recorded)")
    w.add_argument("--ref-fingerprint", default=None, help="instead of --ref: its fingerprint (64 hex digits)")
    w.add_argument("--size", default=None, metavar="WIDTHxHEIGHT", help="image size before padding (default: the padded size)")
    w.add_argument("--tile", type=int, default=None, help="tile core used on board, HR pixels (recorded for the decoder)")
    w.add_argument("--overlap", type=int, default=None, help="tile overlap used on board, HR pixels")
    w.add_argument("--codec", default=None, help="LR codec of the container (default png, lossless)")
    w.add_argument("-q", "--quality", type=int, default=None, help="codec quality")
    w.add_argument("-o", "--output", required=True, help="output .rsc file")
    w.add_argument("--force", action="store_true", help="overwrite an existing output")
    w.set_defaults(func=cmd_wrap)

    r = sub.add_parser("select-ref", help="choose the reference for a new scene from an archive (ranked, explained)",
                       description="Rank an archive's images as references for NEW: footprint overlap, date, valid pixels, "
                                   "image agreement after registration (docs/archive.md). Exit code 1: no suitable reference.")
    r.add_argument("input", metavar="NEW", help="the new scene (image or GeoTIFF)")
    r.add_argument("--archive", required=True, help="folder of images / GeoTIFFs, or a static STAC catalog.json")
    r.add_argument("--date", default=None, help="the new scene's date (YYYY-MM-DD) when its file does not say")
    r.add_argument("--bbox", default=None, metavar="W,S,E,N", help="the new scene's lon/lat footprint when its file does not say")
    _add_select_options(r)
    r.add_argument("--json", action="store_true", help='print {"chosen": PATH or null, "candidates": [...]} (best first)')
    r.set_defaults(func=cmd_select_ref)

    b = sub.add_parser("batch", help="encode or decode many scenes on Dask (a local cluster or a scheduler)",
                       description="One Dask task per scene, resumable (done scenes are skipped), failures isolated, "
                                   "a JSON report (pip install 'refscale[dask]'; docs/archive.md).")
    bsub = b.add_subparsers(dest="batch_command", required=True, metavar="encode|decode")
    for kind in ("encode", "decode"):
        k = bsub.add_parser(kind, help=f"{kind} a folder or manifest on Dask")
        k.add_argument("input", metavar="IN", help="folder or CSV manifest (as refscale " + kind + " takes)")
        k.add_argument("-o", "--output", required=True, help="output folder")
        k.add_argument("-m", "--model", default="refscale-x2" if kind == "encode" else None,
                       help="model (encode default refscale-x2; decode default: the one each container names)")
        k.add_argument("--ref", help="references: a folder or manifest whose samples are named like the inputs")
        _add_archive_options(k, kind)
        k.add_argument("--workers", type=int, default=2, help="local cluster: worker processes (default 2)")
        k.add_argument("--scheduler", default=None, metavar="ADDRESS",
                       help="a running Dask scheduler (e.g. tcp://10.0.0.1:8786) instead of a local cluster")
        k.add_argument("--threads", type=int, default=None,
                       help="torch threads per worker (default: the host's cores // its workers)")
        k.add_argument("--memory-limit", default="4GiB", help="local cluster: memory bound per worker (default 4GiB)")
        k.add_argument("--retries", type=int, default=2, help="reschedules of a scene whose worker died (default 2)")
        k.add_argument("--report", default=None, help="JSON report (default OUT/batch-" + kind + "-report.json)")
        if kind == "encode":
            k.add_argument("--codec", default=None, help="LR codec (default: the model's)")
            _add_quality_options(k, "codec quality")
            k.add_argument("--lr-out", default=None, help="also save the LR images in this folder")
            k.add_argument("--no-verify", dest="verify", action="store_false", help="as refscale encode --no-verify")
            k.add_argument("--no-register", dest="register", action="store_false", help="as refscale encode --no-register")
        else:
            k.add_argument("--seed", type=int, default=None, help="random seed (default: the one the encoder verified)")
            k.add_argument("--allow-other-reference", action="store_true", help="as refscale decode")
        k.add_argument("--force", action="store_true", help="replace outputs that exist but do not verify")
        k.set_defaults(func=cmd_batch, batch_kind=kind)
    return p


def _add_select_options(parser) -> None:
    from refscale import archive

    parser.add_argument("--min-overlap", type=float, default=archive.MIN_OVERLAP,
                        help=f"share of the new footprint a candidate must cover (default {archive.MIN_OVERLAP:g})")
    parser.add_argument("--min-agreement", type=float, default=None,
                        help="image agreement after registration a candidate needs (default: the decoder's check, "
                             f"{pipeline.MIN_REFERENCE_AGREEMENT:g})")
    parser.add_argument("--max-pixels", type=int, default=archive.MAX_PIXELS,
                        help=f"read the pixels of at most this many candidates (default {archive.MAX_PIXELS})")


def _add_archive_options(parser, kind: str) -> None:
    if kind == "encode":
        parser.add_argument("--ref-archive", default=None, metavar="DIR|catalog.json",
                            help="choose each input's reference from this archive (refscale select-ref); the choice is "
                                 "recorded in OUTPUT.ref.json, its fingerprint in the container")
        parser.add_argument("--fallback-model", default=None, metavar="MODEL",
                            help="with --ref-archive: code a scene that has no suitable reference with this model (one "
                                 "that takes none, e.g. fgrn-x2-oscd; default bicubic at the model's scale)")
        parser.add_argument("--refuse-without-ref", action="store_true",
                            help="with --ref-archive: refuse a scene that has no suitable reference instead")
    else:
        parser.add_argument("--ref-archive", default=None, metavar="DIR|catalog.json",
                            help="find each container's reference in this archive by the fingerprint it records")


def _select_kwargs(args) -> dict:
    return {"min_overlap": args.min_overlap, "min_agreement": args.min_agreement, "max_pixels": args.max_pixels}


# ============================================================================= encode, decode
def _add_quality_options(parser, q_help: str) -> None:
    """-q, or a size budget for the whole .rsc file (--bpp / --bytes): one of the three."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("-q", "--quality", type=int, default=None, help=q_help)
    g.add_argument("--bpp", type=float, default=None,
                   help="size budget: bits per pixel of the original image for the whole .rsc file; "
                        "the highest codec quality that fits is chosen")
    g.add_argument("--bytes", dest="max_bytes", type=int, default=None, help="size budget in bytes for the whole .rsc file")


def _codec_choice(args, model=None) -> tuple[str | None, int | None]:
    """--codec / -q / --bpp / --bytes resolved by :func:`refscale.format.codecs.resolve`, the one
    place that checks a codec choice: ``(codec, quality)``, the codec defaulting to the model's
    (e.g. an inter-* model's P-frame codec). Without the model (called before it loads, so that a
    bad option costs no model load) a codec left to the model is not known yet: only the budget
    is checked and ``(None, quality)`` returned. A scale picker (``-m enhance-hevc``) needs a
    budget and no quality (:meth:`refscale.zoo.ScalePicker.check_budget`)."""
    from refscale.format import codecs
    from refscale.zoo import ScalePicker

    quality, bpp, max_bytes = (getattr(args, k, None) for k in ("quality", "bpp", "max_bytes"))
    if isinstance(model, ScalePicker):
        model.check_budget(quality, bpp, max_bytes)
    if model is None and args.codec is None:
        codecs.check_budget(quality, bpp, max_bytes)
        return None, quality
    return codecs.resolve(args.codec, quality, None if model is None else model.default_codec, bpp=bpp,
                          max_bytes=max_bytes, available=True, default_quality=getattr(model, "default_quality", None))


def cmd_encode(args) -> int:
    from refscale import files
    from refscale.format.inter import default_mode

    _codec_choice(args)
    from refscale.io.raster import parse_bands, parse_range

    bands = parse_bands(args.bands)  # refuse bad --bands / --range before the model loads
    parse_range(args.value_range)
    batch = files.is_batch(files.existing(args.input, "input"))
    model = _load_model(args.model)
    codec, quality = _codec_choice(args, model)
    job_models, selections = {}, {}
    if args.ref_archive:  # the reference of each input chosen from the archive (refscale.archive)
        from refscale import archive

        if args.ref:
            raise InputError("--ref and --ref-archive exclude each other")
        name = _fallback_name(args, model)
        fallback = _load_model(name) if name else None
        if fallback is not None and fallback.needs_reference:
            raise InputError(f"--fallback-model {args.fallback_model} needs a reference itself; choose one that takes none")
        chosen = archive.encode_jobs(args.input, args.output, model, args.ref_archive, lr_out=args.lr_out,
                                     fallback_model=fallback, echo=lambda text: print(text, file=sys.stderr))
        jobs = [j for j, _, _ in chosen]
        job_models = {j.name: m for j, m, _ in chosen}
        selections = {j.name: sel for j, _, sel in chosen}
    else:
        jobs = files.encode_jobs(args.input, args.output, model, ref=args.ref, lr_out=args.lr_out, codec=codec)
    files.preflight(jobs, args.force)

    def run(job) -> str:
        if job.name in selections:
            from refscale import archive

            archive.write_reference_record(job.output, selections[job.name], force=True)
        with default_mode(args.inter_mode):
            r = files.encode_file(job, job_models.get(job.name, model), codec=codec, quality=quality, bpp=args.bpp,
                                  max_bytes=args.max_bytes, tile=args.tile, resample_ref=args.resample_ref,
                                  precision=args.precision, register=args.register, force=args.force,
                                  progress=not batch and _tty(), bands=bands, value_range=args.value_range,
                                  verify=args.verify)
        h, w = r["size"]
        q = "" if r["quality"] is None else f" q{r['quality']}"
        if r["inter_mode"]:
            q += f", {'P-frame' if r['inter_mode'] == 'inter' else 'intra only'}" + (" (auto)" if args.inter_mode == "auto" else "")
        rec = r["raster"]
        extra = "" if rec is None else f", {rec.dtype} bands {','.join(map(str, rec.bands))}" + \
            (f" mapped {rec.rule}" if rec.rule != "identity" else "") + (", georeferenced" if rec.georeferenced else "")
        v = r["verify"]
        checked = "" if v is None else (
            f"; verified: {v['fallback_blocks']} of {v['blocks']} blocks to {v['fallback']}, RGB {v['psnr_rgb']:.2f} dB "
            f"({v['fallback']} {v['bicubic_psnr_rgb']:.2f}), worst block {v['worst_block_psnr_rgb']:.2f} dB "
            f"({v['fallback']} there {v['bicubic_there']:.2f}), {v['seconds']:.1f} s")
        return f"{r['output']}: {r['bytes']:,} bytes, {r['bpp']:.4f} bpp ({w}x{h}, {r['model']}, {r['codec']}{q}{extra}){checked}" \
            + _picked(r)

    return _run_jobs(jobs, run, "encode")


def _picked(r: dict) -> str:
    """The encode summary's account of a scale picker's choice (empty for a single model)."""
    if not r.get("candidates"):
        return ""
    rows = [f"x{c['scale']} over the budget" if "error" in c else
            f"{'*' if c['chosen'] else ''}x{c['scale']} q{c['quality']} Y {c['psnr_y']:.2f} dB RGB {c['psnr_rgb']:.2f} dB"
            for c in r["candidates"]]
    rows += [f"{name} left out (no shipped weights)" for name in r.get("left_out") or []]
    return f"; scale picked by PSNR-Y (*): {', '.join(rows)}"


def cmd_decode(args) -> int:
    from refscale import files

    batch = files.is_batch(files.existing(args.input, "input"))
    if args.ref and args.ref_archive:
        raise InputError("--ref and --ref-archive exclude each other")
    jobs = files.decode_jobs(args.input, args.output, ref=args.ref)
    if args.frame0_cache:  # through the environment, so that batch workers keep it too
        from refscale.format.inter import FRAME0_CACHE_ENV
        os.environ[FRAME0_CACHE_ENV] = args.frame0_cache
    if args.cog and any(j.output.suffix.lower() not in (".tif", ".tiff") for j in jobs):
        raise InputError("--cog writes a Cloud Optimized GeoTIFF: the output must be a .tif file")
    files.preflight(jobs, args.force, image_outputs=True)
    models = {}
    if args.model:
        models[args.model] = _load_model(args.model)
    warned = []

    found: dict = {}

    def run(job) -> str:
        if args.ref_archive and job.ref is None:  # the reference the container's fingerprint names
            from refscale import archive

            job.ref = archive.reference_for_container(job.input, args.ref_archive, cache=found)
        packet, model = files.decode_to_file(
            job.input, job.output, job.ref, model=args.model, cache=models, warn_ref=bool(args.ref) and not warned,
            cog=args.cog, force=args.force,
            temperature=args.temperature, seed=args.seed, tile=args.tile, allow_mismatch=args.allow_mismatch,
            allow_other_reference=args.allow_other_reference,
            resample_ref=args.resample_ref, precision=args.precision, progress=not batch and _tty())
        if args.ref and not model.needs_reference:
            warned.append(1)
        rec = packet.raster
        extra = "" if rec is None else f", {rec.dtype} bands {','.join(map(str, rec.bands))}" + \
            (", georeferenced" if rec.georeferenced else "")
        seed = args.seed if args.seed is not None else packet.verification.seed if packet.verification is not None else 0
        return f"{job.output}: {packet.size[1]}x{packet.size[0]} from {job.input.name} ({model.name}, seed {seed}{extra})"

    return _run_jobs(jobs, run, "decode")


# ============================================================================= info, models
def cmd_info(args) -> int:
    from refscale import files
    from refscale.format import codecs
    from refscale.format.container import Packet, inspect

    results = []
    for name in args.inputs:
        path = files.existing(name, "container")
        data = files.read_bytes(path)
        info = inspect(data)
        if codecs.needs_reference(info["codec"]):  # what the inter-frame LR section holds
            info["inter"] = codecs.inter_payload(info["codec"], Packet.from_bytes(data).lr_data)
        results.append({"file": str(path), **info})
    print(json.dumps(results[0] if len(results) == 1 else results, indent=2))
    return 0


def cmd_models(args) -> int:
    from refscale.format.codecs import available_codecs
    from refscale.zoo import catalogue

    rows = catalogue()
    codecs_ = available_codecs()
    if args.json:
        print(json.dumps({"models": rows, "codecs": codecs_}, indent=2))
        return 0
    table = [("name", "scale", "reference", "params", "weights", "note")]
    for r in rows:
        params = "" if r.get("params") is None else f"{r['params']:,}"
        table.append((str(r["name"]), f"x{r['scale']}" if r.get("scale") else "", "yes" if r.get("needs_reference") else "no",
                      params, str(r.get("weights") or "-"), str(r.get("note") or "")))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for k, row in enumerate(table):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        if k == 0:
            print("  ".join("-" * w for w in widths))
    print()
    print("codecs: " + ", ".join(f"{c} ({'available' if ok else 'missing'})" for c, ok in codecs_.items()))
    return 0


# ============================================================================= evaluate, train, demo
def cmd_evaluate(args) -> int:
    from refscale import files
    from refscale.format import codecs
    from refscale.data import discover
    from refscale.evaluate import check_lr_dir, evaluate, to_markdown
    from refscale.format.inter import default_mode

    _codec_choice(args)
    _picker_budget(args)
    if args.draws < 1:
        raise InputError(f"--draws must be >= 1, got {args.draws}")
    outputs = [Path(p) for p in (args.json_out, args.md_out) if p]
    for p in outputs:
        if p.exists() and not args.force:
            raise InputError(f"{p} exists; use --force to overwrite it")
        files.check_writable(p)
    samples = discover(args.data, split=args.split)
    if args.save_lr:  # before the model loads: a refused folder costs nothing
        check_lr_dir(samples, args.save_lr, args.force)
        if samples:
            files.check_writable(Path(args.save_lr) / f"{samples[0].name}.png")
    model = _load_model(args.model)
    codec, quality = _codec_choice(args, model)
    if model.needs_reference or codecs.needs_reference(codec):
        missing = [s.name for s in samples if s.ref is None]
        if missing:
            who = f"model {model.name}" if model.needs_reference else f"codec {codec}"
            raise ModelError(f"{who} needs references; {args.data} has none for {', '.join(missing[:3])}")
    with default_mode(args.inter_mode):
        result = evaluate(model, samples, draws=args.draws, codec=codec, quality=quality, bpp=args.bpp,
                          max_bytes=args.max_bytes, progress=_tty(),
                          dataset=Path(args.data).name, split=args.split, lr_dir=args.save_lr, overwrite=args.force,
                          precision=args.precision, temperature=args.temperature, verify=args.verify)
    if codecs.needs_reference(codec):
        result["inter_mode"] = args.inter_mode
    text = json.dumps(result, indent=2) + "\n"
    if args.json_out:
        files.write_bytes(Path(args.json_out), text.encode(), args.force)
    else:
        sys.stdout.write(text)
    if args.md_out:
        files.write_bytes(Path(args.md_out), to_markdown(result).encode(), args.force)
    mean = result.get("mean") or {}
    if args.json_out and mean.get("psnr_y") is not None:
        worst = result.get("worst") or {}
        print(f"{model.name}: {len(result['images'])} images, PSNR-Y {mean['psnr_y']:.2f} dB, PSNR-RGB {mean['psnr_rgb']:.2f} dB "
              f"(worst {worst.get('name')} {worst.get('psnr_rgb', float('nan')):.2f}), >40 levels {mean['frac_off40']:.2%}, "
              f"bpp {mean['bpp']:.4f} -> {args.json_out}")
    return 0


def cmd_train(args) -> int:
    from refscale.files import existing

    config = existing(args.config, "config")
    from refscale.train.engine import train_from_file  # heavy; only when training

    result = train_from_file(config, out_dir=args.out, resume=args.resume, overrides=args.overrides or None)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_demo(args) -> int:
    from refscale.demo import run_demo

    _single_model(args.model, "refscale demo")
    if args.output and Path(args.output).exists() and any(Path(args.output).iterdir()):
        raise InputError(f"{args.output} exists and is not empty; choose another -o")
    if args.size is not None and args.size < 16:
        raise InputError(f"--size must be at least 16, got {args.size}")
    run_demo(args.model, out_dir=args.output, size=args.size, seed=args.seed, codec=_codec_choice(args)[0],
             synthetic=args.synthetic)
    return 0


# ============================================================================= export, wrap
def cmd_export(args) -> int:
    from refscale import files, onnx
    from refscale.zoo import architectures

    onnx.require_onnx()  # before the model loads
    spec = architectures().get(args.model)
    reason = onnx.refusal(spec.cls, args.model) if spec is not None else None
    if reason:  # refused before building it (TADM would first ask for its backbone)
        raise ModelError(reason)
    out = Path(args.output)
    if out.exists() and not args.force:
        raise InputError(f"{out} exists; use --force to overwrite it")
    files.check_writable(out)
    model = _load_model(args.model)
    meta = onnx.export_onnx(model, args.part, out, tile=args.tile, opset=args.opset, check=args.check, overwrite=True)
    shape = f"{meta['tile']}x{meta['tile']} windows" if meta["tile"] else \
        f"dynamic N, H, W (multiples of {meta['alignment']}, >= {meta['min_side']})"
    ins = ", ".join(i["name"] for i in meta["inputs"])
    outs = ", ".join(o["name"] for o in meta["outputs"])
    check = meta.get("check")
    checked = f"; ONNX Runtime vs PyTorch max |diff| {check['max_abs_diff']['float']:.2g}" if check else ""
    print(f"{out}: {meta['model']} {meta['part']} x{meta['scale']}, {shape}, opset {meta['opset']}; "
          f"{ins} -> {outs}{checked}")
    return 0


def cmd_wrap(args) -> int:
    from refscale import files, onnx

    out = Path(args.output)
    if out.exists() and not args.force:
        raise InputError(f"{out} exists; use --force to overwrite it")
    files.check_writable(out)
    meta = onnx.read_metadata(files.existing(args.onnx, "ONNX file"))
    side = {}
    for item in args.side:
        name, sep, path = item.partition("=")
        if not sep:
            names = list((meta.get("container") or {}).get("side", {}))
            if len(names) != 1:
                raise InputError(f"--side {item}: give NAME=FILE (model {meta['model']} has side tensors {names})")
            name, path = names[0], item
        side[name] = files.existing(path, "side tensor")
    size = None
    if args.size:
        try:
            w, h = (int(v) for v in args.size.lower().split("x"))
        except ValueError:
            raise InputError(f"--size must be WIDTHxHEIGHT, got {args.size!r}") from None
        size = (h, w)
    tiles = None
    if args.tile is not None:
        tiles = {"tile": args.tile, "overlap": args.overlap or 0}
    ref = files.existing(args.ref, "reference") if args.ref else None
    packet = onnx.wrap_files(files.existing(args.lr, "LR"), args.onnx, side=side, ref=ref,
                               ref_hash=args.ref_fingerprint, size=size, tiles=tiles, codec=args.codec, quality=args.quality)
    data = packet.to_bytes()
    files.write_bytes(out, data, args.force)
    h, w = packet.size
    print(f"{out}: {len(data):,} bytes, {len(data) * 8 / (h * w):.4f} bpp ({w}x{h}, {packet.model}, {packet.codec})")
    return 0


# ============================================================================= archive: select-ref, batch
def cmd_select_ref(args) -> int:
    from refscale import archive, files

    bounds = None
    if args.bbox:
        try:
            bounds = [float(v) for v in args.bbox.split(",")]
            assert len(bounds) == 4 and bounds[0] < bounds[2] and bounds[1] < bounds[3]
        except (ValueError, AssertionError):
            raise InputError(f"--bbox must be W,S,E,N in degrees (west < east, south < north), got {args.bbox!r}") from None
    sel = archive.select_reference(files.existing(args.input, "new scene"), args.archive, date=args.date, bounds=bounds,
                                   **_select_kwargs(args))
    if args.json:
        print(json.dumps(sel.as_dict(), indent=1))
    else:
        print(sel.explain())
    return 0 if sel.chosen is not None else 1


def cmd_batch(args) -> int:
    from refscale import batch, files

    batch.require_dask()
    kind = args.batch_kind
    src = files.existing(args.input, "input")
    if not files.is_batch(src):
        raise InputError(f"refscale batch takes a folder or a CSV manifest, not one file ({src}); use refscale {kind}")
    if args.ref and args.ref_archive:
        raise InputError("--ref and --ref-archive exclude each other")
    out = Path(args.output)
    opts = {"model": args.model, "threads": args.threads, "force": args.force, "ref_archive": args.ref_archive}
    if kind == "encode":
        from refscale.zoo import load

        model = load(args.model)  # validates the name here; each worker loads it once for itself
        codec, quality = _codec_choice(args, model)
        if args.ref_archive:  # references come from the archive, chosen on the workers
            name = _fallback_name(args, model)
            if name:
                if load(name).needs_reference:
                    raise InputError(f"--fallback-model {name} needs a reference itself")
                opts["fallback_model"] = name
            jobs = files.encode_jobs(args.input, out, _NoReference(model), lr_out=args.lr_out, codec=None)
        else:
            jobs = files.encode_jobs(args.input, out, model, ref=args.ref, lr_out=args.lr_out, codec=codec)
        opts["encode"] = {"codec": codec, "quality": quality, "bpp": args.bpp, "max_bytes": args.max_bytes,
                          "register": args.register, "verify": args.verify}
    else:
        jobs = files.decode_jobs(args.input, out, ref=args.ref)
        opts["decode"] = {"seed": args.seed, "allow_other_reference": args.allow_other_reference}
    files.preflight(jobs, force=True, image_outputs=kind == "decode")  # collisions, inputs, writable; done ones are skipped
    report = Path(args.report) if args.report else out / f"batch-{kind}-report.json"
    result = batch.run_batch(kind, jobs, opts, workers=args.workers, scheduler=args.scheduler,
                             memory_limit=args.memory_limit, retries=args.retries, report=report)
    for f in result["failures"]:
        _error(f"{f['name']}: {f['error']}")
    print(batch.summary_line(result) + f"; report {report}")
    return 2 if result["failed"] or result["missing"] else 0


def _fallback_name(args, model) -> str | None:
    """The model for scenes without a suitable reference: --fallback-model, else bicubic at the
    model's scale where the catalogue has it; None with --refuse-without-ref."""
    if args.refuse_without_ref:
        return None
    if args.fallback_model:
        return args.fallback_model
    from refscale.zoo import ScalePicker, architectures

    scale = model.members[0].scale if isinstance(model, ScalePicker) else model.scale  # a picker: its smallest scale
    name = f"bicubic-x{scale}"
    return name if name in architectures() else None


class _NoReference:
    """A model stand-in for :func:`refscale.files.encode_jobs` when the references come from an
    archive later: it asks for none."""

    needs_reference = False
    default_codec = "png"

    def __init__(self, model):
        self.name = model.name


# ============================================================================= shared helpers
def _single_model(name: str, command: str) -> None:
    """Refuse a scale picker's name where one model is needed (only encode picks among them)."""
    from refscale.zoo import PICKERS, picker_members

    if name in PICKERS:
        raise InputError(f"{name} picks a scale per image in refscale encode with --bpp / --bytes; {command} takes "
                         f"one model: one of {', '.join(picker_members(name))}")


def _picker_budget(args) -> None:
    """Refuse a scale picker's name without a budget, or with -q, before anything loads."""
    from refscale.zoo import PICKERS, check_picker_budget

    if args.model in PICKERS:
        check_picker_budget(args.model, args.quality, args.bpp, args.max_bytes)


def _load_model(spec: str):
    from refscale.zoo import load

    return load(spec)


def _run_jobs(jobs: list, run, desc: str) -> int:
    if len(jobs) == 1:
        print(run(jobs[0]))
        return 0
    from tqdm import tqdm

    failed = 0
    for job in tqdm(jobs, desc=desc, unit="img", disable=not _tty(), dynamic_ncols=True):
        try:
            run(job)
        except RefScaleError as e:
            failed += 1
            _error(f"{job.name}: {e}")
    print(f"{desc}: {len(jobs) - failed} of {len(jobs)} done" + (f", {failed} failed" if failed else ""))
    return 2 if failed else 0


def _tty() -> bool:
    return sys.stderr.isatty()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
