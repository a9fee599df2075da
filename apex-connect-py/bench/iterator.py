"""Records per second: a Python ``async for`` over ``store.records`` against the same stream
synced by the Rust engine alone, into core's ``NullSink`` (``sink="null"``: the same read and
cursor commits, records handed to no one; the baseline) and into the SQLite records table,
all reading from the Front simulator in this process. Not part of CI.

    python bench/iterator.py [conversations]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

from apex_connect import Store
from apex_connect.testing import FrontSimulator


async def main(n: int) -> None:
    sim = await FrontSimulator.start(conversations=n, messages_per_conversation=1, contacts=10)
    with tempfile.TemporaryDirectory() as tmp:
        labels = ("rust sync -> null", "python async for", "rust sync -> sqlite")
        for label in labels + labels:
            store = await Store.open(str(Path(tmp) / f"{time.monotonic_ns()}.db"))
            await store.configure("f", "frontapp", base_url=sim.base_url,
                                  secrets={"api_token": sim.api_token()}, settings={"page_size": 100})
            started = time.perf_counter()
            if label == "rust sync -> null":
                read = (await store.sync("f", "conversations", sink="null")).records_read
            elif label.startswith("rust"):
                read = (await store.sync("f", "conversations")).records_read
            else:
                read = 0
                async for record in store.records("f", "conversations", buffer=4):
                    read += 1 if record.id else 0
            secs = time.perf_counter() - started
            print(f"{label:<22} {read:>7} records in {secs:6.2f}s = {read / secs:>9.0f} records/s")
            await store.close()
    await sim.shutdown()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 20_000))
