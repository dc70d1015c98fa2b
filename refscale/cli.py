"""The ``refscale`` command line: a thin layer over the Python API (DESIGN.md, "Command line").

::

    refscale encode HR.png --ref REF.png [-m refscale-x2] [--codec png] [-q Q] -o scene.rsc [--lr-out lr.png]
    refscale decode scene.rsc --ref REF.png -o rebuilt.png [--temperature 1.0] [--seed 0]
    refscale info scene.rsc
    refscale models
    refscale evaluate --data DIR -m MODEL [--split test] [--draws 5] [--codec C] [-q Q] --json out.json [--md out.md]
    refscale train CONFIG.yaml [--resume] [--out RUN_DIR]
    refscale demo [-m refscale-x2] [-o DIR]

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
import csv
import json
import os
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from refscale.errors import InputError, ModelError, RefScaleError

CONTAINER_SUFFIX = ".rsc"


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


def _add_precision_option(parser: argparse.ArgumentParser) -> None:
    """``--precision`` of the commands that choose the model arithmetic (encode, evaluate)."""
    parser.add_argument("--precision", choices=("fp32", "bf16", "auto"), default=None,
                        help="model arithmetic (default auto: bf16 where the CPU has native bf16, else fp32)")


def build_parser() -> argparse.ArgumentParser:
    from refscale import __version__
    from refscale.codecs import CODECS, available_codecs

    avail = available_codecs()
    codec_help = "LR codec: " + ", ".join(CODECS) + " (default png, lossless); available here: " + \
        (", ".join(c for c, ok in avail.items() if ok) or "none")
    missing = [c for c, ok in avail.items() if not ok]
    if missing:
        codec_help += "; missing: " + ", ".join(missing)
    q_help = "codec quality 1..100 (omit or 100 = lossless for webp, avif, jxl, j2k; jpeg defaults to 95)"

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
    e.add_argument("-m", "--model", default="refscale-x2", help="catalogue name or .safetensors path (default refscale-x2)")
    e.add_argument("--codec", default="png", help=codec_help)
    e.add_argument("-q", "--quality", type=int, default=None, help=q_help)
    e.add_argument("-o", "--output", required=True, help="output .rsc file (or folder for several inputs)")
    e.add_argument("--lr-out", help="also save the viewable LR image as stored in the container (file, or folder for a batch)")
    e.add_argument("--tile", type=int, default=None, help="process in tiles of N HR pixels (default: automatic above 1 Mpx; 0 = never)")
    e.add_argument("--resample-ref", action="store_true", help="resize a reference of another size to the image size (bicubic)")
    _add_precision_option(e)
    e.add_argument("--force", action="store_true", help="overwrite existing outputs")
    e.set_defaults(func=cmd_encode)

    d = sub.add_parser("decode", help="rebuild images from .rsc containers",
                       description="Rebuild HR from a .rsc container (or a folder of them, or a CSV manifest rsc,ref[,name]).")
    d.add_argument("input", metavar="RSC", help=".rsc file, folder of .rsc files or .csv manifest rsc,ref[,name]")
    d.add_argument("--ref", help="reference image (for a batch: a folder or manifest whose samples are named like the containers)")
    d.add_argument("-m", "--model", default=None, help="model to decode with (default: the one recorded in the container)")
    d.add_argument("-o", "--output", required=True, help="output image (format by suffix; or a folder for several inputs)")
    d.add_argument("--temperature", type=float, default=1.0, help="latent temperature for stochastic models (default 1.0)")
    d.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same pixels (default 0)")
    d.add_argument("--tile", type=int, default=None, help="tile size in HR pixels (default: as recorded by the encoder)")
    d.add_argument("--resample-ref", action="store_true", help="resize a reference of another size to the image size (bicubic)")
    d.add_argument("--precision", choices=("fp32", "bf16"), default=None, help="model arithmetic (default: as recorded)")
    d.add_argument("--allow-mismatch", action="store_true", help="decode even if the container was made by other weights (experts)")
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
    v.add_argument("-m", "--model", required=True, help="catalogue name or .safetensors path")
    v.add_argument("--split", default=None, help="split from the dataset's split.json (e.g. test)")
    v.add_argument("--draws", type=int, default=1, help="decodes averaged per image for stochastic models (default 1)")
    v.add_argument("--codec", default="png", help=codec_help)
    v.add_argument("-q", "--quality", type=int, default=None, help=q_help)
    v.add_argument("--json", dest="json_out", default=None, help="write the result JSON here (default: print it)")
    v.add_argument("--md", dest="md_out", default=None, help="also write a Markdown table here")
    v.add_argument("--save-lr", default=None, metavar="DIR", help="also save each stored LR image as DIR/<name>.png")
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
    return p


# ============================================================================= encode
@dataclass
class Job:
    name: str
    input: Path
    ref: Path | None
    output: Path
    lr_output: Path | None = None


def cmd_encode(args) -> int:
    from refscale import codecs, pipeline
    from refscale.container import Packet
    from refscale.imageio import write_image

    codec = codecs.canonical(args.codec)
    quality = codecs.check_quality(codec, args.quality)
    codecs.require(codec)
    src = _existing(args.input, "input")
    batch = src.is_dir() or src.suffix.lower() == ".csv"
    model = _load_model(args.model)
    if batch:
        from refscale.data import discover

        samples = [(s.name, s.hr, s.ref) for s in discover(src)]
    else:
        samples = [(src.stem, src, None)]
    if model.needs_reference:
        refs = _reference_lookup(args.ref, batch)
        samples = [(name, hr, refs(name) or ref) for name, hr, ref in samples]
        missing = [name for name, _, ref in samples if ref is None]
        if missing:
            raise ModelError(f"model {model.name} needs a reference image (--ref); none for {', '.join(missing[:3])}")
    else:
        if args.ref:
            warnings.warn(f"model {model.name} takes no reference; --ref ignored")
        samples = [(name, hr, None) for name, hr, _ in samples]
    out, lr_out = Path(args.output), Path(args.lr_out) if args.lr_out else None
    jobs = []
    for name, hr, ref in samples:
        if batch:
            jobs.append(Job(name, hr, ref, out / f"{name}{CONTAINER_SUFFIX}", lr_out / f"{name}.png" if lr_out else None))
        else:
            jobs.append(Job(name, hr, ref, out / f"{name}{CONTAINER_SUFFIX}" if out.is_dir() else out,
                            lr_out / f"{name}.png" if lr_out and lr_out.is_dir() else lr_out))
    _preflight(jobs, args.force)

    def run(job: Job) -> str:
        packet = pipeline.encode(model, job.input, job.ref, tile=args.tile, resample_ref=args.resample_ref,
                                 precision=args.precision, progress=not batch and _tty())
        data = packet.to_bytes(codec=codec, quality=quality)
        lr = Packet.from_bytes(data).lr if job.lr_output is not None else None  # the LR as the receiver sees it
        write_bytes(job.output, data, args.force)
        if lr is not None:
            write_image(lr, job.lr_output, overwrite=args.force)
        h, w = packet.size
        return f"{job.output}: {len(data):,} bytes, {len(data) * 8 / (h * w):.4f} bpp ({h}x{w}, {model.name}, {codec})"

    return _run_jobs(jobs, run, "encode")


# ============================================================================= decode
def cmd_decode(args) -> int:
    from refscale import pipeline
    from refscale.container import Packet
    from refscale.imageio import write_image

    src = _existing(args.input, "input")
    out = Path(args.output)
    batch = src.is_dir() or src.suffix.lower() == ".csv"
    if src.is_dir():
        found = sorted(p for p in src.iterdir() if p.suffix.lower() == CONTAINER_SUFFIX and p.is_file())
        if not found:
            raise InputError(f"no {CONTAINER_SUFFIX} files in {src}")
        items = [(p.stem, p, None) for p in found]
    elif src.suffix.lower() == ".csv":
        items = _read_rsc_manifest(src)
    else:
        items = [(src.stem, src, None)]
    refs = _reference_lookup(args.ref, batch)
    jobs = []
    for name, path, ref in items:
        if batch:
            target = out / f"{name}.png"
        else:
            target = out / f"{name}.png" if out.is_dir() else out
        jobs.append(Job(name, path, refs(name) or ref, target))
    _preflight(jobs, args.force, image_outputs=True)
    models: dict[str, object] = {}
    if args.model:
        models[""] = _load_model(args.model)
    warned = []

    def run(job: Job) -> str:
        packet = Packet.from_bytes(_read_bytes(job.input))
        key = "" if args.model else packet.model
        if key not in models:
            models[key] = _load_model(packet.model, recorded=True)
        model = models[key]
        ref = job.ref
        if not model.needs_reference and ref is not None:
            if args.ref and not warned:
                warnings.warn(f"model {model.name} takes no reference; --ref ignored")
                warned.append(1)
            ref = None
        hr = pipeline.decode(model, packet, ref, temperature=args.temperature, seed=args.seed, tile=args.tile,
                             allow_mismatch=args.allow_mismatch, resample_ref=args.resample_ref,
                             precision=args.precision, progress=not batch and _tty())
        write_image(hr, job.output, overwrite=args.force)
        return f"{job.output}: {packet.size[0]}x{packet.size[1]} from {job.input.name} ({model.name}, seed {args.seed})"

    return _run_jobs(jobs, run, "decode")


def _read_rsc_manifest(path: Path) -> list[tuple[str, Path, Path | None]]:
    """CSV ``rsc,ref[,name]`` (header row optional, paths relative to the manifest)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"cannot read manifest {path}: {e}") from None
    items = []
    for lineno, row in enumerate(rows, start=1):
        row = [c.strip() for c in row]
        if not row or not any(row) or row[0].startswith("#") or (lineno == 1 and row[0].lower() == "rsc"):
            continue
        rsc = path.parent / row[0]
        ref = path.parent / row[1] if len(row) > 1 and row[1] else None
        name = row[2] if len(row) > 2 and row[2] else Path(row[0]).stem
        for p in (rsc, ref):
            if p is not None and not p.is_file():
                raise InputError(f"{path.name} line {lineno}: file not found: {p}")
        items.append((name, rsc, ref))
    if not items:
        raise InputError(f"no containers listed in {path}")
    if len({n for n, _, _ in items}) != len(items):
        raise InputError(f"{path.name}: names are not unique; add a name column")
    return items


