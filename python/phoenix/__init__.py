"""Phoenix: fast, trustworthy health and readiness endpoints, with a Rust core served by Granian."""

from ._core import PhoenixError, StoreError, StoreUnavailable, __version__
from .kernel import Kernel, PhoenixKernel, default_kernel

__all__ = [
    "Kernel",
    "PhoenixError",
    "PhoenixKernel",
    "StoreError",
    "StoreUnavailable",
    "__version__",
    "default_kernel",
]
