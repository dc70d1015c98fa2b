"""What is exported for a model: its export graphs (the protocol's
:meth:`~refscale.protocol.Rescaler.export_graphs`, on a prepared copy), flattened to named ONNX
inputs and outputs; their :class:`Signature`; the refusals; the ``refscale.*`` metadata block."""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from refscale import pipeline
from refscale.errors import InputError, ModelError
from refscale.protocol import ExportGraphs, Rescaler

PARTS = ("encoder", "decoder")
EXTRA = "pip install 'refscale[onnx]'"
FORMAT = "refscale-onnx-1"


def require_onnx():
    """``(onnx, onnxruntime)``, or a one-line :class:`ModelError` naming the extra."""
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise ModelError(f"ONNX export needs onnx and onnxruntime ({e.name} is missing): {EXTRA}") from None
    return onnx, onnxruntime


# ============================================================================= what can be exported
def refusal(cls: type, name: str) -> str | None:
    """Why an architecture (a :class:`Rescaler` class) is refused before a model is built
    (``export_refusal``: TADM, inter-*); else None."""
    return f"{name} cannot be exported to ONNX: {cls.export_refusal}" if cls.export_refusal else None


def unsupported_reason(model: Rescaler) -> str | None:
    """``None`` when ``model`` can be exported, else why not (one sentence)."""
    reason = refusal(type(model), model.name)
    if reason is None:
        try:
            model_graphs(model)
        except ModelError as e:
            reason = str(e)
    return reason


def check_part(part: str) -> str:
    if part not in PARTS:
        raise InputError(f"part must be one of {', '.join(PARTS)}, got {part!r}")
    return part


# ============================================================================= the graphs
def model_graphs(model: Rescaler) -> tuple[Rescaler, ExportGraphs]:
    """A float32, eval-mode copy of ``model`` without gradients and the export graphs it gives
    (the copy's :meth:`~refscale.protocol.Rescaler.export_graphs` may prepare the copy)."""
    m = copy.deepcopy(model).float().eval()
    for p in m.parameters():
        p.requires_grad_(False)
    return m, m.export_graphs()


class FlatEncoder(nn.Module):
    """``(hr[, ref]) -> lr`` or ``(lr, *side)`` in the order of ``side_names``: the encoder graph
    with ONNX's positional outputs. The model (and an ``nn.Module`` graph) are submodules, so
    their weights become the graph's initializers."""

    def __init__(self, model: Rescaler, encoder: Callable, side_names: list[str]):
        super().__init__()
        self.m, self.encoder, self.side_names = model, encoder, side_names

    def forward(self, hr, ref=None):
        lr, side = self.encoder(hr, ref)
        return (lr, *(side[k] for k in self.side_names)) if self.side_names else lr


class FlatDecoder(nn.Module):
    """``(lr[, *side][, ref][, z]) -> hr``: the decoder graph with ONNX's positional inputs."""

    def __init__(self, model: Rescaler, decoder: Callable, side_names: list[str], needs_ref: bool, has_z: bool):
        super().__init__()
        self.m, self.decoder = model, decoder
        self.side_names, self.needs_ref, self.has_z = side_names, needs_ref, has_z

    def forward(self, *args):
        args = list(args)
        lr = args.pop(0)
        side = {k: args.pop(0) for k in self.side_names}
        ref = args.pop(0) if self.needs_ref else None
        z = args.pop(0) if self.has_z else None
        return self.decoder(lr, side, ref, z)


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


def signature(model: Rescaler, graphs: ExportGraphs | None = None) -> Signature:
    """The side tensors (one probe through ``downscale``), the latent channels and the side levels
    (what the export ``graphs`` declare; default: :func:`model_graphs`) and the reference."""
    graphs = model_graphs(model)[1] if graphs is None else graphs
    n = round_up(32, model.alignment)
    hr, ref = probe(model, n, n, seed=0)
    # fp32 and eval: never a training-mode pass (ActNorm's data-dependent init) on the caller's model
    with pipeline._inference(model, "fp32"):
        _, side = model.downscale(hr, ref)
    sides = {}
    for k in sorted(side):
        t = side[k]
        levels = graphs.side_levels.get(k)
        sides[k] = {"channels": int(t.shape[1]), "stride": n // int(t.shape[-1]),
                    "dtype": str(t.dtype).replace("torch.", ""), **({"levels": int(levels)} if levels else {})}
    return Signature(sides, int(graphs.z_channels), bool(model.needs_reference))


def probe(model: Rescaler, h: int, w: int, seed: int = 0, n: int = 1) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A procedural revisit pair (refscale.synthetic) as ``[n,3,h,w]`` tensors; ``ref`` None for models without one."""
    from refscale.synthetic import synthetic_revisit_pair

    hrs, refs = [], []
    for i in range(n):
        a, b = synthetic_revisit_pair(h, w, seed=seed + i)
        hrs.append(torch.from_numpy(a).permute(2, 0, 1).float() / 255)
        refs.append(torch.from_numpy(b).permute(2, 0, 1).float() / 255)
    hr = torch.stack(hrs)
    return hr, (torch.stack(refs) if model.needs_reference else None)


# ============================================================================= metadata
def set_metadata(proto, meta: dict[str, Any]) -> None:
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key = f"refscale.{k}"
        entry.value = v if isinstance(v, str) else json.dumps(v, sort_keys=True)
    proto.doc_string = (f"refscale {meta['part']} of {meta['model']} (x{meta['scale']}); metadata under refscale.*; "
                        "see refscale/onnx")
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


def round_up(n: int, m: int) -> int:
    return -(-n // m) * m
