"""The inter-frame modes ``inter-h264``, ``inter-hevc``, ``inter-av1``: scale 1, the new image
coded as a video P-frame predicted from the reference (issue 19).

The rescaler itself is the identity (``downscale(hr, ref) = (hr, {})``, ``upscale(lr) = lr``):
all the work is done by its default LR codec (``h264-inter``, ``hevc-inter``, ``av1-inter``;
:mod:`refscale.inter`), which the pipeline gives the reference at the LR's size -- at scale 1
the 8-bit reference itself. So ``refscale encode new.png --ref archive.png -m inter-h264 -q 60``
writes a ``.rsc`` whose LR section is the P-frame, and the same codecs code the LR of any other
rescaler (``-m bicubic-x2 --codec h264-inter``). ``needs_reference`` is True: the container then
records the reference's fingerprint and decoding with another reference is refused.
"""
from __future__ import annotations

import torch

from refscale.errors import ModelError
from refscale.protocol import Rescaler, Side, register


@register("inter-av1", scale=1, codec="av1-inter")
@register("inter-hevc", scale=1, codec="hevc-inter")
@register("inter-h264", scale=1, codec="h264-inter")
class InterFrame(Rescaler):
    """Scale-1 identity whose default LR codec codes the image as a P-frame from the reference."""

    arch = "inter"
    needs_reference = True
    export_refusal = ("the inter-* modes are video codecs (FFmpeg through PyAV), not networks; "
                      "export a rescaler and run the codec on board")

    def __init__(self, scale: int = 1, codec: str = "h264-inter"):
        if int(scale) != 1:
            raise ModelError(f"the inter-frame modes are scale 1 (got {scale}); to rescale first, use a "
                             f"rescaler with --codec {codec}")
        super().__init__(1, codec=codec)
        self.default_codec = codec
        self.name = "inter-" + codec.split("-")[0]

    def downscale(self, hr: torch.Tensor, ref: torch.Tensor | None = None) -> tuple[torch.Tensor, Side]:
        return hr, {}

    def upscale(self, lr: torch.Tensor, side: Side | None = None, ref: torch.Tensor | None = None, *,
                temperature: float = 1.0, generator: torch.Generator | None = None) -> torch.Tensor:
        return lr
