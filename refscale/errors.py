"""The one error type the library raises on purpose.

Everything refscale rejects (bad input, a corrupt container, a missing model, a
missing optional dependency) raises :class:`RefScaleError` or a subclass, with a
one-line message meant for the user. The CLI turns it into that line and exit
code 2; any other exception is a bug.
"""


class RefScaleError(Exception):
    """Base class of every error refscale raises on purpose."""


class ContainerError(RefScaleError):
    """A `.rsc` file is truncated, corrupted, foreign or otherwise unreadable."""


class InputError(RefScaleError):
    """An input image, path, size or option is not acceptable."""


class ModelError(RefScaleError):
    """A model name, weights file or model/container combination is not acceptable."""
