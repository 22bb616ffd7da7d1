"""stylebridge: Gatys neural style transfer for image editors (GIMP 3, Photoshop hot folder, CLI)."""

__version__ = "0.1.0"
