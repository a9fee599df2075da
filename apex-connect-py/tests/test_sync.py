"""OAuth connect and syncs from the Front simulator (started through the testing helper)
into a SQLite file, resumed from the durable cursor; the async iterator of records."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from apex_connect import InvalidInputError, Store, SyncRecord, SyncResult
from apex_connect.testing import FrontSimulator

from conftest import run

REDIRECT = "/callback"


async def oauth_connected(db: Path) -> tuple[Store, FrontSimulator]:
    sim = await FrontSimulator.start(conversations=40, messages_per_conversation=2, contacts=30, tags=5)
    store = await Store.open(str(db))
    await store.configure(
        "front",
        "frontapp",
        base_url=sim.base_url,
        settings={
            "client_id": sim.oauth_client_id,
            "auth_url": sim.authorize_url,
            "token_url": sim.token_url,
        },
        secrets={"client_secret": sim.oauth_client_secret()},
    )
    # The host's OAuth connect: authorize URL (state + PKCE) -> user consents -> callback.
    request = store.authorize_url("front", sim.base_url + REDIRECT)
    assert "code_challenge=" in request.url and "state=" in request.url
    code, state = await sim.consent(request.url)
    await store.exchange_code(request, code, state)
    return store, sim


def test_oauth_sync_resumed_from_cursor(tmp_path: Path) -> None:
    db = tmp_path / "front.db"

    async def scenario() -> tuple[SyncResult, SyncResult, SyncResult, int]:
        store, sim = await oauth_connected(db)
        token = await store.access_token("front")
        assert token  # the simulator's access token, from the encrypted token store
        assert token not in repr(store)
        await store.sync("front", "tags")
        first = await store.sync("front", "conversations")
        second = await store.sync("front", "conversations")
        for i in range(3):
            sim.touch_conversation(sim.conversation_id(i))
        third = await store.sync("front", "conversations")
        expected = sim.count("conversations")
        await store.close()
        await sim.shutdown()
        return first, second, third, expected

    first, second, third, expected = run(scenario())
    assert first.records_read == expected == 40
    assert first.applied == 40
    assert first.has_cursor
    # Resumed from the cursor: nothing new (the connector may re-read an overlap window,
    # which the sink recognizes as unchanged).
    assert second.applied == 0
    # Three conversations touched on the simulator: exactly those are applied.
    assert third.applied == 3

    # The records are in the SQLite file, once each.
    with sqlite3.connect(db) as con:
        tables = {r[0] for r in con.execute("select name from sqlite_master where type='table'")}
        assert "records" in tables, tables
        n = con.execute(
            "select count(*) from records where connection = 'front' and stream = 'conversations'"
        ).fetchone()[0]
    assert n == 40


def test_async_iterator_of_records(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[SyncRecord], int, int]:
        sim = await FrontSimulator.start(conversations=250, messages_per_conversation=1)
        store = await Store.open(str(tmp_path / "it.db"))
        await store.configure("front", "frontapp", base_url=sim.base_url,
                              secrets={"api_token": sim.api_token()}, settings={"page_size": 50})
        stream = store.records("front", "conversations", buffer=1)
        got: list[SyncRecord] = []
        async for record in stream:
            got.append(record)
        report = stream.report
        assert report is not None
        # The cursor was committed as pages were consumed: a second pass reads nothing new.
        again = [r async for r in store.records("front", "conversations")]
        await sim.shutdown()
        return got, report.records_read, len([r for r in again if r.op == "upsert"])

    got, read, again = run(scenario())
    assert len(got) == read == 250
    assert len({r.id for r in got}) == 250
    assert got[0].stream == "conversations"
    assert got[0].json()["id"] == got[0].id
    assert again < 250


def test_sync_into_the_null_sink_reads_and_keeps_the_cursor(tmp_path: Path) -> None:
    db = tmp_path / "null.db"

    async def scenario() -> tuple[SyncResult, SyncResult]:
        sim = await FrontSimulator.start(conversations=30, messages_per_conversation=1)
        store = await Store.open(str(db))
        await store.configure("front", "frontapp", base_url=sim.base_url,
                              secrets={"api_token": sim.api_token()})
        first = await store.sync("front", "conversations", sink="null")
        again = await store.sync("front", "conversations", sink="null")
        with pytest.raises(InvalidInputError, match="unknown sink"):
            await store.sync("front", "conversations", sink="nowhere")  # type: ignore[arg-type]
        await store.close()
        await sim.shutdown()
        return first, again

    first, again = run(scenario())
    assert first.records_read == 30
    assert first.has_cursor
    assert again.records_read < 30, "resumed from the cursor the null sink committed"
    with sqlite3.connect(db) as con:
        n = con.execute("select count(*) from records").fetchone()[0]
    assert n == 0, "the null sink writes nothing"


def test_async_iterator_of_entities(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[SyncRecord], list[SyncRecord]]:
        sim = await FrontSimulator.start(conversations=10, messages_per_conversation=1)
        store = await Store.open(str(tmp_path / "entities.db"))
        await store.configure("front", "frontapp", base_url=sim.base_url,
                              secrets={"api_token": sim.api_token()})
        mapped = [r async for r in store.records("front", "contacts", entities=True)]
        plain = [r async for r in store.records("front", "contacts", full=True)]
        await sim.shutdown()
        return mapped, plain

    mapped, plain = run(scenario())
    assert mapped and len(mapped) == len(plain)
    for record in mapped:
        entity = record.entity()
        assert entity is not None and record.entity_json is not None
        # The entity points back at the record it was mapped from.
        assert record.id in record.entity_json
        assert isinstance(entity, dict)
    assert all(r.entity() is None and r.entity_json is None for r in plain)
