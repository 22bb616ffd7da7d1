"""PSD/PSB for stylebridge: one import for front ends.

- :func:`write_psd` (``psd_write``): a :class:`~bridge.document.model.LayerStack` -> layered PSD/PSB.
- :func:`read_psd` (``psd_read``): a Photoshop file -> composite :class:`~bridge.imaging.Picture`,
  a chosen content layer and ``style: NAME`` layers (the hot folder's input).
"""

from __future__ import annotations

from .psd_read import PsdContent, clean_name, read_psd, style_name
from .psd_write import BLEND_MODE_MAP, PSD_MAX_SIDE, build_psd, psd_suffix, write_psd

__all__ = ["BLEND_MODE_MAP", "PSD_MAX_SIDE", "PsdContent", "build_psd", "clean_name", "psd_suffix",
           "read_psd", "style_name", "write_psd"]
