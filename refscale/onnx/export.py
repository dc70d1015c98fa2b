"""Exporting one direction of a model to an ONNX file (:func:`export_onnx`): the model's export
graphs traced with torch's TorchScript-based exporter, the ``refscale.*`` metadata written into the
file, and the graph checked against PyTorch with ONNX Runtime before the file is written."""
from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from refscale import pipeline
from refscale.errors import InputError, ModelError
from refscale.format import rounding
from refscale.onnx.graphs import (FORMAT, FlatDecoder, FlatEncoder, Signature, check_part, model_graphs, require_onnx,
                                  round_up, set_metadata, signature, unsupported_reason)
from refscale.onnx.runtime import TOLERANCE, check_graph, example_inputs, within_tolerance
from refscale.protocol import Rescaler

#: ONNX opset of the exported graphs (ONNX Runtime >= 1.18 runs it; nothing here needs a newer one)
DEFAULT_OPSET = 17
#: the size of the example tile a dynamic graph is traced with (HR pixels, rounded up to the alignment)
TRACE_SIDE = 64
#: keys of the metadata block (all prefixed with ``refscale.``)
META_KEYS = ("format", "model", "arch", "weights_hash", "scale", "alignment", "part", "tile", "min_side",
             "dynamic_hw", "opset", "needs_reference", "stochastic", "inputs", "outputs", "container", "config",
             "check", "torch", "refscale_version")


def export_onnx(model: Rescaler, part: str, path: str | os.PathLike, *, tile: int | None = None,
                opset: int = DEFAULT_OPSET, check: bool = True, overwrite: bool = True) -> dict[str, Any]:
    """Export one direction of ``model`` to an ONNX file; returns the metadata written into it.

    ``tile``: ``None`` (default) exports dynamic batch, height and width (any multiple of the
    alignment above ``min_side``); an integer fixes the graph to ``tile x tile`` HR windows (rounded
    up to the alignment; for runtimes that need static shapes; :func:`onboard_encode` then needs
    windows of exactly that size). ``check``: run the graph with ONNX Runtime on a procedural
    revisit pair and compare with the model's own ``downscale``/``upscale``; the maximum absolute
    difference is recorded (``refscale.check``) and a difference above :data:`TOLERANCE` is an error.
    """
    onnx, _ = require_onnx()
    part = check_part(part)
    reason = unsupported_reason(model)
    if reason:
        raise ModelError(reason)
    if isinstance(opset, bool) or not isinstance(opset, int) or not 13 <= opset <= 21:
        raise InputError(f"opset must be an integer in 13..21, got {opset!r}")
    path = Path(path)
    if path.exists() and not overwrite:
        raise InputError(f"{path} exists; use --force to overwrite it")
    if not path.parent.is_dir():
        raise InputError(f"folder {path.parent} does not exist")
    m, graphs = model_graphs(model)
    sig = signature(model, graphs)
    align = model.alignment
    if tile is not None:
        if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 1:
            raise InputError(f"tile must be a positive integer (pixels), got {tile!r}")
        tile = round_up(int(tile), align)
    min_side = m.alignment if graphs.min_side is None else int(graphs.min_side)
    side_names = list(sig.side)
    if part == "encoder":
        net = FlatEncoder(m, graphs.encoder, side_names)
    else:
        net = FlatDecoder(m, graphs.decoder, side_names, sig.needs_reference, sig.z_channels > 0)
    trace = tile or max(round_up(TRACE_SIDE, align), round_up(min_side, align))
    example = example_inputs(model, sig, part, trace, trace, n=1, seed=1)
    in_names = [d["name"] for d in sig.inputs(part, model.scale)]
    out_names = [d["name"] for d in sig.outputs(part)]
    dynamic = None
    if tile is None:
        dynamic = {}
        for name in in_names + out_names:
            dynamic[name] = {0: "N", 2: f"{name}_h", 3: f"{name}_w"}
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        raw = Path(tmp) / "raw.onnx"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            torch.onnx.export(net, tuple(example[k] for k in in_names), str(raw), dynamo=False, opset_version=opset,
                              input_names=in_names, output_names=out_names, dynamic_axes=dynamic,
                              do_constant_folding=True)
        proto = onnx.load(str(raw))
        meta = _metadata(model, part, sig, tile, min_side, opset)
        if check:
            set_metadata(proto, meta)
            onnx.save(proto, str(raw))
            side = tile or max(round_up(96, align), round_up(min_side, align))
            diff = check_graph(model, str(raw), part, side, side, batch=1 if tile else 2)
            meta["check"] = {"max_abs_diff": diff, "tolerance": TOLERANCE, "probe": f"{side}x{side} procedural pair"}
            if not within_tolerance(diff):
                raise ModelError(f"exported {part} of {model.name} differs from PyTorch: {diff['float_share']:.2%} of "
                                 f"the values by more than {TOLERANCE} (max {diff['float']:.3g}), {diff['levels']:.2%} "
                                 f"of the levels; not written")
        set_metadata(proto, meta)
        onnx.checker.check_model(proto)
        final = Path(tmp) / "final.onnx"
        onnx.save(proto, str(final))
        os.replace(final, path)
    return meta


def _metadata(model: Rescaler, part: str, sig: Signature, tile: int | None, min_side: int, opset: int) -> dict[str, Any]:
    from refscale import __version__

    s, align = model.scale, model.alignment
    container = {
        "model": model.name, "weights_hash": model.weights_hash(), "scale": s, "alignment": align,
        "precision": "fp32", "codec": model.default_codec,
        "side_dtypes": {k: v["dtype"] for k, v in sig.side.items()}, "side": sig.side,
        "tile": pipeline.DEFAULT_TILE, "overlap": max(pipeline.DEFAULT_OVERLAP_LR * s, model.context),
        "decode_temperature": model.decode_temperature,  # the decoder's z: this temperature * N(0, 1)
        "auto_tile_pixels": pipeline.AUTO_TILE_PIXELS,
        "padding": "reflect, bottom/right, to a multiple of the alignment (torch.nn.functional.pad mode='reflect'; "
                   "'replicate' when the padding is not smaller than the side)",
        "lr_rounding": rounding.RULE,
        "tiling": "refscale.tiling.grid(padded, tile, overlap, alignment); keep each window's core",
        "needs_reference": sig.needs_reference,
        "reference_fingerprint": "refscale.format.container.reference_fingerprint of the 8-bit reference as given",
    }
    return {
        "format": FORMAT, "model": model.name, "arch": f"{model.arch}-x{s}", "weights_hash": model.weights_hash(),
        "scale": s, "alignment": align, "part": part, "tile": tile or 0, "min_side": min_side,
        "dynamic_hw": tile is None, "opset": opset, "needs_reference": sig.needs_reference,
        "stochastic": bool(model.stochastic), "inputs": sig.inputs(part, s), "outputs": sig.outputs(part),
        "container": container, "config": model.config, "torch": torch.__version__, "refscale_version": __version__,
    }
