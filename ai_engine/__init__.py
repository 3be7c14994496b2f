"""ai_engine: an image-to-3D service."""

__version__ = "0.1.0"
