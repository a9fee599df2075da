"""The FastAPI router: signed Front and HubSpot webhooks accepted and stored once, a
redelivery deduplicated, forged ones 401; and the low-level ``verify``."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

import apex_connect
from apex_connect import BadSignatureError, Store, WebhookExpiredError
from apex_connect.fastapi import webhook_router

from conftest import run

FRONT_SECRET = "front-app-secret-for-tests"
HUBSPOT_SECRET = "hubspot-client-secret-for-tests"


def front_headers(body: bytes, secret: str = FRONT_SECRET, ts_ms: int | None = None) -> dict[str, str]:
    """Signed as Front signs application webhooks:
    base64(HMAC-SHA256(app_secret, "<timestamp>:" + raw body))."""
    ts = str(ts_ms if ts_ms is not None else int(time.time() * 1000))
    mac = hmac.new(secret.encode(), ts.encode() + b":" + body, hashlib.sha256).digest()
    return {
        "content-type": "application/json",
        "x-front-request-timestamp": ts,
        "x-front-signature": base64.b64encode(mac).decode(),
    }


def hubspot_headers(url: str, body: bytes, secret: str = HUBSPOT_SECRET) -> dict[str, str]:
    """Signed as HubSpot signs v3: base64(HMAC-SHA256(secret, method + url + body + ts))."""
    ts = str(int(time.time() * 1000))
    mac = hmac.new(secret.encode(), b"POST" + url.encode() + body + ts.encode(), hashlib.sha256).digest()
    return {
        "content-type": "application/json",
        "x-hubspot-signature-v3": base64.b64encode(mac).decode(),
        "x-hubspot-request-timestamp": ts,
    }


def front_body(event_id: str) -> bytes:
    return json.dumps(
        {
            "type": "inbound_received",
            "authorization": {"id": "cmp_acme"},
            "payload": {
                "id": event_id,
                "type": "inbound",
                "emitted_at": 1700000000.0,
                "conversation": {"id": "cnv_1"},
            },
        }
    ).encode()


@pytest.fixture()
def app_and_store(tmp_path: Path) -> tuple[TestClient, Store]:
    async def setup() -> Store:
        store = await Store.open(str(tmp_path / "state.db"))
        await store.configure(
            "front-main",
            "frontapp",
            secrets={"api_token": "front-api-token", "webhook_secret": FRONT_SECRET},
        )
        await store.configure(
            "hub-main",
            "hubspot",
            secrets={"private_app_token": "pat-na1-token", "client_secret": HUBSPOT_SECRET},
        )
        return store

    store = run(setup())
    app = FastAPI()
    app.include_router(webhook_router(store))
    return TestClient(app), store


def pending(store: Store) -> int:
    async def counts() -> int:
        return (await store.inbox_counts()).pending

    return run(counts())


def test_front_signed_accepted_once_redelivery_deduplicated_forged_401(
    app_and_store: tuple[TestClient, Store],
) -> None:
    client, store = app_and_store
    url = "/webhooks/frontapp/front-main"
    body = front_body("evt_1001")

    r = client.post(url, content=body, headers=front_headers(body))
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "accepted"}
    assert pending(store) == 1

    # Front redelivers the same event (new timestamp, new signature): 200, not stored again.
    r = client.post(url, content=body, headers=front_headers(body))
    assert r.status_code == 200
    assert r.json() == {"status": "duplicate"}
    assert pending(store) == 1

    # Forged: signed with another secret.
    forged = front_body("evt_1002")
    r = client.post(url, content=forged, headers=front_headers(forged, secret="not-the-secret"))
    assert r.status_code == 401
    assert r.json() == {"status": "bad_signature"}

    # One byte changed after signing.
    headers = front_headers(forged)
    r = client.post(url, content=forged.replace(b"evt_1002", b"evt_1003"), headers=headers)
    assert r.status_code == 401

    # Expired: signed ten minutes ago.
    old = front_headers(forged, ts_ms=int(time.time() * 1000) - 600_000)
    r = client.post(url, content=forged, headers=old)
    assert r.status_code == 401
    assert r.json() == {"status": "expired"}

    # No signature at all.
    r = client.post(url, content=forged, headers={"content-type": "application/json"})
    assert r.status_code == 401
    assert pending(store) == 1

    # Unknown connection, or a connection of another platform.
    r = client.post("/webhooks/frontapp/nope", content=body, headers=front_headers(body))
    assert r.status_code == 404
    r = client.post("/webhooks/hubspot/front-main", content=body, headers=front_headers(body))
    assert r.status_code == 404


def test_front_challenge_answered(app_and_store: tuple[TestClient, Store]) -> None:
    client, store = app_and_store
    body = b'{"type":"sync","authorization":{"id":"cmp_acme"}}'
    headers = front_headers(body) | {"x-front-challenge": "abc123"}
    r = client.post("/webhooks/frontapp/front-main", content=body, headers=headers)
    assert r.status_code == 200
    assert r.json() == {"challenge": "abc123"}
    assert pending(store) == 0


def test_hubspot_v3_signed_accepted_each_event_once(app_and_store: tuple[TestClient, Store]) -> None:
    client, store = app_and_store
    path = "/webhooks/hubspot/hub-main"
    url = "http://testserver" + path
    events = [
        {"eventId": 501, "subscriptionType": "contact.propertyChange", "objectId": 11,
         "occurredAt": 1700000000000, "propertyName": "email", "propertyValue": "a@example.com"},
        {"eventId": 502, "subscriptionType": "contact.creation", "objectId": 12,
         "occurredAt": 1700000000001},
    ]
    body = json.dumps(events).encode()
    r = client.post(path, content=body, headers=hubspot_headers(url, body))
    assert r.status_code == 200, r.text
    assert r.json() == {"status": "accepted"}
    assert pending(store) == 2

    # A retry batching one of them again with a new one: only the new one is stored.
    body2 = json.dumps([events[1], {"eventId": 503, "subscriptionType": "contact.deletion",
                                    "objectId": 13, "occurredAt": 1700000000002}]).encode()
    r = client.post(path, content=body2, headers=hubspot_headers(url, body2))
    assert r.status_code == 200
    assert pending(store) == 3

    # Redelivered as is.
    r = client.post(path, content=body2, headers=hubspot_headers(url, body2))
    assert r.json() == {"status": "duplicate"}
    assert pending(store) == 3

    # Forged.
    r = client.post(path, content=body, headers=hubspot_headers(url, body, secret="wrong"))
    assert r.status_code == 401
    # Signed for another URL.
    r = client.post(path, content=body, headers=hubspot_headers("http://evil.example" + path, body))
    assert r.status_code == 401
    assert pending(store) == 3


def test_low_level_verify() -> None:
    body = front_body("evt_9")
    v = apex_connect.verify(
        "frontapp",
        front_headers(body),
        body,
        "https://api.example.com/webhooks/frontapp/x",
        secrets={"webhook_secret": FRONT_SECRET},
    )
    assert v.event_id == "evt_9"
    assert v.timestamp_ms is not None

    with pytest.raises(BadSignatureError) as e:
        apex_connect.verify("frontapp", front_headers(body, secret="x"), body, "https://a/b",
                            secrets={"webhook_secret": FRONT_SECRET})
    assert e.value.status == 401
    assert e.value.reason == "bad_signature"
    assert str(e.value) == "webhook signature does not match"

    old = front_headers(body, ts_ms=int(time.time() * 1000) - 600_000)
    with pytest.raises(WebhookExpiredError) as e2:
        apex_connect.verify("frontapp", old, body, "https://a/b", secrets={"webhook_secret": FRONT_SECRET})
    assert e2.value.status == 401
    assert "outside the 300s tolerance" in str(e2.value)

    url = "https://api.example.com/webhooks/hubspot/h"
    hb = b'[{"eventId": 1, "subscriptionType": "contact.creation", "objectId": 5}]'
    v2 = apex_connect.verify("hubspot", hubspot_headers(url, hb), hb, url,
                             secrets={"client_secret": HUBSPOT_SECRET})
    assert v2.secret_index == 0


def test_receiver_verifies_as_the_simulator_signs(tmp_path: Path) -> None:
    """The Front simulator's own signing (the Rust verifier's `sign`) passes the router."""
    from apex_connect.testing import FrontSimulator

    async def setup() -> tuple[Store, FrontSimulator]:
        sim = await FrontSimulator.start(conversations=5, messages_per_conversation=1)
        store = await Store.open(str(tmp_path / "s.db"))
        await store.configure("f", "frontapp", base_url=sim.base_url,
                              secrets={"api_token": sim.api_token(), "webhook_secret": sim.webhook_secret()})
        return store, sim

    store, sim = run(setup())
    app = FastAPI()
    app.include_router(webhook_router(store))
    client = TestClient(app)
    sim.add_message(sim.conversation_id(1), "hello", True)
    event = sim.latest_event_id()
    assert event is not None
    body = sim.webhook_body(event)
    r = client.post("/webhooks/frontapp/f", content=body, headers=sim.sign_webhook(body))
    assert r.status_code == 200 and r.json() == {"status": "accepted"}
    # The inbox worker fetches what the event names and writes it to the records table.
    async def process() -> tuple[int, int]:
        processed = await store.process_inbox()
        done = (await store.inbox_counts()).done
        await sim.shutdown()
        return processed, done

    assert run(process()) == (1, 1)
