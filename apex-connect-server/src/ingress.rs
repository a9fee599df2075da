//! `POST /webhooks/{platform}/{connection}`: limit -> verify -> durable append -> answer.

use apex_connect_core::ConnectionId;
use apex_connect_core::store::{AppendOutcome, InboxEvent};
use apex_connect_core::webhook::{WebhookError, WebhookRequest, unix_ms};
use axum::Router;
use axum::body::Body;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode, Uri, header};

use crate::inbox::headers_json;
use crate::metrics::Outcome;
use crate::state::ServerState;

/// The webhook receiver, to mount in a host's app or serve as is:
/// `POST /webhooks/{platform}/{connection}`.
///
/// # Behavior
/// - A body over the state's limit (1 MiB by default): `413`, nothing stored.
/// - An unknown connection, or one of another platform, or one without webhooks: `404`.
/// - The connection's [`apex_connect_core::WebhookVerifier`] (from the connector's
///   [`apex_connect_core::Webhooks`]) checks the raw bytes at the state's clock: a missing or
///   wrong signature `401` (`bad_signature`), a timestamp outside the tolerance `401`
///   (`expired`), a malformed header or body `400`; nothing is stored. A body
///   [`apex_connect_core::Webhooks::events`] finds malformed is `400` too, nothing stored.
/// - A handshake (Front's `x-front-challenge`): the verifier's reply, nothing stored.
/// - Otherwise each event of the delivery, as the connector's `Webhooks::events` splits and
///   keys it (HubSpot: one per array element, by `eventId`), is appended durably to the inbox,
///   unique on its event id, and only then answered `200`; a redelivered id is answered `200`
///   and dropped. A store failure is `503`, so the platform retries.
/// - Each outcome is counted ([`crate::Metrics`]).
pub fn webhook_router(state: ServerState) -> Router {
    let limit = state.inner.body_limit;
    Router::new()
        .route("/webhooks/{platform}/{connection}", post(receive))
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            time_to_ack,
        ))
        .with_state(state)
}

/// Records each answer's time from the request's arrival (the body read included) in the
/// webhook time-to-ack histogram.
async fn time_to_ack(
    State(state): State<ServerState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    state.metrics().webhook_ack(started.elapsed());
    response
}

fn answer(
    state: &ServerState,
    outcome: Outcome,
    status: StatusCode,
    msg: &'static str,
) -> Response {
    state.metrics().webhook(outcome);
    // Static bodies: no allocation per answer.
    let body: &'static str = match msg {
        "accepted" => r#"{"status":"accepted"}"#,
        "duplicate" => r#"{"status":"duplicate"}"#,
        "too_large" => r#"{"status":"too_large"}"#,
        "malformed" => r#"{"status":"malformed"}"#,
        "unknown_connection" => r#"{"status":"unknown_connection"}"#,
        "expired" => r#"{"status":"expired"}"#,
        "bad_signature" => r#"{"status":"bad_signature"}"#,
        _ => r#"{"status":"unavailable"}"#,
    };
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// The answer to a refused webhook: `401 expired`, `400 malformed` or `401 bad_signature`.
fn refused(state: &ServerState, error: &WebhookError) -> Response {
    match error {
        WebhookError::OutsideTolerance { .. } => {
            answer(state, Outcome::Expired, StatusCode::UNAUTHORIZED, "expired")
        }
        WebhookError::Malformed(_) => answer(
            state,
            Outcome::Malformed,
            StatusCode::BAD_REQUEST,
            "malformed",
        ),
        _ => answer(
            state,
            Outcome::BadSignature,
            StatusCode::UNAUTHORIZED,
            "bad_signature",
        ),
    }
}

async fn receive(
    State(state): State<ServerState>,
    Path((platform, connection)): Path<(String, String)>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let body = match body {
        Ok(b) => b,
        Err(rejection) if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return answer(
                &state,
                Outcome::TooLarge,
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
            );
        }
        Err(_) => {
            return answer(
                &state,
                Outcome::Malformed,
                StatusCode::BAD_REQUEST,
                "malformed",
            );
        }
    };
    let id = ConnectionId::from(connection);
    let Some(handle) = state.connection(&id).filter(|h| h.platform == platform) else {
        return answer(
            &state,
            Outcome::UnknownConnection,
            StatusCode::NOT_FOUND,
            "unknown_connection",
        );
    };
    let Some(hooks) = handle.webhooks() else {
        return answer(
            &state,
            Outcome::UnknownConnection,
            StatusCode::NOT_FOUND,
            "unknown_connection",
        );
    };
    let now = state.clock().now();
    let request = WebhookRequest::new(&method, &uri, &headers, &body);
    let verified = match hooks.verifier().verify(&request, now) {
        Ok(v) => v,
        Err(e) => return refused(&state, &e),
    };
    if let Some(reply) = verified.reply {
        state.metrics().webhook(Outcome::Handshake);
        return Response::builder()
            .status(StatusCode::from_u16(reply.status).unwrap_or(StatusCode::OK))
            .header(header::CONTENT_TYPE, reply.content_type)
            .body(Body::from(reply.body))
            .unwrap_or_else(|_| StatusCode::OK.into_response());
    }
    let received_at = unix_ms(now);
    let stored_headers = headers_json(&headers, &verified);
    let events = match hooks.events(&verified, &body) {
        Ok(events) => events,
        Err(e) => return refused(&state, &e),
    };
    let events: Vec<InboxEvent> = events
        .into_iter()
        .map(|event| {
            InboxEvent::new(
                handle.platform.clone(),
                id.clone(),
                event.id,
                received_at,
                event.body,
            )
            .with_headers(stored_headers.clone())
        })
        .collect();
    match state.inner.appender.append(events).await {
        Ok(outcomes) => {
            if outcomes
                .iter()
                .any(|o| matches!(o, AppendOutcome::Inserted(_)))
            {
                state.wake().notify_one();
                answer(&state, Outcome::Accepted, StatusCode::OK, "accepted")
            } else {
                answer(&state, Outcome::Duplicate, StatusCode::OK, "duplicate")
            }
        }
        Err(e) => {
            tracing::warn!(connection = %id, error = %e, "webhook could not be stored");
            answer(
                &state,
                Outcome::StoreError,
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
            )
        }
    }
}
