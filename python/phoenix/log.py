"""Logging for Phoenix processes: one stderr handler for the ``phoenix`` loggers, beside Granian's own.

``phoenix.api`` carries the request log (method, path, status, latency), ``phoenix.kernel`` the kernel's
own events (a malformed axioms file, an unavailable store).
"""

from __future__ import annotations

import copy
import logging
import logging.config
import time
from typing import Any

API_LOGGER = "phoenix.api"
KERNEL_LOGGER = "phoenix.kernel"

_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class UTCFormatter(logging.Formatter):
    """Timestamps as RFC 3339 in UTC with milliseconds, matching the core's request-log lines."""

    converter = staticmethod(time.gmtime)
    default_time_format = "%Y-%m-%dT%H:%M:%S"
    default_msec_format = "%s.%03dZ"


def dictconfig(level: str, base: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` mapping that adds the ``phoenix`` logger to ``base``.

    Granian replaces its whole ``loggers`` section with whatever it is given, so its own entries are
    passed in as ``base`` and kept.
    """
    config: dict[str, Any] = copy.deepcopy(base) if base else {"version": 1, "loggers": {}}
    config["disable_existing_loggers"] = False
    config.setdefault("formatters", {})["phoenix"] = {"()": UTCFormatter, "fmt": _FORMAT}
    config.setdefault("handlers", {})["phoenix"] = {
        "class": "logging.StreamHandler",
        "formatter": "phoenix",
        "stream": "ext://sys.stderr",
    }
    config.setdefault("loggers", {})["phoenix"] = {
        "handlers": ["phoenix"],
        "level": level.upper(),
        "propagate": False,
    }
    return config


def configure(level: str) -> None:
    """Sets up the ``phoenix`` loggers in a process that Granian does not manage (``phoenix check``)."""
    logging.config.dictConfig(dictconfig(level))
