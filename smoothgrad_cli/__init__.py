"""smoothgrad: SmoothGrad saliency maps for image classifiers, from the command line.

The engine (``smoothgrad_cli.engine``) is pure torch and usable as a library.
"""

from importlib import metadata

try:
    __version__ = metadata.version("smoothgrad")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
