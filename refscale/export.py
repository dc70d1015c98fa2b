"""On-board deployment: the rescalers exported to ONNX, checked with ONNX Runtime, and the ground
side that turns what the exported encoder produced into a ``.rsc`` container (issue 17).

In RefScale's workflow the new image is downscaled on the satellite with the uploaded reference;
flight software runs an exported graph, not this library. :func:`export_onnx` writes one graph per
direction (``part``):

* **encoder**: ``hr [N,3,H,W]`` (+ ``ref [N,3,H,W]`` for reference models) -> ``lr [N,3,H/s,W/s]``
  float *before* 8-bit rounding, plus one integer output per side tensor (RefScale: ``smap``
  ``[N,1,H/4,W/4]`` uint8, the quantized similarity map);
* **decoder**: ``lr`` (+ the side tensors, + ``ref``, + ``z [N,3s^2-3,H/s,W/s]`` for the
  invertible models, ``z = temperature * N(0, 1)`` drawn by the caller) -> ``hr [N,3,H,W]``.

Every graph takes *padded* tiles: H and W multiples of the model's alignment (recorded in the
metadata), dynamic (any such size, any batch) unless exported with a fixed ``tile``. The traps of
invertible networks are handled on a copy of the model: the 1x1 convolutions' weights are
precomputed from their LU parameters, and the inverse direction gets the matrix inverse computed
here in float64 exactly as :meth:`refscale.nn.invertible.InvConv1x1.inverse` does; the
straight-through quantizers export their inference value (``round``); the data-dependent checks
of the similarity map stay on the ground side; the branches on shapes in RefScale's resizing
depend only on size *ratios*, which are the same for every aligned tile, so the traced graph is
valid for all sizes. MATLAB bicubic (bicubic-x*) is exported as symmetric padding plus separable
(polyphase) convolutions, equal to :func:`refscale.ops.imresize` away from float rounding, for
sides of at least ``min_side`` pixels (metadata). Not exportable, with a clear error: TADM (a
diffusion backbone the user supplies, stochastic per-patch time steps) and the ``inter-*`` modes
(video codecs, not networks).

Exporter: torch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``): it needs
no further package and traces the models' shape arithmetic as dynamic ONNX shape operations (the
tests run every graph on sizes and batches other than the traced one). The dynamo path
(``dynamo=True``) needs ``onnxscript``, one more dependency, and its ``torch.export`` refuses plain
dynamic dimensions here (tried with torch 2.13: ``Dim("h")`` on IRN and RefScale fails with
"Constraints violated", the Haar squeezes need even sides; ``Dim.AUTO`` traces), so it would need
derived dimensions per model. Torch warns that the TorchScript exporter is deprecated; when it is
removed, this module moves to ``dynamo=True`` with ``Dim.AUTO``.

Metadata (ONNX ``metadata_props``, strings; :func:`read_metadata`): ``refscale.model``,
``refscale.weights_hash``, ``refscale.scale``, ``refscale.tile`` (0 = dynamic), ``refscale.opset``
and the rest of :data:`META_KEYS`, among them the container fields the ground side needs
(``refscale.container``: scale, alignment, precision, side tensors with their torch dtypes,
recommended tile layout, the 8-bit rounding rule). :func:`onboard_encode` is a reference
implementation of the on-board loop (pad, tile, run the graph, stitch the cores) with ONNX
Runtime; :func:`wrap` builds the :class:`~refscale.container.Packet` from its outputs, which
``refscale decode`` decodes like any other.

ONNX and ONNX Runtime come from the ``onnx`` extra (``pip install 'refscale[onnx]'``); without it
every function here raises one :class:`~refscale.errors.ModelError` line naming the extra.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import tempfile
import time
import types
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from refscale import ops, pipeline, tiling
from refscale.container import Packet
from refscale.errors import InputError, ModelError
from refscale.metrics import to_uint8
from refscale.nn.invertible import InvConv1x1, InvertibleModule, sample_latent
from refscale.protocol import Rescaler

PARTS = ("encoder", "decoder")
#: ONNX opset of the exported graphs (ONNX Runtime >= 1.18 runs it; nothing here needs a newer one)
DEFAULT_OPSET = 17
#: the size of the example tile a dynamic graph is traced with (HR pixels, rounded up to the alignment)
TRACE_SIDE = 64
#: tolerance of the export check: |PyTorch - ONNX Runtime| of float outputs in [0,1] (measured ~1e-6) ...
TOLERANCE = 1e-4
#: ... for all but this share of the values (internal rounding, see :func:`compare`); tests use both
MAX_SHARE = 0.01
EXTRA = "pip install 'refscale[onnx]'"
FORMAT = "refscale-onnx-1"
#: keys of the metadata block (all prefixed with ``refscale.``)
META_KEYS = ("format", "model", "arch", "weights_hash", "scale", "alignment", "part", "tile", "min_side",
             "dynamic_hw", "opset", "needs_reference", "stochastic", "inputs", "outputs", "container", "config",
             "check", "torch", "refscale_version")


# ============================================================================= dependencies
def require_onnx():
    """``(onnx, onnxruntime)``, or a one-line :class:`ModelError` naming the extra."""
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise ModelError(f"ONNX export needs onnx and onnxruntime ({e.name} is missing): {EXTRA}") from None
    return onnx, onnxruntime


# ============================================================================= what can be exported
def unsupported_reason(model: Rescaler) -> str | None:
    """``None`` when ``model`` can be exported, else why not (one sentence)."""
    if _kind(model) is not None:
        return None
    return refusal(model.arch, model.name) or \
        f"{model.name} ({type(model).__name__}) cannot be exported to ONNX: no export graph for this architecture"


def refusal(arch: str, name: str) -> str | None:
    """Why an architecture family that is known not to export (TADM, inter-*) is refused; else None."""
    if arch == "tadm":
        return (f"{name} cannot be exported to ONNX: TADM runs a Stable Diffusion backbone the user supplies, "
                "with stochastic per-patch time steps; run it on the ground")
    if arch == "inter":
        return (f"{name} cannot be exported to ONNX: the inter-* modes are video codecs (FFmpeg through PyAV), "
                "not networks; export a rescaler and run the codec on board")
    return None


def _kind(model: Rescaler) -> str | None:
    from refscale.models.bicubic import Bicubic
    from refscale.models.fgrn import FGRN
    from refscale.models.irn import IRN
    from refscale.models.refscale_net import RefScaleNet

    for cls, kind in ((IRN, "irn"), (RefScaleNet, "refscale"), (FGRN, "fgrn"), (Bicubic, "bicubic")):
        if type(model) is cls:
            return kind
    return None


def _check_part(part: str) -> str:
    if part not in PARTS:
        raise InputError(f"part must be one of {', '.join(PARTS)}, got {part!r}")
    return part


# ============================================================================= the graphs
class _FixedConv1x1(InvertibleModule):
    """An :class:`InvConv1x1` with its weight and inverse precomputed (constants in the graph):
    ``forward`` uses ``W`` as computed in float32 from the LU parameters, ``inverse`` uses
    ``inv(W)`` computed in float64 and cast, exactly as ``InvConv1x1`` computes them at run time."""

    def __init__(self, conv: InvConv1x1):
        super().__init__()
        with torch.no_grad():
            w = conv.weight().float()
            c = conv.channels
            self.register_buffer("w", w.view(c, c, 1, 1).clone())
            self.register_buffer("w_inv", torch.linalg.inv(w.double()).float().view(c, c, 1, 1))

    def forward(self, x, cond=None):
        return F.conv2d(x, self.w), x.new_zeros(x.shape[0])  # logdet is not exported

    def inverse(self, y, cond=None):
        return F.conv2d(y, self.w_inv)


def _export_copy(model: Rescaler) -> Rescaler:
    """A float32, eval-mode copy of ``model`` with every :class:`InvConv1x1` precomputed."""
    m = copy.deepcopy(model).float().eval()
    if hasattr(m, "set_speed"):
        m.set_speed(bf16=False, channels_last=False)
    for parent in list(m.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, InvConv1x1):
                setattr(parent, name, _FixedConv1x1(child))
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def _round8(x: torch.Tensor) -> torch.Tensor:
    """The inference value of the 8-bit straight-through quantizers (``refscale.ops.round_ste`` on
    ``clamp(x, 0, 1) * 255``; FGRN's ``quantize_representation``)."""
    return torch.round(x.clamp(0, 1) * 255) / 255


class _Encoder(nn.Module):
    """``(hr[, ref]) -> (lr, *side)`` in the order of ``side_names``."""

    def __init__(self, model: Rescaler, kind: str, side_names: list[str]):
        super().__init__()
        self.m, self.kind, self.side_names = model, kind, side_names
        if kind == "bicubic":
            self.resize = _BicubicDown(model.scale)

    def forward(self, hr, ref=None):
        m = self.m
        if self.kind == "bicubic":
            return self.resize(hr)
        if self.kind == "fgrn":  # Q(Gd(hr)) with Q's inference value, then F (fgrn.FGRN.downscale)
            lr, _ = m.flow(_round8(m.down(hr)))
            return lr.clamp(0, 1)
        lr, side = m.downscale(hr, ref)  # IRN, RefScale: the protocol function itself
        return (lr, *(side[k] for k in self.side_names)) if self.side_names else lr


class _Decoder(nn.Module):
    """``(lr[, *side][, ref][, z]) -> hr``."""

    def __init__(self, model: Rescaler, kind: str, side_names: list[str], needs_ref: bool, has_z: bool):
        super().__init__()
        self.m, self.kind, self.side_names, self.needs_ref, self.has_z = model, kind, side_names, needs_ref, has_z
        if kind == "bicubic":
            self.resize = _BicubicUp(model.scale)

    def forward(self, *args):
        m, args = self.m, list(args)
        lr = args.pop(0)
        side = {k: args.pop(0) for k in self.side_names}
        ref = args.pop(0) if self.needs_ref else None
        z = args.pop(0) if self.has_z else None
        if self.kind == "bicubic":
            return self.resize(lr)
        if self.kind == "fgrn":  # Gu(Q(F^-1(lr))) (fgrn.FGRN.upscale)
            return m.up(_round8(m.flow.inverse(lr))).clamp(0, 1)
        y = torch.cat([lr, z], 1)
        if self.kind == "irn":
            return m.flow.inverse(y).clamp(0, 1)
        # RefScale: the condition from the reference and the transmitted map only (_decoder_condition
        # without its data-dependent checks, which the ground-side pipeline makes)
        fc = None
        if m.condition_kind != "none":
            fc = m.condition(m.refnet.encode(ref), side.get("smap"))
        return m.flow_inverse(y, fc).clamp(0, 1)


# ----------------------------------------------------------------------------- bicubic as convolutions
def _symmetric_pad(x: torch.Tensor, dim: int, left: int, right: int) -> torch.Tensor:
    """MATLAB's symmetric border (``... 2 1 | 1 2 ... n | n n-1 ...``) along ``dim`` (needs side >= pad)."""
    parts = []
    if left:
        parts.append(torch.flip(x.narrow(dim, 0, left), [dim]))
    parts.append(x)
    if right:
        parts.append(torch.flip(x.narrow(dim, x.shape[dim] - right, right), [dim]))
    return torch.cat(parts, dim) if len(parts) > 1 else x


def _interior_rows(in_len: int, out_len: int, scale: float, rows: list[int]) -> list[tuple[int, np.ndarray]]:
    """``(first input index, weights)`` of interior rows of MATLAB's resize matrix (``ops._resize_weights``)."""
    idx, w = ops._resize_weights(in_len, out_len, scale, True)
    out = []
    for r in rows:
        i, k = idx[r].numpy(), w[r].numpy()
        if not np.all(np.diff(i) == 1):
            raise AssertionError("bicubic export: an interior row reads a mirrored index")
        out.append((int(i[0]), k))
    return out


class _BicubicDown(nn.Module):
    """``ops.bicubic_down(x, s)`` as symmetric padding + a strided depthwise convolution per axis
    (H first, as imresize). MATLAB's kernel for an integer shrink factor is the same for every
    output pixel; the border rows mirror indices, which the symmetric padding reproduces."""

    def __init__(self, s: int):
        super().__init__()
        n = 64 * s
        m = n // s // 2
        (first, k), = _interior_rows(n, n // s, 1.0 / s, [m])
        c0 = first - s * m
        self.s, self.left, self.right = s, -c0, c0 + len(k) - s
        if self.left < 0 or self.right < 0:
            raise AssertionError("bicubic export: unexpected kernel placement")
        kern = torch.tensor(k, dtype=torch.float32)
        self.register_buffer("kh", kern.view(1, 1, -1, 1).repeat(3, 1, 1, 1))
        self.register_buffer("kw", kern.view(1, 1, 1, -1).repeat(3, 1, 1, 1))
        self.min_side = max(self.left, self.right, s)

    def forward(self, x):
        x = F.conv2d(_symmetric_pad(x, 2, self.left, self.right), self.kh, stride=(self.s, 1), groups=3)
        return F.conv2d(_symmetric_pad(x, 3, self.left, self.right), self.kw, stride=(1, self.s), groups=3)


class _BicubicUp(nn.Module):
    """``ops.bicubic_up(x, s)`` as symmetric padding + a polyphase depthwise convolution per axis
    (``s`` phases, interleaved), H first as imresize."""

    def __init__(self, s: int):
        super().__init__()
        n = 64
        m = n // 2
        rows = _interior_rows(n, n * s, float(s), [s * m + r for r in range(s)])
        offsets = [first - m for first, _ in rows]
        cmin = min(offsets)
        size = max(o + len(k) for o, (_, k) in zip(offsets, rows)) - cmin
        kern = torch.zeros(s, size)
        for r, (o, (_, k)) in enumerate(zip(offsets, rows)):
            kern[r, o - cmin:o - cmin + len(k)] = torch.tensor(k, dtype=torch.float32)
        self.s, self.left, self.right = s, -cmin, cmin + size - 1
        if self.left < 0 or self.right < 0:
            raise AssertionError("bicubic export: unexpected kernel placement")
        self.register_buffer("kh", kern.repeat(3, 1).view(3 * s, 1, size, 1))
        self.register_buffer("kw", kern.repeat(3, 1).view(3 * s, 1, 1, size))
        self.min_side = max(self.left, self.right, 1) * s  # in HR pixels

    def forward(self, x):
        s = self.s
        n, _, h, w = x.shape
        y = F.conv2d(_symmetric_pad(x, 2, self.left, self.right), self.kh, groups=3)  # [n, 3s, h, w]
        y = y.reshape(n, 3, s, h, w).permute(0, 1, 3, 2, 4).reshape(n, 3, h * s, w)
        y = F.conv2d(_symmetric_pad(y, 3, self.left, self.right), self.kw, groups=3)  # [n, 3s, hs, w]
        return y.reshape(n, 3, s, h * s, w).permute(0, 1, 3, 4, 2).reshape(n, 3, h * s, w * s)


# ============================================================================= signature of a graph
@dataclass
class Signature:
    """What a model's graphs take and give (names, shapes as strings, dtypes)."""

    side: dict[str, dict[str, Any]]  # name -> {"channels", "stride", "dtype" (torch), "levels"}
    z_channels: int
    needs_reference: bool

    def inputs(self, part: str, scale: int) -> list[dict[str, str]]:
        lr = {"name": "lr", "shape": "[N,3,H/s,W/s]", "dtype": "float32",
              "meaning": "LR tile in [0,1]" + ("; the stored 8-bit LR / 255 on the ground" if part == "decoder" else "")}
        hr = {"name": "hr", "shape": "[N,3,H,W]", "dtype": "float32", "meaning": "HR tile in [0,1], H and W multiples of the alignment"}
        ref = {"name": "ref", "shape": "[N,3,H,W]", "dtype": "float32", "meaning": "reference tile in [0,1], co-registered"}
        if part == "encoder":
            return [hr] + ([ref] if self.needs_reference else [])
        out = [lr]
        for k, v in self.side.items():
            st = v["stride"]
            out.append({"name": k, "shape": f"[N,{v['channels']},H/{st},W/{st}]", "dtype": _onnx_dtype(v["dtype"]),
                        "meaning": "side tensor as the encoder produced it"})
        if self.needs_reference:
            out.append(ref)
        if self.z_channels:
            out.append({"name": "z", "shape": f"[N,{self.z_channels},H/s,W/s]", "dtype": "float32",
                        "meaning": "latent, temperature * N(0,1)"})
        return out

    def outputs(self, part: str) -> list[dict[str, str]]:
        if part == "decoder":
            return [{"name": "hr", "shape": "[N,3,H,W]", "dtype": "float32", "meaning": "rebuilt HR tile"}]
        out = [{"name": "lr", "shape": "[N,3,H/s,W/s]", "dtype": "float32",
                "meaning": "LR tile before 8-bit rounding: store round(clamp(lr,0,1)*255) (half to even)"}]
        for k, v in self.side.items():
            st = v["stride"]
            out.append({"name": k, "shape": f"[N,{v['channels']},H/{st},W/{st}]", "dtype": _onnx_dtype(v["dtype"]),
                        "meaning": f"side tensor (integer levels 0..{v['levels'] - 1})" if v.get("levels") else "side tensor"})
        return out


def _onnx_dtype(torch_dtype: str) -> str:
    return {"bool": "uint8"}.get(torch_dtype, torch_dtype)


def signature(model: Rescaler) -> Signature:
    """The side tensors (one probe through ``downscale``), the latent channels and the reference."""
    n = _round_up(32, model.alignment)
    hr, ref = _probe(model, n, n, seed=0)
    was = model.training
    model.eval()  # never a training-mode pass (ActNorm's data-dependent init) on the caller's model
    try:
        with torch.no_grad(), _fp32(model):
            _, side = model.downscale(hr, ref)
    finally:
        model.train(was)
    sides = {}
    for k in sorted(side):
        t = side[k]
        levels = getattr(model, "levels_q", None) if k == "smap" else None
        sides[k] = {"channels": int(t.shape[1]), "stride": n // int(t.shape[-1]),
                    "dtype": str(t.dtype).replace("torch.", ""), **({"levels": int(levels)} if levels else {})}
    z = 3 * model.scale ** 2 - 3 if _kind(model) in ("irn", "refscale") else 0
    return Signature(sides, z, bool(model.needs_reference))


def _probe(model: Rescaler, h: int, w: int, seed: int = 0, n: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A procedural revisit pair (refscale.synthetic) as ``[n,3,h,w]`` tensors; ``ref`` None for models without one."""
    from refscale.synthetic import synthetic_revisit_pair

    hrs, refs = [], []
    for i in range(n):
        a, b = synthetic_revisit_pair(h, w, seed=seed + i)
        hrs.append(torch.from_numpy(a).permute(2, 0, 1).float() / 255)
        refs.append(torch.from_numpy(b).permute(2, 0, 1).float() / 255)
    hr = torch.stack(hrs)
    return hr, (torch.stack(refs) if model.needs_reference else None)


# ============================================================================= export
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
    part = _check_part(part)
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
    kind = _kind(model)
    sig = signature(model)
    m = _export_copy(model)
    align = model.alignment
    if tile is not None:
        if isinstance(tile, bool) or not isinstance(tile, (int, np.integer)) or tile < 1:
            raise InputError(f"tile must be a positive integer (pixels), got {tile!r}")
        tile = _round_up(int(tile), align)
    min_side = _min_side(m, kind)
    side_names = list(sig.side)
    if part == "encoder":
        net = _Encoder(m, kind, side_names)
    else:
        net = _Decoder(m, kind, side_names, sig.needs_reference, sig.z_channels > 0)
    trace = tile or max(_round_up(TRACE_SIDE, align), _round_up(min_side, align))
    example = _example_inputs(model, sig, part, trace, trace, n=1, seed=1)
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
            _set_metadata(proto, meta)
            onnx.save(proto, str(raw))
            side = tile or max(_round_up(96, align), _round_up(min_side, align))
            diff = check_graph(model, str(raw), part, side, side, batch=1 if tile else 2)
            meta["check"] = {"max_abs_diff": diff, "tolerance": TOLERANCE, "probe": f"{side}x{side} procedural pair"}
            if not within_tolerance(diff):
                raise ModelError(f"exported {part} of {model.name} differs from PyTorch: {diff['float_share']:.2%} of "
                                 f"the values by more than {TOLERANCE} (max {diff['float']:.3g}), {diff['levels']:.2%} "
                                 f"of the levels; not written")
        _set_metadata(proto, meta)
        onnx.checker.check_model(proto)
        final = Path(tmp) / "final.onnx"
        onnx.save(proto, str(final))
        os.replace(final, path)
    return meta


def _min_side(m: Rescaler, kind: str) -> int:
    if kind == "bicubic":
        return max(_BicubicDown(m.scale).min_side, _BicubicUp(m.scale).min_side)
    return m.alignment


def _metadata(model: Rescaler, part: str, sig: Signature, tile: int | None, min_side: int, opset: int) -> dict[str, Any]:
    from refscale import __version__

    s, align = model.scale, model.alignment
    container = {
        "model": model.name, "weights_hash": model.weights_hash(), "scale": s, "alignment": align,
        "precision": "fp32", "codec": model.default_codec,
        "side_dtypes": {k: v["dtype"] for k, v in sig.side.items()}, "side": sig.side,
        "tile": pipeline.DEFAULT_TILE, "overlap": pipeline.DEFAULT_OVERLAP_LR * s,
        "auto_tile_pixels": pipeline.AUTO_TILE_PIXELS,
        "padding": "reflect, bottom/right, to a multiple of the alignment (torch.nn.functional.pad mode='reflect'; "
                   "'replicate' when the padding is not smaller than the side)",
        "lr_rounding": "uint8 = round_half_to_even(clamp(lr, 0, 1) * 255)",
        "tiling": "refscale.tiling.grid(padded, tile, overlap, alignment); keep each window's core",
        "needs_reference": sig.needs_reference,
        "reference_fingerprint": "refscale.container.reference_fingerprint of the 8-bit reference as given",
    }
    return {
        "format": FORMAT, "model": model.name, "arch": f"{model.arch}-x{s}", "weights_hash": model.weights_hash(),
        "scale": s, "alignment": align, "part": part, "tile": tile or 0, "min_side": min_side,
        "dynamic_hw": tile is None, "opset": opset, "needs_reference": sig.needs_reference,
        "stochastic": bool(model.stochastic), "inputs": sig.inputs(part, s), "outputs": sig.outputs(part),
        "container": container, "config": model.config, "torch": torch.__version__, "refscale_version": __version__,
    }


def _set_metadata(proto, meta: dict[str, Any]) -> None:
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key = f"refscale.{k}"
        entry.value = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    proto.doc_string = (f"refscale {meta['part']} of {meta['model']} (x{meta['scale']}); metadata under refscale.*; "
                        "see refscale/export.py")
    proto.producer_name = "refscale"


def read_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """The ``refscale.*`` metadata of an exported graph, values decoded from JSON where they are."""
    onnx, _ = require_onnx()
    p = Path(path)
    if not p.is_file():
        raise InputError(f"ONNX file not found: {p}")
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - any parse failure is a bad input file
        raise InputError(f"{p} is not an ONNX model: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    meta = {}
    for entry in proto.metadata_props:
        if entry.key.startswith("refscale."):
            try:
                meta[entry.key[9:]] = json.loads(entry.value)
            except ValueError:
                meta[entry.key[9:]] = entry.value
    if meta.get("format") != FORMAT:
        raise InputError(f"{p} was not exported by refscale (no {FORMAT} metadata)")
    return meta


# ============================================================================= running a graph
class Graph:
    """An exported graph in an ONNX Runtime session (CPU), with its metadata."""

    def __init__(self, path: str | os.PathLike, threads: int | None = None):
        _, ort = require_onnx()
        self.path = Path(path)
        self.meta = read_metadata(self.path)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, **inputs) -> dict[str, np.ndarray]:
        missing = [k for k in self.input_names if k not in inputs]
        if missing:
            raise InputError(f"{self.path.name} needs inputs {', '.join(missing)}")
        feed = {k: _numpy(inputs[k]) for k in self.input_names}
        return dict(zip(self.output_names, self.session.run(None, feed)))


def _numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.ascontiguousarray(x)


def _example_inputs(model: Rescaler, sig: Signature, part: str, h: int, w: int, n: int = 1, seed: int = 0,
                    temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """Inputs of a graph from a procedural pair: the encoder's, or the decoder's from the model's own
    ``downscale`` (LR rounded to 8 bits as stored) and a latent drawn with ``seed``."""
    hr, ref = _probe(model, h, w, seed=seed, n=n)
    if part == "encoder":
        return {"hr": hr, **({"ref": ref} if ref is not None else {})}
    with torch.no_grad():
        lr, side = model.eval().downscale(hr, ref)
    out = {"lr": to_uint8(lr).float() / 255, **{k: side[k] for k in sig.side}}
    if ref is not None:
        out["ref"] = ref
    if sig.z_channels:
        out["z"] = latent(model, out["lr"], temperature, seed)
    return out


def latent(model: Rescaler, lr: torch.Tensor, temperature: float, seed: int) -> torch.Tensor:
    """The ``z`` that ``model.upscale(lr, ..., temperature=t, generator=Generator().manual_seed(seed))``
    draws, so that a decoder graph can be fed exactly that latent."""
    n, _, h, w = lr.shape
    return sample_latent((n, 3 * model.scale ** 2 - 3, h, w), lr, temperature, torch.Generator().manual_seed(seed))


def reference_outputs(model: Rescaler, part: str, inputs: dict[str, torch.Tensor], seed: int = 0,
                      temperature: float = 1.0) -> dict[str, np.ndarray]:
    """What refscale computes for a graph's ``inputs``: ``downscale`` / ``upscale`` of the model in fp32
    (for the decoder the latent must be ``latent(model, lr, temperature, seed)``)."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad(), _fp32(model):
            if part == "encoder":
                lr, side = model.downscale(inputs["hr"], inputs.get("ref"))
                return {"lr": lr.numpy(), **{k: v.numpy() for k, v in side.items()}}
            sig_side = {k: v for k, v in inputs.items() if k not in ("lr", "ref", "z")}
            gen = torch.Generator().manual_seed(seed)
            hr = model.upscale(inputs["lr"], sig_side, inputs.get("ref"), temperature=temperature, generator=gen)
            return {"hr": hr.numpy()}
    finally:
        model.train(was)


@contextlib.contextmanager
def _fp32(model: Rescaler):
    speed = (getattr(model, "bf16", False), getattr(model, "channels_last", False))
    if hasattr(model, "set_speed"):
        model.set_speed(False, False)
    try:
        yield
    finally:
        if hasattr(model, "set_speed"):
            model.set_speed(*speed)


def compare(ours: dict[str, np.ndarray], theirs: dict[str, np.ndarray]) -> dict[str, float]:
    """``{"float": max |diff| over float outputs, "float_share": share of float values that differ by
    more than TOLERANCE, "levels": share of integer values that differ, "levels_max": max |diff| of
    integer values}``. Graphs that round inside (FGRN's 8-bit representation, RefScale's similarity
    levels) can move a value that float rounding puts at a .5 boundary by one step; that shows in
    ``float_share`` / ``levels`` as a few elements, not in all of them."""
    out = {"float": 0.0, "float_share": 0.0, "levels": 0.0, "levels_max": 0.0}
    n_int = n_diff = n_float = n_float_diff = 0
    for k, a in ours.items():
        b = np.asarray(theirs[k])
        if a.shape != b.shape:
            raise ModelError(f"output {k}: shape {list(b.shape)} from ONNX Runtime, {list(a.shape)} from PyTorch")
        if np.issubdtype(a.dtype, np.floating):
            d = np.abs(a.astype(np.float64) - b.astype(np.float64))
            out["float"] = max(out["float"], float(d.max()))
            n_float += d.size
            n_float_diff += int((d > TOLERANCE).sum())
        else:
            d = np.abs(a.astype(np.int64) - b.astype(np.int64))
            n_int += d.size
            n_diff += int((d != 0).sum())
            out["levels_max"] = max(out["levels_max"], float(d.max()))
    out["levels"] = n_diff / n_int if n_int else 0.0
    out["float_share"] = n_float_diff / n_float if n_float else 0.0
    return out


def within_tolerance(diff: dict[str, float]) -> bool:
    """The export check: no float value off by one 8-bit level (1/255) or more, at most
    :data:`MAX_SHARE` of them beyond :data:`TOLERANCE` and of the integer levels moved, by one
    level at most. (Graphs without internal rounding, IRN and bicubic, stay within TOLERANCE
    everywhere; the tests check that too.)"""
    return diff["float"] < 1 / 255 and diff["float_share"] <= MAX_SHARE and diff["levels"] <= MAX_SHARE \
        and diff["levels_max"] <= 1


def check_graph(model: Rescaler, path: str, part: str, h: int, w: int, batch: int = 1, seed: int = 0,
                threads: int | None = 1) -> dict[str, float]:
    """Run an exported graph with ONNX Runtime on a procedural pair and compare with PyTorch (:func:`compare`)."""
    sig = signature(model)
    inputs = _example_inputs(model, sig, part, h, w, n=batch, seed=seed)
    theirs = Graph(path, threads=threads).run(**inputs)
    return compare(reference_outputs(model, part, inputs, seed=seed), theirs)


# ============================================================================= on board -> ground
@dataclass
class OnboardOutput:
    """What the on-board loop hands to the downlink: the padded LR before rounding ``[1,3,h,w]``
    (float32), the side tensors ``[1,C,h',w']`` as the graph gave them, the original and padded
    sizes and the tile layout (``None``: one window)."""

    lr: np.ndarray
    side: dict[str, np.ndarray]
    size: tuple[int, int]
    padded_size: tuple[int, int]
    tiles: dict | None
    seconds: float = 0.0

    def save(self, path: str | os.PathLike) -> Path:
        """The hand-over file of the downlink (``.npz``: ``lr``, ``side_<name>``, ``size``,
        ``padded_size``, ``tiles`` = [tile, overlap] or [0, 0]) that ``refscale wrap`` reads."""
        path = Path(path)
        tiles = [self.tiles["tile"], self.tiles["overlap"]] if self.tiles else [0, 0]
        np.savez(path, lr=self.lr, size=np.array(self.size), padded_size=np.array(self.padded_size),
                 tiles=np.array(tiles), **{f"side_{k}": v for k, v in self.side.items()})
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> OnboardOutput:
        try:
            with np.load(path, allow_pickle=False) as f:
                data = {k: f[k] for k in f.files}
        except Exception as e:  # noqa: BLE001 - a corrupt or foreign file (zip, npy, pickle) is the user's input
            raise InputError(f"cannot read {path}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
        if "lr" not in data:
            raise InputError(f"{path} has no 'lr' array")
        try:
            lr = data["lr"]
            size = tuple(int(v) for v in data["size"]) if "size" in data else None
            padded = tuple(int(v) for v in data["padded_size"]) if "padded_size" in data else None
            t = [int(v) for v in data.get("tiles", [0, 0])]
            tiles = {"tile": t[0], "overlap": t[1]} if t[0] else None
        except (TypeError, ValueError, IndexError):
            raise InputError(f"{path}: 'size', 'padded_size' and 'tiles' must be pairs of integers") from None
        if size is not None and len(size) != 2 or padded is not None and len(padded) != 2:
            raise InputError(f"{path}: 'size' and 'padded_size' must be pairs of integers")
        side = {k[5:]: v for k, v in data.items() if k.startswith("side_")}
        return cls(lr, side, size, padded, tiles)


def onboard_encode(graph: Graph | str | os.PathLike, hr, ref=None, *, tile: int | None = None,
                   overlap: int | None = None, threads: int | None = None) -> OnboardOutput:
    """What flight software does with an exported encoder, written with ONNX Runtime: pad the image
    (and reference) like :func:`refscale.pipeline.encode`, cut it into the pipeline's windows
    (same ``tile`` / ``overlap`` rules and defaults), run the graph per window and keep each
    window's core. No registration (the reference is used as uploaded: ``ref_shift = (0, 0)``)."""
    g = graph if isinstance(graph, Graph) else Graph(graph, threads=threads)
    meta = g.meta
    if meta["part"] != "encoder":
        raise InputError(f"{g.path.name} is the {meta['part']} graph; on board runs the encoder")
    align, s = int(meta["alignment"]), int(meta["scale"])
    hr = pipeline._image(hr, "image")
    size = tuple(hr.shape[-2:])
    if meta["needs_reference"]:
        if ref is None:
            raise ModelError(f"model {meta['model']} needs a reference image (--ref)")
        ref = pipeline._image(ref, "reference")
        if tuple(ref.shape[-2:]) != size:
            raise InputError(f"reference is {ref.shape[-2]}x{ref.shape[-1]} but the image is {size[0]}x{size[1]}")
    else:
        ref = None
    hr_p = ops.pad_to_multiple(hr, align)[0]
    ref_p = ops.pad_to_multiple(ref, align)[0] if ref is not None else None
    padded = tuple(hr_p.shape[-2:])
    layout = pipeline._layout(types.SimpleNamespace(alignment=align, scale=s, name=meta["model"]), padded, tile, overlap)
    (wh, ww), windows = tiling.grid(padded, *layout, align)
    fixed = int(meta.get("tile") or 0)
    if fixed and (wh, ww) != (fixed, fixed):
        raise InputError(f"{g.path.name} takes {fixed}x{fixed} windows only; this image and layout give {wh}x{ww} "
                         "(export with a dynamic size, or choose tile/overlap)")
    if min(wh, ww) < int(meta.get("min_side", 1)):
        raise InputError(f"windows of {wh}x{ww} are smaller than the graph's minimum side {meta['min_side']}")
    lr = np.zeros((1, 3, padded[0] // s, padded[1] // s), np.float32)
    side: dict[str, np.ndarray] = {}
    t0 = time.perf_counter()
    for w in windows:
        feed = {"hr": hr_p[..., w.y:w.y + wh, w.x:w.x + ww]}
        if ref_p is not None:
            feed["ref"] = ref_p[..., w.y:w.y + wh, w.x:w.x + ww]
        out = g.run(**feed)
        y0, y1, x0, x1 = w.core
        lr[..., y0 // s:y1 // s, x0 // s:x1 // s] = out["lr"][..., (y0 - w.y) // s:(y1 - w.y) // s, (x0 - w.x) // s:(x1 - w.x) // s]
        for name, t in out.items():
            if name == "lr":
                continue
            st = wh // t.shape[-2]
            if name not in side:
                side[name] = np.zeros((1, t.shape[1], padded[0] // st, padded[1] // st), t.dtype)
            side[name][..., y0 // st:y1 // st, x0 // st:x1 // st] = \
                t[..., (y0 - w.y) // st:(y1 - w.y) // st, (x0 - w.x) // st:(x1 - w.x) // st]
    seconds = time.perf_counter() - t0
    tiles = {"tile": layout[0], "overlap": layout[1]} if len(windows) > 1 else None
    return OnboardOutput(lr, side, size, padded, tiles, seconds)


def wrap(lr, side: dict[str, Any] | None, meta: dict[str, Any] | str | os.PathLike, *, size: tuple[int, int] | None = None,
         ref=None, ref_hash: str | None = None, tiles: dict | None = None, codec: str | None = None,
         quality: int | None = None) -> Packet:
    """Build the :class:`Packet` of an image encoded on board, for ``refscale decode``.

    ``lr``: the padded LR as the encoder graph produced it (float in [0,1], ``[1,3,h,w]``,
    ``[3,h,w]`` or ``[h,w,3]``; rounded to 8 bits here exactly as the pipeline does), or already
    8-bit (uint8). ``side``: the graph's side outputs by name. ``meta``: the graph's metadata or
    its ONNX file. ``size``: the image size before padding (default: the padded size).
    ``ref`` (the reference image as uploaded) or ``ref_hash`` (its fingerprint) for reference
    models. ``tiles``: the layout used on board (``OnboardOutput.tiles``), recorded so that the
    ground decodes window by window the same way.
    """
    if not isinstance(meta, dict):
        meta = read_metadata(meta)
    c = meta.get("container") or {}
    s, align = int(c.get("scale", meta.get("scale"))), int(c.get("alignment", meta.get("alignment")))
    lr_u8 = _lr_uint8(lr)
    padded = (lr_u8.shape[0] * s, lr_u8.shape[1] * s)
    sized = size is not None
    size = padded if size is None else (int(size[0]), int(size[1]))
    if padded[0] % align or padded[1] % align or not (0 <= padded[0] - size[0] < align and 0 <= padded[1] - size[1] < align):
        raise InputError(f"an LR of {lr_u8.shape[0]}x{lr_u8.shape[1]} (padded {padded[0]}x{padded[1]}) does not fit an image of "
                         f"{size[0]}x{size[1]} with alignment {align}")
    side = {k: np.asarray(v) for k, v in (side or {}).items()}
    want = c.get("side", {})
    if set(side) != set(want):
        raise InputError(f"side tensors {sorted(side)} given; model {meta['model']} produces {sorted(want)}")
    for k, v in side.items():
        st, ch = int(want[k]["stride"]), int(want[k]["channels"])
        if v.ndim == 3:
            v = side[k] = v[None]
        if v.shape != (1, ch, padded[0] // st, padded[1] // st):
            raise InputError(f"side tensor {k!r} has shape {list(v.shape)}, expected {[1, ch, padded[0] // st, padded[1] // st]}")
        if np.issubdtype(v.dtype, np.floating) and not np.array_equal(v, np.round(v)):
            raise InputError(f"side tensor {k!r} is not integer-valued")
        side[k] = v.astype(np.int64)
    needs_ref = bool(c.get("needs_reference", meta.get("needs_reference")))
    if needs_ref:
        if ref_hash is None and ref is None:
            raise InputError(f"model {meta['model']} uses a reference: give it (--ref) or its fingerprint")
        if ref is not None:  # the reference the board used has the image's size (no resampling on board)
            ref = pipeline._image(ref, "reference")
            (rh, rw), (h, w) = ref.shape[-2:], size
            if (rh, rw) != (h, w):
                raise InputError(f"reference is {rw}x{rh} but the image is {w}x{h} (width x height); give the reference "
                                 "used on board" + ("" if sized else " (and the image size before padding: --size / size=)"))
            ref_hash = ref_hash or pipeline.fingerprint(ref)
        if len(ref_hash) != 64:
            raise InputError("reference fingerprint must be 64 hex digits")
    else:
        ref_hash = None
    from refscale import codecs

    codec = codecs.canonical(codec, c.get("codec", "png"))
    if codecs.needs_reference(codec):
        raise InputError(f"wrap writes intra LR codecs only, not {codec}")
    quality = codecs.check_quality(codec, quality)
    return Packet(model=str(meta["model"]), weights_hash=str(meta["weights_hash"]), scale=s, size=size,
                  padded_size=padded, tiles=tiles, lr=lr_u8, side={k: _smallest(k, v) for k, v in side.items()},
                  side_dtypes=dict(c.get("side_dtypes", {})), precision=str(c.get("precision", "fp32")),
                  ref_hash=ref_hash, ref_shift=(0, 0), codec=codec, quality=quality)


def wrap_files(lr: str | os.PathLike, graph: str | os.PathLike, *, side: dict[str, str | os.PathLike] | None = None,
               ref=None, ref_hash: str | None = None, size: tuple[int, int] | None = None, tiles: dict | None = None,
               codec: str | None = None, quality: int | None = None) -> Packet:
    """:func:`wrap` from files (what ``refscale wrap`` calls): ``lr`` is the ``.npz`` of
    :meth:`OnboardOutput.save` (LR, side tensors, sizes and tiles in one file), a ``.npy`` array
    (float before rounding, or uint8) or an 8-bit image file; ``side`` maps names to ``.npy``
    files (for a ``.npz`` they override its arrays); ``graph`` is the exported encoder (its metadata
    names the model); arguments given here override what the ``.npz`` holds."""
    from refscale.imageio import read_image

    meta = read_metadata(graph)
    p = Path(lr)
    if not p.is_file():
        raise InputError(f"LR file not found: {p}")
    sides: dict[str, np.ndarray] = {}
    if p.suffix.lower() == ".npz":
        out = OnboardOutput.load(p)
        lr_arr, sides = out.lr, dict(out.side)
        size = size or out.size
        tiles = tiles if tiles is not None else out.tiles
    elif p.suffix.lower() == ".npy":
        lr_arr = _load_npy(p)
    else:
        lr_arr = read_image(p)
    for name, q in (side or {}).items():
        sides[name] = _load_npy(Path(q))
    return wrap(lr_arr, sides, meta, size=size, ref=ref, ref_hash=ref_hash, tiles=tiles, codec=codec, quality=quality)


def _load_npy(p: Path) -> np.ndarray:
    try:
        return np.load(p, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(f"cannot read {p}: {e}") from None


def _smallest(name: str, a: np.ndarray) -> np.ndarray:
    from refscale.container import smallest_integer_array

    return smallest_integer_array(name, a)


def _lr_uint8(lr) -> np.ndarray:
    """``[h,w,3]`` uint8 from the on-board LR (float before rounding, or uint8)."""
    a = lr.detach().cpu().numpy() if isinstance(lr, torch.Tensor) else np.asarray(lr)
    if a.ndim == 4:
        if a.shape[0] != 1:
            raise InputError(f"one image at a time, got a batch of {a.shape[0]}")
        a = a[0]
    if a.ndim != 3:
        raise InputError(f"LR must be [1,3,h,w], [3,h,w] or [h,w,3], got shape {list(a.shape)}")
    if a.shape[0] == 3 and a.shape[-1] != 3:
        a = np.moveaxis(a, 0, -1)
    if a.shape[-1] != 3:
        raise InputError(f"LR must have 3 channels, got shape {list(a.shape)}")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if not np.issubdtype(a.dtype, np.floating):
        raise InputError(f"LR must be float in [0,1] (before rounding) or uint8, got {a.dtype}")
    if not np.isfinite(a).all():
        raise InputError("LR contains NaN or infinite values")
    t = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))
    return to_uint8(t).numpy()  # the pipeline's rounding: round(clamp(x, 0, 1) * 255), half to even


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m


__all__ = ["export_onnx", "read_metadata", "Graph", "onboard_encode", "wrap", "wrap_files", "OnboardOutput", "unsupported_reason",
           "check_graph", "reference_outputs", "latent", "compare", "require_onnx", "TOLERANCE", "DEFAULT_OPSET"]
