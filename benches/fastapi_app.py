"""The "what users would otherwise pick" comparison for benches/http_harness.py: a plain FastAPI
``/health`` returning the same JSON as Phoenix, built per request, served by uvicorn.

Run: ``python -m uvicorn --app-dir benches fastapi_app:app --port 8002``.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

# FastAPI is optional (the harness installs it); the ignore keeps mypy quiet where it is absent.
from fastapi import FastAPI  # type: ignore[import-not-found,unused-ignore]

_STARTED = time.monotonic()


async def health() -> dict[str, Any]:
    now = datetime.now(timezone.utc)
    return {
        "status": "healthy",
        "uptime_seconds": int(time.monotonic() - _STARTED),
        "timestamp": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
    }


app = FastAPI()
app.add_api_route("/health", health, methods=["GET"])
