"""Testing helpers: the platform simulators of the Rust crates, started from Python.

    sim = await FrontSimulator.start(conversations=50)
    await store.configure("front", "frontapp", base_url=sim.base_url,
                          secrets={"api_token": sim.api_token()})
"""

from __future__ import annotations

from ._native import FrontSimulator

__all__ = ["FrontSimulator"]
