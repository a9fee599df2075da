"""Every platform of the Rust crates is compiled into the wheel and configurable from Python."""

from __future__ import annotations

from pathlib import Path

from apex_connect import Store

from conftest import run


def test_every_platform_is_compiled_in_and_configurable(tmp_path: Path) -> None:
    assert {"frontapp", "hubspot", "salesforce", "mixpanel", "ga4"} <= set(Store.platforms())

    async def scenario() -> list[str]:
        store = await Store.open(str(tmp_path / "platforms.db"))
        # A Salesforce org with a session id (no network call: configuring only builds).
        await store.configure(
            "sf",
            "salesforce",
            settings={
                "instance_url": "https://example.my.salesforce.com",
                "objects": ["Account", "Contact"],
            },
            secrets={"access_token": "00Dx-session-secret"},
        )
        streams = store.streams("sf")
        assert "00Dx-session-secret" not in repr(store)
        await store.close()
        return streams

    streams = run(scenario())
    assert {"Account", "Contact"} <= set(streams)
