"""The layer stack as plain data: what PSD files, GIMP and PNG exports are made from.

No torch here, and no file format: :mod:`bridge.document.stack` builds a :class:`LayerStack`
from an engine result, :mod:`bridge.document.psd` writes/reads PSD/PSB, the daemon serialises it
for GIMP.  Pixel arrays keep the photo's depth (uint8 or uint16).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np


@dataclass
class Layer:
    name: str
    role: str                                   # original | style | blend | detail | colors | refine
    pixels: np.ndarray | None = None            # H x W x 3 or H x W x 4 (RGBA), uint8/uint16
    mask: np.ndarray | None = None              # H x W, same dtype; white = revealed
    mode: str = "normal"                        # one of bridge.settings.BLEND_MODES
    opacity: float = 1.0                        # 0..1
    visible: bool = True
    left: int = 0
    top: int = 0
    meta: dict[str, Any] = field(default_factory=dict)   # e.g. the run's settings, the style name

    @property
    def height(self) -> int:
        return 0 if self.pixels is None else int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return 0 if self.pixels is None else int(self.pixels.shape[1])


@dataclass
class Group:
    name: str
    children: list[Layer] = field(default_factory=list)   # bottom to top
    mask: np.ndarray | None = None
    opacity: float = 1.0
    visible: bool = True
    mode: str = "pass_through"
    meta: dict[str, Any] = field(default_factory=dict)
    role: str = "group"


@dataclass
class LayerStack:
    width: int
    height: int
    depth: int                                   # 8 or 16
    items: list[Layer | Group] = field(default_factory=list)   # bottom to top
    icc_profile: bytes | None = None
    dpi: tuple[float, float] | None = None
    name: str = "stylebridge"
    meta: dict[str, Any] = field(default_factory=dict)

    def walk(self) -> Iterator[tuple[Layer | Group, Group | None]]:
        """Every item bottom to top with its parent group; a group comes before its children."""
        for item in self.items:
            yield item, None
            if isinstance(item, Group):
                for child in item.children:
                    yield child, item
