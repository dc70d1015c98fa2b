"""The public names of :mod:`refscale.onnx` (ONNX export, the ONNX Runtime check, the on-board loop
and ``wrap``) under their old module name, for code that imports ``refscale.export``."""
from refscale.onnx import *  # noqa: F401,F403
from refscale.onnx import __all__  # noqa: F401
