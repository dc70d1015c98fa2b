"""The rescaler protocol and the architecture registry: the ground floor of refscale.

This module imports nothing of refscale but its errors. Above it, in this order: the models
(``refscale.models``, each class registered with :func:`register` next to its definition), the
catalogue and weights (``refscale.zoo``), the product path (``refscale.pipeline``,
``refscale.evaluate``), the CLI on top. Nothing here imports upwards: the convenience methods
:meth:`Rescaler.encode` / :meth:`Rescaler.decode` look ``refscale.pipeline`` up by name when
they are called (:func:`importlib.import_module`), a call upwards at run time, not an import.

Every model (bicubic, IRN, RefScale, FGRN, TADM) is a :class:`Rescaler` (docs/design.md, "Python API"):

* ``downscale(hr, ref=None) -> (lr, side)``
* ``upscale(lr, side=None, ref=None, *, temperature=1.0, generator=None) -> hr``

plus ``scale``, ``needs_reference`` and ``name``. Encoding to a ``.rsc`` container,
evaluation, tiling and the CLI are written once against this protocol
(``refscale.pipeline``, ``refscale.evaluate``), never per model.

Conventions (docs/design.md, "Conventions"):

* images are float32 tensors ``[N,3,H,W]`` in [0,1];
* ``downscale`` receives ``H, W`` that are multiples of :attr:`Rescaler.alignment`
  (the pipeline pads and crops back) and returns ``lr`` of size ``H/scale, W/scale``
  in [0,1]; the pipeline rounds it to 8 bits before storing it;
* ``side`` maps a name to an integer-valued tensor ``[N,C,h,w]`` whose spatial size
  divides the HR size exactly (e.g. RefScale's quantized similarity map); ``{}`` for
  models without side information. The container stores it losslessly. A model declares its
  side tensors with :meth:`Rescaler.side_spec` (name -> :class:`SideSpec`: channels, stride,
  dtype); ``downscale`` must produce exactly those (the pipeline checks it, and the decoder
  reads the declaration instead of running the model);
* :attr:`Rescaler.supports_bf16` declares that the model can run its convolutions in bfloat16
  (``set_speed``; :class:`refscale.nn.speed.FastInference` declares it);
* ``upscale`` must accept the 8-bit-rounded LR (and a lossily coded one) and the side
  information exactly as ``downscale`` produced it; randomness only through
  ``generator`` so that equal seeds give equal pixels.

ONNX export (``refscale.onnx``) goes through the protocol too: :meth:`Rescaler.export_graphs`
gives the two traceable maps (:class:`ExportGraphs`), by default ``downscale`` and ``upscale``
themselves; :attr:`Rescaler.export_refusal` says why a model cannot be exported.
"""
from __future__ import annotations

import hashlib
import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

from refscale.errors import ModelError

Side = dict[str, torch.Tensor]


@dataclass(frozen=True)
class SideSpec:
    """One side tensor a model's ``downscale`` produces: ``[N, channels, H/stride, W/stride]`` of
    torch ``dtype`` (its name, e.g. ``"uint8"``), integer-valued; ``stride`` divides the
    model's alignment."""

    channels: int
    stride: int
    dtype: str = "int64"


# ----------------------------------------------------------------------------- registry
@dataclass
class ArchSpec:
    """A catalogue entry: name (``irn-x2``), class, constructor defaults, default weights name."""

    name: str
    cls: type
    defaults: dict[str, Any] = field(default_factory=dict)
    weights: str | None = None


#: catalogue name -> :class:`ArchSpec`; filled by :func:`register` when a model module is imported
REGISTRY: dict[str, ArchSpec] = {}


