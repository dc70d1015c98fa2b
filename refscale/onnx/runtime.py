"""Running an exported graph with ONNX Runtime (:class:`Graph`) and the export check: the graph's
outputs against what refscale computes (:func:`reference_outputs`), within
:func:`within_tolerance`."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from refscale import pipeline
from refscale.errors import InputError, ModelError
from refscale.metrics import to_uint8
from refscale.nn.invertible import sample_latent
from refscale.onnx.graphs import Signature, model_graphs, probe, read_metadata, require_onnx, signature
from refscale.protocol import Rescaler

#: tolerance of the export check: |PyTorch - ONNX Runtime| of float outputs in [0,1] (measured ~1e-6) ...
TOLERANCE = 1e-4
#: ... for all but this share of the values (internal rounding, see :func:`compare`); tests use both
MAX_SHARE = 0.01


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


def example_inputs(model: Rescaler, sig: Signature, part: str, h: int, w: int, n: int = 1, seed: int = 0,
                   temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """Inputs of a graph from a procedural pair: the encoder's, or the decoder's from the model's own
    ``downscale`` (LR rounded to 8 bits as stored) and a latent drawn with ``seed``."""
    hr, ref = probe(model, h, w, seed=seed, n=n)
    if part == "encoder":
        return {"hr": hr, **({"ref": ref} if ref is not None else {})}
    with torch.no_grad():
        lr, side = model.eval().downscale(hr, ref)
    out = {"lr": to_uint8(lr).float() / 255, **{k: side[k] for k in sig.side}}
    if ref is not None:
        out["ref"] = ref
    if sig.z_channels:
        out["z"] = latent(model, out["lr"], temperature, seed, sig.z_channels)
    return out


def latent(model: Rescaler, lr: torch.Tensor, temperature: float, seed: int, channels: int | None = None) -> torch.Tensor:
    """The ``z`` that ``model.upscale(lr, ..., temperature=t, generator=Generator().manual_seed(seed))``
    draws, so that a decoder graph can be fed exactly that latent; ``channels``: the decoder's
    ``z_channels`` (default: what the model's export graphs declare)."""
    n, _, h, w = lr.shape
    channels = model_graphs(model)[1].z_channels if channels is None else channels
    return sample_latent((n, channels, h, w), lr, temperature, torch.Generator().manual_seed(seed))


def reference_outputs(model: Rescaler, part: str, inputs: dict[str, torch.Tensor], seed: int = 0,
                      temperature: float = 1.0) -> dict[str, np.ndarray]:
    """What refscale computes for a graph's ``inputs``: ``downscale`` / ``upscale`` of the model in fp32
    (for the decoder the latent must be ``latent(model, lr, temperature, seed)``)."""
    with pipeline._inference(model, "fp32"):  # eval, no gradients, fp32; restored after
        if part == "encoder":
            lr, side = model.downscale(inputs["hr"], inputs.get("ref"))
            return {"lr": lr.numpy(), **{k: v.numpy() for k, v in side.items()}}
        sig_side = {k: v for k, v in inputs.items() if k not in ("lr", "ref", "z")}
        gen = torch.Generator().manual_seed(seed)
        hr = model.upscale(inputs["lr"], sig_side, inputs.get("ref"), temperature=temperature, generator=gen)
        return {"hr": hr.numpy()}


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
    inputs = example_inputs(model, sig, part, h, w, n=batch, seed=seed)
    theirs = Graph(path, threads=threads).run(**inputs)
    return compare(reference_outputs(model, part, inputs, seed=seed), theirs)
