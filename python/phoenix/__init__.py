"""Phoenix: fast, trustworthy health and readiness endpoints, with a Rust core served by Granian."""

from ._core import __version__
from .kernel import Kernel, PhoenixKernel, default_kernel

__all__ = ["Kernel", "PhoenixKernel", "__version__", "default_kernel"]
