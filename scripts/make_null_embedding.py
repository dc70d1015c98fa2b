#!/usr/bin/env python
"""Precompute TADM's null text embedding from a local Stable Diffusion folder (diffusers layout).

TADM conditions the UNet on the CLIP embedding of the empty prompt; computing it once here means
the text encoder is never loaded at run time. Needs ``transformers`` (only for this script)::

    python scripts/make_null_embedding.py /path/to/stable-diffusion-2-1-base
    # -> /path/to/stable-diffusion-2-1-base/null_text_embedding.safetensors  ([1, 77, 1024])

``-o FILE`` writes elsewhere (then pass ``null_embedding=FILE`` to the model). Nothing is
downloaded: the tokenizer and text encoder are read from ``<folder>/tokenizer`` and
``<folder>/text_encoder``.
"""
import argparse
import sys

from refscale.errors import RefScaleError
from refscale.models.tadm.backbone import make_null_embedding


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("sd_path", help="Stable Diffusion folder in the diffusers layout (tokenizer/, text_encoder/)")
    parser.add_argument("-o", "--out", default=None, help="output file (default: <sd_path>/null_text_embedding.safetensors)")
    args = parser.parse_args(argv)
    try:
        path = make_null_embedding(args.sd_path, args.out)
    except RefScaleError as e:
        print(f"make_null_embedding: error: {e}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
