"""The style-transfer engine: VGG-19 features, Gatys losses, coarse-to-fine optimisation,
guided upsampling to the photo's native size. Knows nothing of HTTP, folders or PSD."""

from .types import CancelToken, Progress, ProgressCallback, StyledImage, StyleInput, StylizeResult

__all__ = ["CancelToken", "Progress", "ProgressCallback", "StyledImage", "StyleInput", "StylizeResult", "stylize"]


def stylize(*args, **kwargs):  # noqa: D103 - thin lazy import so `import bridge.engine` stays cheap
    from .optimize import stylize as _stylize
    return _stylize(*args, **kwargs)
