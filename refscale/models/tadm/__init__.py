"""TADM (timestep-aware diffusion model) for 16x and 32x rescaling on a local Stable Diffusion 2.1-base.

Importing this package registers ``tadm-x16`` and ``tadm-x32`` and needs only torch; diffusers
and peft (``pip install refscale[diffusion]``) are imported when a model is built, which raises
a clear :class:`~refscale.errors.ModelError` if they are missing. See ``docs/tadm.md``.

Modules: :mod:`.model` (the rescaler), :mod:`.dfrm` (eq. 3-8), :mod:`.tpm` (time-step
prediction), :mod:`.scheduler` (eq. 9-10), :mod:`.tiles` (Algorithm 1), :mod:`.backbone`
(loading SD parts, LoRA, null text embedding); CPU time and memory: ``benchmarks/tadm_speed.py``.
"""
from refscale.models.tadm.model import TADM

__all__ = ["TADM"]
