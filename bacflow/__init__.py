"""bacflow: bacterial assemblies to the inputs and outputs of the Bacformer genome language model."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("bacflow")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
