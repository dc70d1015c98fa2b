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

What is traced comes from the model through the protocol
(:meth:`refscale.protocol.Rescaler.export_graphs`, :class:`refscale.protocol.ExportGraphs`): by
default its own ``downscale`` / ``upscale``; IRN, RefScale and FGRN give the decoder with ``z`` as
an input, the quantizers' forward value and precomputed 1x1 convolutions; bicubic gives its
convolution form. Nothing here knows a model class. Not exportable, with a one-line reason
(``Rescaler.export_refusal``): TADM and the ``inter-*`` modes.

Every graph takes *padded* tiles: H and W multiples of the model's alignment (recorded in the
metadata), dynamic (any such size, any batch) unless exported with a fixed ``tile``.

Exporter: torch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``): it needs
no further package and traces the models' shape arithmetic as dynamic ONNX shape operations (the
tests run every graph on sizes and batches other than the traced one). The dynamo path
(``dynamo=True``) needs ``onnxscript``, one more dependency, and its ``torch.export`` refuses plain
dynamic dimensions here (tried with torch 2.13: ``Dim("h")`` on IRN and RefScale fails with
"Constraints violated", the Haar squeezes need even sides; ``Dim.AUTO`` traces), so it would need
derived dimensions per model. Torch warns that the TorchScript exporter is deprecated; when it is
removed, this package moves to ``dynamo=True`` with ``Dim.AUTO``.

Metadata (ONNX ``metadata_props``, strings; :func:`read_metadata`): ``refscale.model``,
``refscale.weights_hash``, ``refscale.scale``, ``refscale.tile`` (0 = dynamic), ``refscale.opset``
and the rest of :data:`META_KEYS`, among them the container fields the ground side needs
(``refscale.container``: scale, alignment, precision, side tensors with their torch dtypes,
recommended tile layout, the 8-bit rounding rule).

Modules: :mod:`~refscale.onnx.graphs` (what is exported: graphs, signature, refusals, metadata),
:mod:`~refscale.onnx.runtime` (ONNX Runtime and the check), :mod:`~refscale.onnx.export`
(:func:`export_onnx`), :mod:`~refscale.onnx.onboard` (:func:`onboard_encode`, a reference
implementation of the on-board loop), :mod:`~refscale.onnx.wrap` (:func:`wrap`: the
:class:`~refscale.container.Packet` from the on-board outputs, which ``refscale decode`` decodes).

ONNX and ONNX Runtime come from the ``onnx`` extra (``pip install 'refscale[onnx]'``); without it
every function here raises one :class:`~refscale.errors.ModelError` line naming the extra.
"""
from refscale.onnx.export import DEFAULT_OPSET, META_KEYS, TRACE_SIDE, export_onnx
from refscale.onnx.graphs import (EXTRA, FORMAT, PARTS, Signature, read_metadata, refusal, require_onnx, signature,
                                  unsupported_reason)
from refscale.onnx.onboard import OnboardOutput, onboard_encode
from refscale.onnx.runtime import (MAX_SHARE, TOLERANCE, Graph, check_graph, compare, latent, reference_outputs,
                                   within_tolerance)
from refscale.onnx.wrap import wrap, wrap_files

__all__ = ["export_onnx", "read_metadata", "Graph", "onboard_encode", "wrap", "wrap_files", "OnboardOutput",
           "unsupported_reason", "refusal", "check_graph", "reference_outputs", "latent", "compare", "within_tolerance",
           "signature", "Signature", "require_onnx", "PARTS", "TOLERANCE", "MAX_SHARE", "DEFAULT_OPSET", "TRACE_SIDE",
           "META_KEYS", "EXTRA", "FORMAT"]