def register(name: str, *, weights: str | None = None, **defaults: Any) -> Callable[[type], type]:
    """Class decorator: register an architecture under its catalogue name, with the constructor
    defaults of that name and (optionally) the shipped weights a short name loads::

        @register("irn-x4", scale=4, weights="irn-x4-oscd")
        @register("irn-x2", scale=2, weights="irn-x2-oscd")
        class IRN(Rescaler): ...
    """

    def add(cls: type) -> type:
        REGISTRY[name] = ArchSpec(name, cls, dict(defaults), weights)
        return cls

    return add


# ----------------------------------------------------------------------------- export graphs
@dataclass
class ExportGraphs:
    """The two maps of a model that ``refscale.onnx`` traces (:meth:`Rescaler.export_graphs`).

    * ``encoder(hr, ref) -> (lr, side)``: as ``downscale`` (``lr`` before 8-bit rounding);
    * ``decoder(lr, side, ref, z) -> hr``: as ``upscale``, with its randomness as the input
      ``z [N, z_channels, H/s, W/s]``, the latent ``upscale`` draws
      (:func:`refscale.nn.invertible.sample_latent`: ``temperature * N(0, 1)``); ``z`` is None
      when ``z_channels`` is 0, ``ref`` None for models without a reference.

    Both must trace to the same graph for every aligned size: no data-dependent Python branches
    (the checks of the inputs stay in the ground-side pipeline). ``nn.Module`` maps are
    registered in the exported module, so their buffers become the graph's weights.
    ``side_levels``: the number of integer levels of a side tensor (metadata); ``min_side``: the
    smallest HR side the graphs take (None: the model's alignment).
    """

    encoder: Callable
    decoder: Callable
    z_channels: int = 0
    side_levels: dict[str, int] = field(default_factory=dict)
    min_side: int | None = None


