"""*Previews* of what a style will do: fast feed-forward ones (engine, models), faithful small Gatys runs
(faithful), and a contact sheet of either (sheet)."""

from .engine import DEFAULT_LONG_SIDE, METHODS, StylePreview, preview, preview_size, previews, style_vector
from .models import PreviewModelError, PreviewModels, load_models

__all__ = ["DEFAULT_LONG_SIDE", "METHODS", "PreviewModelError", "PreviewModels", "StylePreview", "load_models",
           "preview", "preview_size", "previews", "style_vector"]
