"""Rescalers. Importing this package registers every built-in architecture."""
from refscale.models.base import Rescaler  # noqa: F401
