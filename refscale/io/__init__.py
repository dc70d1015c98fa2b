"""The I/O layer: files on disk, above the format layer (:mod:`refscale.format`).

* :mod:`refscale.io.image` -- image files of the 8-bit path (PNG, JPEG, TIFF, ...): the only place
  where file bytes meet the library's float tensors;
* :mod:`refscale.io.raster` -- rasters: GeoTIFF / 16-bit / float reading (rasterio, GDAL), band
  choice, the intensity mapping, nodata fill, windowed scenes, GeoTIFF / COG writing
  (:class:`~refscale.io.raster.TiffSink`); the record it fills is
  :class:`refscale.format.raster_record.RasterRecord`.

Layering (tests/test_layering.py): this layer may import the format layer, never a model, the
pipeline or the CLI; this ``__init__`` imports nothing.
"""
