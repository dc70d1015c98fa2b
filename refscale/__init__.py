"""refscale: learned image rescaling with a reference image.

>>> import refscale
>>> model = refscale.load("bicubic-x2")
>>> packet = model.encode(hr)                       # hr: [1,3,H,W] float in [0,1], array or path
>>> data = packet.to_bytes(codec="png")             # the .rsc container
>>> hr_hat = model.decode(refscale.Packet.from_bytes(data))
"""
from refscale import pipeline  # noqa: F401  (binds Rescaler.encode / decode)
from refscale.format.container import Packet
from refscale.errors import ContainerError, InputError, ModelError, RefScaleError
from refscale.protocol import Rescaler, register
from refscale.zoo import catalogue, load

__version__ = "0.1.0"


__all__ = ["RefScaleError", "ContainerError", "InputError", "ModelError", "Rescaler", "Packet", "load", "catalogue",
           "register", "__version__"]
