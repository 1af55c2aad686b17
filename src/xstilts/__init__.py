"""xstilts: intermediate-task training for zero-shot cross-lingual transfer (X-STILTs)."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("xstilts")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
