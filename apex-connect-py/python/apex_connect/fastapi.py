"""FastAPI integration: the webhook receiver as an ``APIRouter``.

    from apex_connect.fastapi import webhook_router
    app.include_router(webhook_router(store))      # POST /webhooks/{platform}/{connection}

Each request goes, raw body and headers untouched, through the server's own receiver
(``apex_connect::server::webhook_router``, called in process): the connection's verifier
checks the signature on the raw bytes, the events are appended to the store's durable inbox
(unique on their event id: a redelivery is answered 200 and dropped), and the answer is sent at
once (200 ``{"status":"accepted"}`` / ``"duplicate"``; 401 forged or expired; 400 malformed;
404 unknown connection; 413 too large; 503 store unavailable). Processing happens later, in
the inbox workers (``await store.process_inbox()``, or a separate ``apex-connect serve``).
"""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, Request, Response

from ._native import Store

__all__ = ["webhook_router"]


def webhook_router(store: Store, *, public_base_url: Optional[str] = None) -> APIRouter:
    """An ``APIRouter`` with ``POST /webhooks/{platform}/{connection}`` over ``store``'s
    configured connections.

    Mount it at the application's root (``app.include_router(webhook_router(store))``): the
    receiver routes on the path ``/webhooks/{platform}/{connection}``. ``public_base_url``
    (``https://api.example.com``) replaces the scheme and host the application sees, for
    platforms that sign the URL they called (HubSpot v3) when a proxy sits in front.
    """
    router = APIRouter()

    @router.post("/webhooks/{platform}/{connection}", include_in_schema=False)
    async def receive(platform: str, connection: str, request: Request) -> Response:
        body = await request.body()
        url = str(request.url)
        if public_base_url is not None:
            query = f"?{request.url.query}" if request.url.query else ""
            url = public_base_url.rstrip("/") + request.url.path + query
        headers = {k: v for k, v in request.headers.items()}
        answer = await store.receive_webhook("POST", url, headers, body)
        return Response(
            content=answer.body,
            status_code=answer.status,
            media_type=answer.content_type,
        )

    return router
