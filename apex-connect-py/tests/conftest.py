from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Runs a coroutine on a fresh event loop (no pytest-asyncio needed)."""
    return asyncio.run(coro)