# ============================================================================= info, models
def cmd_info(args) -> int:
    from refscale.container import inspect

    results = []
    for name in args.inputs:
        path = _existing(name, "container")
        info = inspect(_read_bytes(path))
        results.append({"file": str(path), **info})
    print(json.dumps(results[0] if len(results) == 1 else results, indent=2))
    return 0


def cmd_models(args) -> int:
    from refscale.codecs import available_codecs
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
    from refscale import codecs
    from refscale.data import discover
    from refscale.evaluate import check_lr_dir, evaluate, to_markdown

    codec = codecs.canonical(args.codec)
    quality = codecs.check_quality(codec, args.quality)
    if args.draws < 1:
        raise InputError(f"--draws must be >= 1, got {args.draws}")
    outputs = [Path(p) for p in (args.json_out, args.md_out) if p]
    for p in outputs:
        if p.exists() and not args.force:
            raise InputError(f"{p} exists; use --force to overwrite it")
    samples = discover(args.data, split=args.split)
    if args.save_lr:  # before the model loads: a refused folder costs nothing
        check_lr_dir(samples, args.save_lr, args.force)
    model = _load_model(args.model)
    if model.needs_reference:
        missing = [s.name for s in samples if s.ref is None]
        if missing:
            raise ModelError(f"model {model.name} needs references; {args.data} has none for {', '.join(missing[:3])}")
    result = evaluate(model, samples, draws=args.draws, codec=codec, quality=quality, progress=_tty(),
                      dataset=Path(args.data).name, split=args.split, lr_dir=args.save_lr, overwrite=args.force,
                      precision=args.precision)
    text = json.dumps(result, indent=2) + "\n"
    if args.json_out:
        write_bytes(Path(args.json_out), text.encode(), args.force)
    else:
        sys.stdout.write(text)
    if args.md_out:
        write_bytes(Path(args.md_out), to_markdown(result).encode(), args.force)
    mean = result.get("mean") or {}
    if args.json_out and mean.get("psnr_y") is not None:
        print(f"{model.name}: {len(result['images'])} images, PSNR-Y {mean['psnr_y']:.2f} dB, bpp {mean['bpp']:.4f} -> {args.json_out}")
    return 0


