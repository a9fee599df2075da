"""The scheduler and the inbox workers started from Python, in the event loop of the app,
with the FastAPI router served through httpx's ASGI transport."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import httpx
from fastapi import FastAPI

from apex_connect import Store
from apex_connect.fastapi import webhook_router
from apex_connect.testing import FrontSimulator

from conftest import run


def count(db: Path, stream: str) -> int:
    with sqlite3.connect(db) as con:
        row = con.execute(
            "select count(*) from records where connection = 'f' and stream = ?", (stream,)
        ).fetchone()
    return int(row[0])


def test_scheduler_and_workers_in_the_event_loop(tmp_path: Path) -> None:
    db = tmp_path / "bg.db"

    async def scenario() -> tuple[int, int, int]:
        sim = await FrontSimulator.start(conversations=20, messages_per_conversation=1, tags=7)
        store = await Store.open(str(db))
        await store.configure("f", "frontapp", base_url=sim.base_url,
                              secrets={"api_token": sim.api_token(),
                                       "webhook_secret": sim.webhook_secret()})
        app = FastAPI()
        app.include_router(webhook_router(store))
        transport = httpx.ASGITransport(app=app)
        background = await store.start_background(schedules=[("f", "tags", 0.2)])
        async with background, httpx.AsyncClient(transport=transport, base_url="http://backend") as client:
            sim.add_message(sim.conversation_id(2), "Any news?", True)
            event = sim.latest_event_id()
            assert event is not None
            body = sim.webhook_body(event)
            r = await client.post("/webhooks/frontapp/f", content=body, headers=sim.sign_webhook(body))
            assert r.status_code == 200, r.text
            done = 0
            for _ in range(100):
                counts = await store.inbox_counts()
                done = counts.done
                if done == 1 and count(db, "tags") == 7:
                    break
                await asyncio.sleep(0.1)
        assert background.stopped
        conversations = count(db, "conversations")
        await store.close()
        await sim.shutdown()
        return done, count(db, "tags"), conversations

    done, tags, conversations = run(scenario())
    assert done == 1            # the worker processed the webhook event
    assert tags == 7            # the scheduled sync ran
    assert conversations >= 1   # what the event named was fetched and written
