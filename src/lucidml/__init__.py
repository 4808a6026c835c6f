"""lucidml: nine research systems for understanding, evaluating and updating models and data."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("lucidml")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"

from lucidml.errors import LucidError  # noqa: E402

__all__ = ["LucidError", "__version__"]