def cmd_train(args) -> int:
    config = _existing(args.config, "config")
    from refscale.train.engine import train_from_file  # heavy; only when training

    result = train_from_file(config, out_dir=args.out, resume=args.resume, overrides=args.overrides or None)
    print(json.dumps(result, indent=2, default=str))
    return 0


def cmd_demo(args) -> int:
    from refscale import codecs
    from refscale.demo import run_demo

    if args.output and Path(args.output).exists() and any(Path(args.output).iterdir()):
        raise InputError(f"{args.output} exists and is not empty; choose another -o")
    if args.size is not None and args.size < 16:
        raise InputError(f"--size must be at least 16, got {args.size}")
    run_demo(args.model, out_dir=args.output, size=args.size, seed=args.seed, codec=codecs.canonical(args.codec),
             synthetic=args.synthetic)
    return 0


# ============================================================================= shared helpers
def write_bytes(path: Path, data: bytes, force: bool = False) -> Path:
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
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            raise InputError(f"cannot write {path}: {e.strerror or e}") from None
        raise
    return path


def _read_bytes(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from None


def _existing(name: str, what: str) -> Path:
    p = Path(name)
    if not p.exists():
        raise InputError(f"{what} not found: {p}")
    return p


def _load_model(spec: str, recorded: bool = False):
    from refscale.zoo import load

    try:
        return load(spec)
    except ModelError as e:
        if recorded:
            raise ModelError(f"the container was made by model {spec!r}, which cannot be loaded here ({e}); "
                             "pass -m NAME or -m path/to/weights.safetensors") from None
        raise


def _reference_lookup(ref: str | None, batch: bool):
    """``name -> reference path or None`` from ``--ref`` (a file, or for a batch a folder/manifest)."""
    if ref is None:
        return lambda name: None
    p = _existing(ref, "reference")
    if p.is_file() and p.suffix.lower() != ".csv":
        return lambda name: p
    if not batch:
        raise InputError(f"--ref {p} is a folder or manifest; for one input give one reference image")
    from refscale.data import discover

    table = {s.name: (s.ref or s.hr) for s in discover(p)}

    def lookup(name: str) -> Path:
        if name not in table:
            raise InputError(f"no reference named {name!r} in {p}")
        return table[name]

    return lookup


def _preflight(jobs: list[Job], force: bool, image_outputs: bool = False) -> None:
    """Refuse, before any work, outputs that exist (without --force), collide, or are inputs."""
    inputs = {_resolved(j.input) for j in jobs} | {_resolved(j.ref) for j in jobs if j.ref is not None}
    seen = set()
    for j in jobs:
        for out in (j.output, j.lr_output):
            if out is None:
                continue
            r = _resolved(out)
            if r in inputs:
                raise InputError(f"output {out} is one of the inputs; refusing to overwrite an input")
            if r in seen:
                raise InputError(f"two outputs would be written to {out}")
            seen.add(r)
            if out.is_dir():
                raise InputError(f"output {out} is a folder")
            if out.exists() and not force:
                raise InputError(f"{out} exists; use --force to overwrite it")
        if image_outputs:
            _check_image_suffix(j.output)  # unknown suffix -> clear error now, not after decoding
        if j.lr_output is not None:
            _check_image_suffix(j.lr_output)


def _check_image_suffix(path: Path) -> None:
    from PIL import Image

    if path.suffix.lower() not in Image.registered_extensions():
        raise InputError(f"cannot write {path.name}: unknown image suffix {path.suffix or '(none)'} (use .png)")


def _resolved(p: Path) -> str:
    return os.path.realpath(p)


def _run_jobs(jobs: list[Job], run, desc: str) -> int:
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
