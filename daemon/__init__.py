"""rollbackd's imperative shell: the CLI, the main loop, HTTP, metrics and every side effect."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("rollbackd")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+source"