class Rescaler(nn.Module):
    """Base class of every rescaler. Subclasses set ``arch`` and implement the two maps."""

    #: architecture family, e.g. ``"irn"``; the catalogue name is ``f"{arch}-x{scale}"``
    arch: str = ""
    #: True when downscale and upscale need the reference image
    needs_reference: bool = False
    #: True when ``upscale`` samples randomness (evaluation then averages several draws)
    stochastic: bool = False
    #: the LR codec a packet is written with unless the caller names one (``refscale.format.codecs``)
    default_codec: str = "png"
    #: the quality of ``default_codec`` when the caller names neither a codec nor a quality nor a
    #: budget (None: the codec's own default, lossless for the still codecs)
    default_quality: int | None = None
    #: why the architecture cannot be exported to ONNX (the end of one sentence), or None; read
    #: from the class, before a model is built
    export_refusal: str | None = None
    #: True when the model can run in bfloat16 with channels_last: it then has ``set_speed(bf16=,
    #: channels_last=)`` and the attributes ``bf16``, ``channels_last`` (:class:`refscale.nn.speed.FastInference`)
    supports_bf16: bool = False
    #: the latent temperature ``z ~ t * N(0, I)`` that decoding, the verifying encoder, the CLI and
    #: :func:`refscale.evaluate.evaluate` use unless the caller or the file names one (stochastic
    #: models): 1 (IRN's recipe; benchmarks/temperature.py, docs/evaluation.md "Temperature")
    #: unless the weights' metadata records another (``decode_temperature``, chosen on their
    #: held-out images by ``scripts/ship_weights.py``)
    decode_temperature: float = 1.0

    def __init__(self, scale: int, **config: Any):
        super().__init__()
        self.scale = int(scale)
        #: the constructor arguments, JSON-serialisable; saved with weights so a
        #: ``.safetensors`` file alone rebuilds the model
        self.config: dict[str, Any] = {"scale": self.scale, **config}
        #: catalogue or weights name (``irn-x2``, ``irn-x2-oscd``); set by ``refscale.load``
        self.name: str = f"{self.arch}-x{self.scale}"

    # ------------------------------------------------------------------ protocol
    @property
    def context(self) -> int:
        """HR pixels on each side that one output pixel of ``downscale`` / ``upscale`` depends on
        (the receptive radius), where the model knows it (0: not declared). The default tile overlap
        is at least this, so that tiled and untiled results are the same."""
        return 0

    @property
    def alignment(self) -> int:
        """HR height and width given to ``downscale`` are multiples of this."""
        return self.scale

    def side_spec(self) -> dict[str, SideSpec]:
        """The side tensors ``downscale`` produces (name -> :class:`SideSpec`); none by default."""
        return {}

    def downscale(self, hr: torch.Tensor, ref: torch.Tensor | None = None) -> tuple[torch.Tensor, Side]:
        raise NotImplementedError

    def upscale(
        self,
        lr: torch.Tensor,
        side: Side | None = None,
        ref: torch.Tensor | None = None,
        *,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        raise NotImplementedError

    def export_graphs(self) -> ExportGraphs:
        """The maps ``refscale.onnx`` exports (:class:`ExportGraphs`). It calls this on a float32,
        eval-mode copy of the model made for the export, which an override may change to prepare
        it (fp32 arithmetic, precomputed weights): call it on such a copy only. Default:
        ``downscale`` and ``upscale`` themselves, for models that draw no randomness; stochastic
        models override it to take ``z`` as an input."""
        if self.export_refusal:
            raise ModelError(f"{self.name} cannot be exported to ONNX: {self.export_refusal}")
        if self.stochastic:
            raise ModelError(f"{self.name} cannot be exported to ONNX: its upscale draws randomness and "
                             f"{type(self).__name__} gives no export graphs that take it as an input")
        return ExportGraphs(self.downscale, lambda lr, side, ref, z: self.upscale(lr, side, ref))

    def training_losses(self, hr: torch.Tensor, ref: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Loss terms for one training batch; must contain ``"total"`` (what is minimised)."""
        raise ModelError(f"{self.name} has nothing to train")

    def configure_training(self, step: int, **options: Any) -> None:
        """Training-only options for ``step`` (``model.train_options`` of a training config; the
        engine calls this before every step). Models without such options accept none."""
        if options:
            raise ModelError(f"{self.name} takes no training options, got {', '.join(sorted(options))}")

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named parameter groups that a training config can give their own learning-rate
        multiplier (``optim.lr_mult``); one group ``main`` unless a model says otherwise."""
        return {"main": [p for p in self.parameters()]}

    # ------------------------------------------------------------------ helpers
    def check_reference(self, ref: torch.Tensor | None) -> None:
        """Raise a clear error when a reference model gets no reference."""
        if self.needs_reference and ref is None:
            raise ModelError(f"model {self.name} needs a reference image (--ref)")

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def weights_hash(self) -> str:
        """SHA-256 (hex) of the state dict: names, dtypes, shapes and bytes, in name order.

        Recorded in every container so that decoding with other weights is refused.
        """
        h = hashlib.sha256(self.arch.encode() + str(self.scale).encode())
        for key, value in sorted(self.state_dict().items()):
            t = value.detach().to("cpu").contiguous()
            h.update(key.encode())
            h.update(str(t.dtype).encode())
            h.update(str(tuple(t.shape)).encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest()

    # ------------------------------------------------------------------ product API
    def encode(self, hr, ref=None, **kwargs):
        """Downscale one image into a :class:`refscale.Packet` (see ``refscale.pipeline.encode``)."""
        return _pipeline().encode(self, hr, ref, **kwargs)

    def decode(self, packet, ref=None, **kwargs):
        """Rebuild the HR image ``[1,3,H,W]`` from a packet (see ``refscale.pipeline.decode``)."""
        return _pipeline().decode(self, packet, ref, **kwargs)

    def extra_repr(self) -> str:
        return f"name={self.name!r}, scale={self.scale}, needs_reference={self.needs_reference}"


def _pipeline():
    """``refscale.pipeline``, looked up when a convenience method is called: the pipeline sits
    above the protocol, so this module does not import it (tests/test_layering.py)."""
    return importlib.import_module("refscale.pipeline")
