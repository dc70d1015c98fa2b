"""Fast CPU inference: bfloat16 autocast and channels_last memory format.

On a CPU with native bfloat16 (AVX512-BF16 / AMX, where oneDNN runs bf16 kernels) 3x3
convolutions run several times faster in bf16 with channels_last than in fp32; on an AVX2-only
CPU bf16 is emulated and several times *slower* (measurements: docs/performance.md, "Precision").
:func:`native_bf16` tells which, and ``"auto"`` settings (the pipeline's default precision,
``precision.bf16: auto`` in training configs) use bf16 only where it is native.
:class:`FastInference` is mixed into the learned rescalers (IRN, RefScale)::

    model = refscale.load("irn-x2", pretrained=False).set_speed(bf16=True, channels_last=True)
    lr, side = model.downscale(hr)          # convolutions in bf16, invertible maps in fp32
    hr_hat = model.upscale(lr, side)

Only the coupling *subnets* (and Ref-Net) run in bf16; every invertible operation stays in
float32 (see ``refscale.nn.invertible``), so the flow is still invertible to float32 rounding.
``benchmarks/inference_speed.py`` measures the speed-up and the PSNR change. Encoder and
decoder must use the same setting for RefScale's condition to match bit for bit.
The default is fp32 (``set_speed()`` with no arguments restores it).

For training, wrap the loss in the same context: ``with model.speed_context(x): model.training_losses(...)``
or use ``autocast(True)`` directly.
"""
from __future__ import annotations

import contextlib

import torch


def native_bf16(device_type: str = "cpu") -> bool:
    """True when bfloat16 convolutions are native (fast) on this device.

    CUDA: ``torch.cuda.is_bf16_supported()``. CPU: AVX512-BF16 or AMX instructions
    (``torch.cpu._is_avx512_bf16_supported`` / ``_is_amx_tile_supported``); False on AVX2-only
    CPUs (and on AVX512 ones without BF16), where bf16 is emulated (docs/performance.md, "Precision:
    bf16 only where the CPU has it").
    """
    if device_type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device_type != "cpu":
        return False
    try:
        return bool(torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_bf16(setting, device_type: str = "cpu") -> bool:
    """``True``/``False`` as given; ``"auto"`` -> :func:`native_bf16`."""
    if setting == "auto":
        return native_bf16(device_type)
    return bool(setting)


def autocast(enabled: bool, device_type: str = "cpu"):
    """``torch.autocast(device_type, dtype=bfloat16)`` when enabled, else a no-op context."""
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


class FastInference:
    """Mixin for ``nn.Module`` rescalers: a runtime speed setting (not part of the weights or config)."""

    #: declares the capability to the pipeline (``refscale.protocol.Rescaler.supports_bf16``)
    supports_bf16: bool = True
    #: inference in fp32 also in channels_last (the pipeline's choice; measured per model: the
    #: learned decoders' plain 3x3 convolutions run 1.5-1.8x faster so on an AVX2 CPU)
    fp32_channels_last: bool = False
    bf16: bool = False
    channels_last: bool = False

    def set_speed(self, bf16: bool = False, channels_last: bool = False):
        """Choose bf16 autocast and/or channels_last for downscale/upscale; returns ``self``."""
        self.bf16 = bool(bf16)
        self.channels_last = bool(channels_last)
        self.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        return self

    def speed_context(self, x: torch.Tensor):
        return autocast(self.bf16, x.device.type)

    def speed_input(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x
