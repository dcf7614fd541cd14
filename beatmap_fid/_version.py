"""The library version, read by setuptools and written into every store."""

__version__ = "0.1.0"
