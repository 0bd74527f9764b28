"""smoothgrad: SmoothGrad saliency maps for image classifiers, from the command line.

As a library: ``Explainer`` and ``MapSettings`` (photos → maps, the layer every command
uses), or the pure-torch engine (``smoothgrad_cli.engine``: tensors → maps).
"""

from importlib import metadata

try:
    __version__ = metadata.version("smoothgrad")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"


def __getattr__(name: str):
    # Lazily, so that `smoothgrad --help` does not wait for torch to import.
    if name in ("Explainer", "Explanation", "PreparedModel"):
        from . import explainer

        return getattr(explainer, name)
    if name in ("MapSettings", "Method", "Smoothing", "Precision", "SettingsError"):
        from . import settings

        return getattr(settings, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
