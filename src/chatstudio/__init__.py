"""AI Chat Studio: a self-hosted backend for AI chat."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("chatstudio")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
