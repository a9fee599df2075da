"""The entity graph (identity resolution): contacts of two Front connections synced into it
through `Store.sync(..., sink=graph)` (the EntityGraphSink of `apex-connect serve`'s
`[identity]`), then queried: find by identity, the canonical entity, the joins."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from apex_connect import EntityGraph, InvalidInputError, Store
from apex_connect.testing import FrontSimulator

from conftest import run


def test_an_empty_graph_finds_nothing(tmp_path: Path) -> None:
    async def scenario() -> None:
        for location in (str(tmp_path / "graph.db"), f"sqlite://{tmp_path / 'url.db'}", "memory:"):
            async with await EntityGraph.open(location) as graph:
                assert "EntityGraph(" in repr(graph)
                assert await graph.find(email="ann@acme.com") == []
                assert await graph.find(handle=("twitter", "annlee")) == []
                assert await graph.entity(1) is None
                assert await graph.merges() == []
        assert (tmp_path / "graph.db").exists() and (tmp_path / "url.db").exists()

        graph = await EntityGraph.open(str(tmp_path / "graph.db"))
        with pytest.raises(InvalidInputError, match="exactly one"):
            await graph.find()
        with pytest.raises(InvalidInputError, match="exactly one"):
            await graph.find(email="ann@acme.com", phone="+15550000001")
        await graph.close()

    run(scenario())


def test_contacts_of_two_connections_resolve_into_one_entity_each(tmp_path: Path) -> None:
    db = tmp_path / "state.db"

    async def scenario() -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any], list[dict[str, Any]],
                                  list[dict[str, Any]], list[dict[str, Any]], int]:
        sim = await FrontSimulator.start(conversations=2, messages_per_conversation=1, contacts=12, tags=1)
        store = await Store.open(str(db))
        for conn in ("front-a", "front-b"):
            await store.configure(conn, "frontapp", base_url=sim.base_url,
                                  secrets={"api_token": sim.api_token()})
        # One contact's handles, as the platform returned them.
        contact: dict[str, Any] = {}
        async for record in store.records("front-a", "contacts"):
            contact = record.json()
        email = next(h["handle"] for h in contact["handles"] if h["source"] == "email")
        phone = next(h["handle"] for h in contact["handles"] if h["source"] == "phone")

        # The graph in the state database itself; both accounts hold the same contacts.
        async with await EntityGraph.open(f"sqlite://{db}") as graph:
            a = await store.sync("front-a", "contacts", full=True, sink=graph)
            b = await store.sync("front-b", "contacts", sink=graph)
            assert a.applied == b.applied == sim.count("contacts")
            again = await store.sync("front-b", "contacts", full=True, sink=graph)
            assert again.applied == 0, "a replay changes nothing"

            found = await graph.find(email="  " + email.upper())
            by_phone = await graph.find(phone=phone)
            entity = await graph.entity(found[0]["id"])
            assert entity is not None
            merges = await graph.merges()
            one = await graph.merges(limit=1)
            missing = await graph.entity(10**9)
            assert missing is None
        await store.close()
        await sim.shutdown()
        return found, contact, entity, by_phone, merges, one, sim.count("contacts")

    found, contact, entity, by_phone, merges, one, contacts = run(scenario())
    email = next(h["handle"] for h in contact["handles"] if h["source"] == "email")
    assert len(found) == 1
    assert found[0]["kind"] == "person" and found[0]["name"] == contact["name"]
    matched = sorted(m["connection"] for m in found[0]["matched"])
    assert matched == ["front-a", "front-b"]
    assert {m["platform"] for m in found[0]["matched"]} == {"frontapp"}
    assert {m["id"] for m in found[0]["matched"]} == {contact["id"]}
    assert [e["id"] for e in by_phone] == [found[0]["id"]]

    assert entity["id"] == entity["requested"] == found[0]["id"]
    assert entity["name"] == contact["name"]
    assert entity["fields"]["name"]["value"] == contact["name"]
    sources = sorted(s["provenance"]["source"]["connection"] for s in entity["sources"])
    assert sources == ["front-a", "front-b"]
    keys = {(i["key"]["kind"], i["key"]["value"]) for i in entity["identities"]}
    assert ("email", email.lower()) in keys

    # Each contact of front-b joined its front-a twin: one join per contact, newest first.
    assert len(merges) == contacts
    assert {m["kind"] for m in merges} == {"join"}
    assert [m["id"] for m in merges] == sorted((m["id"] for m in merges), reverse=True)
    assert any(m["cluster"] == found[0]["id"] and m["trigger"]["connection"] == "front-b" for m in merges)
    assert len(one) == 1 and one[0]["id"] == merges[0]["id"]
