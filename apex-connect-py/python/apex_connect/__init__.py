"""apex-connect for Python: the Rust connectors (FrontApp, HubSpot, ...) with asyncio APIs.

Every call goes to the Rust crates (the platform descriptors, core's sync engine and token
manager, the server's webhook receiver); this package only adapts them to Python idioms.

    store = await Store.open("state.db", key=os.environ["APEX_CONNECT_KEY"])
    await store.configure("front", "frontapp", secrets={"api_token": ...})
    report = await store.sync("front", "conversations")
"""

from __future__ import annotations

from ._native import (
    ApexError,
    AuthorizationRequest,
    Background,
    BadSignatureError,
    ConfigError,
    ConflictError,
    EntityGraph,
    InboxCounts,
    InvalidInputError,
    InvalidResponseError,
    MalformedWebhookError,
    NetworkError,
    NotFoundError,
    OperationCancelledError,
    PermissionDeniedError,
    RateLimitedError,
    RecordStream,
    StorageError,
    Store,
    SyncRecord,
    SyncResult,
    UnauthenticatedError,
    UnexpectedError,
    UnsupportedError,
    UpstreamError,
    Verified,
    WebhookExpiredError,
    WebhookResponse,
    WebhookVerificationError,
    platforms,
    verify,
)

__all__ = [
    "ApexError",
    "AuthorizationRequest",
    "Background",
    "BadSignatureError",
    "ConfigError",
    "ConflictError",
    "EntityGraph",
    "InboxCounts",
    "InvalidInputError",
    "InvalidResponseError",
    "MalformedWebhookError",
    "NetworkError",
    "NotFoundError",
    "OperationCancelledError",
    "PermissionDeniedError",
    "RateLimitedError",
    "RecordStream",
    "StorageError",
    "Store",
    "SyncRecord",
    "SyncResult",
    "UnauthenticatedError",
    "UnexpectedError",
    "UnsupportedError",
    "UpstreamError",
    "Verified",
    "WebhookExpiredError",
    "WebhookResponse",
    "WebhookVerificationError",
    "platforms",
    "verify",
]
