"""Phoenix: fast, trustworthy health and readiness endpoints, with a Rust core served by Granian."""

from importlib.metadata import version

from ._core import PhoenixError, StoreError, StoreUnavailable
from .kernel import Kernel, PhoenixKernel, default_kernel

# Cargo.toml's version, which maturin writes into the installed distribution's metadata.
__version__ = version("phoenix-kernel")

__all__ = [
    "Kernel",
    "PhoenixError",
    "PhoenixKernel",
    "StoreError",
    "StoreUnavailable",
    "__version__",
    "default_kernel",
]
