"""Webhooks per second through the FastAPI router under uvicorn: signed Front application
webhooks, each a new event (verified, appended durably to the SQLite inbox, answered 200).
The server runs in a child process (uvicorn, one worker); this process sends with httpx.
Not part of CI; needs uvicorn.

    python bench/webhooks.py [requests] [concurrency]
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import tempfile
import time
from contextlib import asynccontextmanager
from collections.abc import AsyncIterator

import httpx
from fastapi import Request, Response

SECRET = "bench-front-app-secret"
PORT = int(os.environ.get("BENCH_PORT", "8765"))


def make_app():  # type: ignore[no-untyped-def]
    from fastapi import FastAPI

    from apex_connect import Store
    from apex_connect.fastapi import webhook_router

    holder: dict[str, Store] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        store = await Store.open(os.environ["BENCH_DB"])
        await store.configure("f", "frontapp", secrets={"api_token": "x", "webhook_secret": SECRET})
        if os.environ.get("BENCH_NOOP"):
            # Baseline: the same route answering 200 without the receiver (uvicorn + FastAPI
            # + the client only).
            @app.post("/webhooks/{platform}/{connection}")
            async def noop(platform: str, connection: str, request: Request) -> Response:
                await request.body()
                return Response(content=b'{"status":"accepted"}', media_type="application/json")
        else:
            app.include_router(webhook_router(store))
        holder["store"] = store
        yield
        await store.close()

    return FastAPI(lifespan=lifespan)


def signed(i: int) -> tuple[bytes, dict[str, str]]:
    body = json.dumps({"type": "inbound_received", "authorization": {"id": "cmp_b"},
                       "payload": {"id": f"evt_{i}", "type": "inbound"}}).encode()
    ts = str(int(time.time() * 1000))
    mac = hmac.new(SECRET.encode(), ts.encode() + b":" + body, hashlib.sha256).digest()
    return body, {"content-type": "application/json", "x-front-request-timestamp": ts,
                  "x-front-signature": base64.b64encode(mac).decode()}


async def load(n: int, concurrency: int) -> None:
    url = f"http://127.0.0.1:{PORT}/webhooks/frontapp/f"
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(n):
        queue.put_nowait(i)
    statuses: dict[int, int] = {}

    async with httpx.AsyncClient(limits=httpx.Limits(max_connections=concurrency)) as client:
        for _ in range(100):
            try:
                await client.get(f"http://127.0.0.1:{PORT}/docs")
                break
            except httpx.TransportError:
                await asyncio.sleep(0.1)

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                body, headers = signed(i)
                r = await client.post(url, content=body, headers=headers)
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        secs = time.perf_counter() - started
    print(f"{n} webhooks, concurrency {concurrency}: {secs:.2f}s = {n / secs:.0f} webhooks/s; statuses {statuses}")


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    concurrency = int(sys.argv[2]) if len(sys.argv) > 2 else 32
    with tempfile.TemporaryDirectory() as tmp:
        env = dict(os.environ, BENCH_DB=os.path.join(tmp, "bench.db"))
        here = os.path.dirname(os.path.abspath(__file__))
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--factory", "webhooks:make_app", "--port", str(PORT),
             "--log-level", "warning", "--no-access-log"],
            cwd=here, env=env,
        )
        try:
            asyncio.run(load(n, concurrency))
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
