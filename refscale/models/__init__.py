"""The built-in rescalers. Importing this package registers every one of them
(:func:`refscale.protocol.register` next to each class); a new built-in model adds its module here.
TADM registers without its optional dependencies (diffusers, peft are needed only to build it)."""
from refscale.models import bicubic, enhance, fgrn, inter, irn, refscale_net, tadm  # noqa: F401
