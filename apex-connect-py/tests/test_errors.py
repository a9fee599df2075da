"""Typed exceptions with the Rust messages; no secret in any repr."""

from __future__ import annotations

from pathlib import Path

import pytest

import apex_connect
from apex_connect import (
    ApexError,
    ConfigError,
    NetworkError,
    NotFoundError,
    Store,
    UnauthenticatedError,
)
from apex_connect.testing import FrontSimulator

from conftest import run

SECRET = "sk-very-secret-value-123"


def test_config_errors_are_typed(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await Store.open(str(tmp_path / "e.db"))
        with pytest.raises(ConfigError) as e:
            await store.configure("x", "myspace")
        assert isinstance(e.value, ApexError)
        assert e.value.kind == "config"
        assert e.value.message == "no connector for this platform in this build"
        assert e.value.context["platform"] == "myspace"
        assert str(e.value).startswith("no connector for this platform in this build")
        # A misspelt setting fails at configure time.
        with pytest.raises(ConfigError) as e2:
            await store.configure("f", "frontapp", settings={"page_sise": 10},
                                  secrets={"api_token": SECRET})
        assert "invalid connection setting" in str(e2.value)
        assert SECRET not in str(e2.value)
        # A required secret is missing.
        with pytest.raises(ConfigError):
            await store.configure("f", "frontapp")
        # Not configured.
        with pytest.raises(NotFoundError):
            await store.sync("nope", "tags")
        with pytest.raises(ConfigError):
            await Store.open("mysql://db/x")
        # PostgreSQL: a password in the URL is refused before connecting, and not echoed.
        with pytest.raises(ConfigError) as e3:
            await Store.open("postgres://apex:pw-in-url@127.0.0.1:1/apex")
        assert "pw-in-url" not in str(e3.value) and "pw-in-url" not in repr(e3.value)

    run(scenario())


def test_network_and_auth_errors(tmp_path: Path) -> None:
    async def scenario() -> None:
        store = await Store.open(str(tmp_path / "n.db"))
        await store.configure("dead", "frontapp", base_url="http://127.0.0.1:9",
                              secrets={"api_token": SECRET})
        with pytest.raises(NetworkError) as e:
            await store.sync("dead", "tags")
        assert e.value.temporary
        assert SECRET not in str(e.value) and SECRET not in repr(e.value)

        sim = await FrontSimulator.start(conversations=1)
        await store.configure("bad", "frontapp", base_url=sim.base_url,
                              secrets={"api_token": SECRET})
        with pytest.raises(UnauthenticatedError) as e2:
            await store.check("bad")
        assert SECRET not in str(e2.value)
        await sim.shutdown()

    run(scenario())


def test_no_secret_in_repr(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        sim = await FrontSimulator.start(conversations=1)
        store = await Store.open(str(tmp_path / "r.db"), key="AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=")
        await store.configure(
            "front", "frontapp", base_url=sim.base_url,
            settings={"client_id": sim.oauth_client_id, "auth_url": sim.authorize_url,
                      "token_url": sim.token_url},
            secrets={"client_secret": SECRET, "webhook_secret": SECRET},
        )
        request = store.authorize_url("front", sim.base_url + "/callback")
        reprs = [repr(store), repr(request), repr(sim)]
        assert request.state not in repr(request)
        assert request.state not in str(request)
        await sim.shutdown()
        return reprs

    for text in run(scenario()):
        assert SECRET not in text
        assert "front-sim-client-secret" not in text
        assert "front-sim-app-secret" not in text


def test_platforms_listed() -> None:
    names = {p["name"] for p in apex_connect.platforms()}
    assert {"frontapp", "hubspot"} <= names
    assert set(Store.platforms()) == names


def test_store_is_an_async_context_manager(tmp_path: Path) -> None:
    async def scenario() -> list[str]:
        async with await Store.open(str(tmp_path / "c.db")) as store:
            await store.configure("f", "frontapp", secrets={"api_token": SECRET})
            assert store.streams("f")
            with pytest.raises(ConfigError):
                await store.start_background(schedules=[("f", "tags", "not a cron")])
            with pytest.raises(ApexError) as e:
                await store.start_background(schedules=[("f", "tags", -1.0)])
            assert e.value.kind == "invalid_input"
            assert e.value.message == "every_seconds must be a positive number"
            assert str(e.value) == "every_seconds must be a positive number (invalid_input, permanent)"
            bg = await store.start_background(schedules=[("f", "tags", "0 0 * * * *")], workers=False)
            await bg.stop()
            return store.connections()

    assert run(scenario()) == ["f"]
