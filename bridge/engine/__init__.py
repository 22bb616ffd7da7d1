"""The style-transfer engine: VGG-19 features, Gatys losses, coarse-to-fine optimisation,
guided upsampling to the photo's native size, or optimisation at native size in exact blocks; checkpoints. Knows nothing of HTTP, folders or PSD."""

from .checkpoint import Checkpoint, EngineState, FileCheckpoint, fingerprint
from .types import (CancelToken, Progress, ProgressCallback, StyledImage, StyleInput, StyleResolutionWarning,
                    StylizeResult)

__all__ = ["CancelToken", "Checkpoint", "EngineState", "FileCheckpoint", "Progress", "ProgressCallback",
           "StyledImage", "StyleInput", "StyleResolutionWarning", "StylizeResult", "fingerprint", "stylize"]


def stylize(*args, **kwargs):  # noqa: D103 - thin lazy import so `import bridge.engine` stays cheap
    from .optimize import stylize as _stylize
    return _stylize(*args, **kwargs)
