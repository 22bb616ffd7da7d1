"""Loading and saving images without losing what the artist cares about.

A :class:`Picture` keeps the pixels at their own bit depth (uint8 or uint16), the alpha channel
apart from the colour (straight, not premultiplied), and the ICC profile and resolution, so that
every output can carry them back. Only this package touches image files; the engine and the
document model get arrays. Its rooms: ``picture`` (the Picture, errors, size checks), ``read`` (the
one entry: :func:`load_image`, :func:`load_mask`), ``probe`` (what a file is, from its header: the one
probe every front end uses before decoding), the decoders ``png``, ``tiff``
and ``pillow``, ``pixels`` (channels, modes, orientation), ``color`` (ICC, Lab, CMYK) and ``write``.

Who decodes what, and why:

* TIFF (any depth, LZW/deflate/...): ``tifffile`` (+ ``imagecodecs``), because Pillow truncates
  16-bit RGB(A) TIFF to 8 bits. Metadata (ICC tag 34675, resolution, orientation) from its tags.
  TIFF kinds tifffile's path does not map (CMYK, YCbCr, Lab...) fall back to Pillow at 8 bits.
* 16-bit PNG: ``imagecodecs.png_decode`` (Pillow truncates 16-bit RGB/RGBA PNG); the metadata
  chunks (iCCP, pHYs, eXIf) are read by the small chunk walker below.
* everything else (8-bit PNG, JPEG, WebP, GIF, BMP...): Pillow.

Metadata is untrusted input too (issue 15: a 2 MB PNG whose iCCP chunk inflated to 4.2 GB, and
was then copied into every output).  So every piece we keep or decompress is bounded by
``Limits.max_metadata_bytes``: a PNG's iCCP is inflated by us with that ceiling, whatever its
depth, and its text chunks (tEXt/zTXt/iTXt, where XMP lives) are removed before Pillow sees the
file, since nothing here uses them.  Every ICC profile that reaches a :class:`Picture` has been
checked (size, ``acsp`` signature, declared length, parsed by LittleCMS through ``ImageCms``).
Metadata over the cap or broken is dropped with a :class:`MetadataWarning`, and the pixels are
still read: an image without its profile is what browsers show for a broken one, whereas
refusing would stop a file every other program opens.

EXIF orientation is applied to the arrays here (so 16-bit gets it too); outputs carry no
orientation tag. Pillow's ``LOAD_TRUNCATED_IMAGES`` is left False: a truncated file is an error.
"""

from __future__ import annotations

from .color import lab_to_srgb, valid_icc
from .picture import (
                      SUPPORTED,
                      IgnoredFramesWarning,
                      ImageError,
                      MetadataWarning,
                      Picture,
                      convert_depth,
                      short_reason,
                      to_dtype,
)
from .png import (
                      PNG_BAND_BYTES,
                      encode_array_png,
                      encode_png,
                      inflate_bounded,
                      iter_png,
                      png_chunk,
                      png_chunks,
                      png_metadata_chunks,
)
from .probe import ImageInfo, image_kind, image_size, probe
from .read import load_image, load_mask
from .tiff import encode_tiff
from .write import save_image

__all__ = ["PNG_BAND_BYTES", "SUPPORTED", "IgnoredFramesWarning", "ImageError", "ImageInfo", "MetadataWarning", "Picture",
           "convert_depth", "encode_array_png", "encode_png", "encode_tiff", "image_kind", "image_size", "inflate_bounded",
           "iter_png", "lab_to_srgb", "load_image", "load_mask", "png_chunk", "png_chunks", "png_metadata_chunks",
           "probe", "save_image", "short_reason", "to_dtype", "valid_icc"]
