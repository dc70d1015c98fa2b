"""Reading safetensors files and loading their tensors into a model: written once, used by the
catalogue (:func:`refscale.zoo.load_weights_file`), TADM's stage and LoRA files and training.

Weights are only ever read with safetensors (no pickle). Float16 files (the shipped weights)
load into float32 models: ``load_state_dict`` converts.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from refscale.errors import ModelError


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """``(tensors, metadata)`` of a safetensors file; a clear :class:`ModelError` if it cannot be read."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelError(f"cannot read weights {path}: {e}") from None
    return tensors, meta


def load_into(model: nn.Module, tensors: dict[str, torch.Tensor], source: str | Path, what: str) -> None:
    """``model.load_state_dict(tensors, strict=True)`` with a one-line error naming ``source``."""
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as e:
        raise ModelError(f"{source} does not fit {what}: {str(e).splitlines()[0]}") from None
