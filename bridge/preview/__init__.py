"""Fast feed-forward *previews* of what a style will do (not the Gatys result): engine, models, contact sheet."""

from .engine import DEFAULT_LONG_SIDE, METHODS, StylePreview, preview, preview_size, previews, style_vector
from .models import PreviewModelError, PreviewModels, load_models

__all__ = ["DEFAULT_LONG_SIDE", "METHODS", "PreviewModelError", "PreviewModels", "StylePreview", "load_models",
           "preview", "preview_size", "previews", "style_vector"]
