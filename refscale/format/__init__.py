"""The format layer: what a ``.rsc`` file holds, as bytes (docs/format.md), below any file or model.

* :mod:`refscale.format.container` -- the container (:class:`~refscale.format.container.Packet`,
  header, side sections, verification record);
* :mod:`refscale.format.raster_record` -- the raster record (source dtype, bands, intensity
  mapping, georeferencing, nodata mask): its fields, bytes and validation;
* :mod:`refscale.format.codecs` -- the LR codecs and the one resolution of a codec choice;
* :mod:`refscale.format.inter` -- the inter-frame LR payloads (a P-frame from the reference);
* :mod:`refscale.format.rounding` -- the 8-bit rounding rule that defines the stored LR.

Layering (tests/test_layering.py): nothing here imports :mod:`refscale.io`, a model, the pipeline
or the CLI; this ``__init__`` imports nothing, so a module of the layer is imported alone.
"""
