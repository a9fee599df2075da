//! The simulator's HTTP routes, answering as Front's Core API does.

// Parameter helpers return the ready error `Response`; boxing it would buy nothing in a
// simulator and cost a line in every handler.
#![allow(clippy::result_large_err)]

use std::sync::Arc;
use std::sync::atomic::Ordering;

use apex_connect_testkit::sim::paging::page_token;
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use serde_json::{Map, Value, json};

use super::SimState;
use super::data::{Data, parse_id};
use super::render::Out;

type St = State<Arc<SimState>>;

/// Front's error body: `{"_error": {"status", "title", "message", "details"}}`.
pub(crate) fn front_error(status: StatusCode, title: &str, message: &str) -> Response {
    (
        status,
        axum::Json(json!({"_error": {"status": status.as_u16(), "title": title, "message": message, "details": []}})),
    )
        .into_response()
}

fn not_found(what: &str) -> Response {
    front_error(
        StatusCode::NOT_FOUND,
        "Not found",
        &format!("Unknown {what}"),
    )
}

fn bad_request(message: &str) -> Response {
    front_error(StatusCode::BAD_REQUEST, "Bad request", message)
}

pub(crate) fn router(state: Arc<SimState>) -> Router {
    Router::new()
        .route("/me", get(me))
        .route("/conversations", get(list_conversations))
        .route("/conversations/{id}", get(get_conversation))
        .route("/conversations/{id}/messages", get(list_messages))
        .route(
            "/conversations/{id}/comments",
            get(list_comments).post(post_comment),
        )
        .route(
            "/conversations/{id}/tags",
            axum::routing::post(post_tags).delete(delete_tags),
        )
        .route("/messages/{id}", get(get_message))
        .route("/comments/{id}", get(get_comment))
        .route("/contacts", get(list_contacts))
        .route("/contacts/custom_fields", get(contact_custom_fields))
        .route(
            "/conversations/custom_fields",
            get(conversation_custom_fields),
        )
        .route("/teammates/custom_fields", get(no_custom_fields))
        .route("/inboxes/custom_fields", get(no_custom_fields))
        .route("/contacts/{id}", get(get_contact).patch(patch_contact))
        .route("/tags", get(list_tags))
        .route("/tags/{id}", get(get_tag))
        .route("/teammates", get(list_teammates))
        .route("/inboxes", get(list_inboxes))
        .route("/events", get(list_events))
        .fallback(|| async { not_found("route") })
        .layer(from_fn_with_state(state.clone(), auth))
        .with_state(state)
}

/// Bearer-token check: the API token, or a live OAuth access token.
async fn auth(State(state): St, req: Request, next: Next) -> Response {
    let pending = state.unauthorized.load(Ordering::SeqCst);
    if pending > 0
        && state
            .unauthorized
            .compare_exchange(pending, pending - 1, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok()
    {
        return front_error(
            StatusCode::UNAUTHORIZED,
            "Unauthenticated",
            "Token was revoked",
        );
    }
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok = match token {
        Some(t) => t == state.api_token || state.oauth.validate_access_token(t),
        None => false,
    };
    if !ok {
        return front_error(
            StatusCode::UNAUTHORIZED,
            "Unauthenticated",
            "Invalid or expired token",
        );
    }
    next.run(req).await
}

/// Query pairs in order (repeated keys kept).
fn pairs(uri: &Uri) -> Vec<(String, String)> {
    url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn param<'a>(q: &'a [(String, String)], name: &str) -> Option<&'a str> {
    q.iter()
        .rev()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn limit(q: &[(String, String)], default: usize, max: usize) -> Result<usize, Response> {
    match param(q, "limit") {
        None => Ok(default.min(max)),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if n > 0 && n <= max => Ok(n),
            _ => Err(bad_request(&format!(
                "limit must be an integer between 1 and {max}"
            ))),
        },
    }
}

fn secs(q: &[(String, String)], name: &str) -> Result<Option<f64>, Response> {
    match param(q, name) {
        None => Ok(None),
        Some(v) => v
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite())
            .map(Some)
            .ok_or_else(|| bad_request(&format!("{name} must be a timestamp in seconds"))),
    }
}

fn token(q: &[(String, String)]) -> Result<Option<u64>, Response> {
    match param(q, "page_token") {
        None => Ok(None),
        Some(t) => page_token::decode::<u64>(t)
            .map(Some)
            .map_err(|_| bad_request("page_token is invalid")),
    }
}

/// The next link: the same path and parameters with `page_token` replaced.
fn next_link(data: &Data, path: &str, q: &[(String, String)], position: u64) -> String {
    let mut ser = url::form_urlencoded::Serializer::new(String::new());
    for (k, v) in q.iter().filter(|(k, _)| k != "page_token") {
        ser.append_pair(k, v);
    }
    ser.append_pair("page_token", &page_token::encode(&position));
    format!("{}{path}?{}", data.base, ser.finish())
}

fn list(data: &Data, path: &str, results: Vec<Value>, next: Option<String>) -> Response {
    axum::Json(json!({
        "_pagination": {"next": next},
        "_links": {"self": format!("{}{path}", data.base)},
        "_results": results,
    }))
    .into_response()
}

/// A list answer written by the renderer into one buffer of about `capacity` bytes;
/// `next: None` leaves `_pagination` out (lists Front does not page).
fn render_list(
    data: &Data,
    path: &str,
    next: Option<Option<&str>>,
    capacity: usize,
    items: impl FnOnce(&mut Out<'_>),
) -> Response {
    let mut buf = Vec::with_capacity(capacity.min(1 << 20) + 512);
    Out(&mut buf).list(&data.base, path, next, items);
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        buf,
    )
        .into_response()
}

async fn me(State(s): St) -> Response {
    let d = s.data();
    axum::Json(json!({
        "_links": {"self": format!("{}/me", d.base)},
        "name": d.shape.company,
        "id": format!("cmp_{}", d.shape.company),
    }))
    .into_response()
}

async fn list_conversations(State(s): St, uri: Uri) -> Response {
    let q = pairs(&uri);
    let d = s.data();
    let (limit, start) = match (limit(&q, 50, s.max_page_size), token(&q)) {
        (Ok(l), Ok(t)) => (l, t.unwrap_or(0)),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let o = s.overlay();
    let touched = o.touched_desc();
    let generated = d.shape.conversations;
    let raw = o.raw("conversations");
    let n = generated + raw.len() as u64;
    let end = start.saturating_add(limit as u64).min(n);
    let next = (end < n).then(|| next_link(d, "/conversations", &q, end));
    render_list(
        d,
        "/conversations",
        Some(next.as_deref()),
        2_600 * limit,
        |out| {
            let mut first = true;
            for p in start..end {
                if p >= generated {
                    if let Some(v) = raw.get((p - generated) as usize) {
                        out.comma(&mut first);
                        out.value(v);
                    }
                } else if let Some(c) = d.conversation_at(p, &touched) {
                    out.comma(&mut first);
                    d.write_conversation(out, c, &o);
                }
            }
        },
    )
}

async fn get_conversation(State(s): St, Path(id): Path<String>) -> Response {
    if let Some(v) = s.raw_object("conversations", "cnv", &id) {
        return axum::Json(v).into_response();
    }
    match s.conversation_index(&id) {
        Some(c) => axum::Json(s.data().conversation(c, &s.overlay())).into_response(),
        None => not_found("conversation"),
    }
}

async fn list_messages(State(s): St, Path(id): Path<String>, uri: Uri) -> Response {
    let Some(c) = s.conversation_index(&id) else {
        return not_found("conversation");
    };
    let q = pairs(&uri);
    let d = s.data();
    let (limit, start) = match (limit(&q, 50, s.max_page_size), token(&q)) {
        (Ok(l), Ok(t)) => (l, t.unwrap_or(0)),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let o = s.overlay();
    let mut ids = d.message_ids_desc(c, &o);
    if param(&q, "sort_order") == Some("asc") {
        ids.reverse();
    }
    let n = ids.len() as u64;
    let end = start.saturating_add(limit as u64).min(n);
    let path = format!("/conversations/{id}/messages");
    let next = (end < n).then(|| next_link(d, &path, &q, end));
    let count = end.saturating_sub(start) as usize;
    render_list(d, &path, Some(next.as_deref()), 2_600 * count, |out| {
        let mut first = true;
        for i in ids.iter().skip(start as usize).take(count) {
            let mark = out.0.len();
            let comma = !first;
            out.comma(&mut first);
            if !d.write_message(out, *i, &o) {
                // Not rendered: take the separator back.
                out.0.truncate(mark);
                first = !comma;
            }
        }
    })
}

async fn list_comments(State(s): St, Path(id): Path<String>) -> Response {
    let Some(c) = s.conversation_index(&id) else {
        return not_found("conversation");
    };
    let d = s.data();
    let o = s.overlay();
    let ids = d.comment_ids(c, &o);
    // Front's comment list has `_links` and `_results` only.
    let path = format!("/conversations/{id}/comments");
    render_list(d, &path, None, 1_500 * ids.len(), |out| {
        let mut first = true;
        for i in ids {
            let mark = out.0.len();
            let comma = !first;
            out.comma(&mut first);
            if !d.write_comment(out, i, &o) {
                out.0.truncate(mark);
                first = !comma;
            }
        }
    })
}

fn json_body(body: &Bytes) -> Result<Map<String, Value>, Response> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(bad_request("body must be a JSON object")),
    }
}

async fn post_comment(State(s): St, Path(id): Path<String>, body: Bytes) -> Response {
    let Some(c) = s.conversation_index(&id) else {
        return not_found("conversation");
    };
    let m = match json_body(&body) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let Some(text) = m
        .get("body")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty())
    else {
        return bad_request("body is required");
    };
    let author = match m.get("author_id").and_then(Value::as_str) {
        None => 0,
        Some(a) => match parse_id(a, "tea").filter(|t| *t < s.data().shape.teammates) {
            Some(t) => t,
            None => return not_found("teammate"),
        },
    };
    let cid = s.add_comment(c, text, author);
    let Some(n) = parse_id(&cid, "com") else {
        return not_found("comment");
    };
    let comment = s.data().comment(n, &s.overlay());
    (
        StatusCode::CREATED,
        axum::Json(comment.unwrap_or(Value::Null)),
    )
        .into_response()
}

async fn tags_change(s: Arc<SimState>, id: String, body: Bytes, add: bool) -> Response {
    let Some(c) = s.conversation_index(&id) else {
        return not_found("conversation");
    };
    let m = match json_body(&body) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let Some(ids) = m
        .get("tag_ids")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
    else {
        return bad_request("tag_ids must be a non-empty array");
    };
    let mut tags = Vec::new();
    for t in ids {
        match t.as_str().and_then(|t| s.tag_index(t)) {
            Some(i) => tags.push(i),
            None => return front_error(StatusCode::NOT_FOUND, "Not found", "Unknown tag"),
        }
    }
    s.set_tags(c, &tags, add);
    StatusCode::NO_CONTENT.into_response()
}

async fn post_tags(State(s): St, Path(id): Path<String>, body: Bytes) -> Response {
    tags_change(s, id, body, true).await
}

async fn delete_tags(State(s): St, Path(id): Path<String>, body: Bytes) -> Response {
    tags_change(s, id, body, false).await
}

async fn get_message(State(s): St, Path(id): Path<String>) -> Response {
    let d = s.data();
    match parse_id(&id, "msg").and_then(|i| d.message(i, &s.overlay())) {
        Some(m) => axum::Json(m).into_response(),
        None => not_found("message"),
    }
}

async fn get_comment(State(s): St, Path(id): Path<String>) -> Response {
    let d = s.data();
    match parse_id(&id, "com").and_then(|i| d.comment(i, &s.overlay())) {
        Some(m) => axum::Json(m).into_response(),
        None => not_found("comment"),
    }
}

async fn list_contacts(State(s): St, uri: Uri) -> Response {
    let q = pairs(&uri);
    let d = s.data();
    let (limit, tok, after) = match (
        limit(&q, 50, s.max_page_size),
        token(&q),
        secs(&q, "q[updated_after]"),
    ) {
        (Ok(l), Ok(t), Ok(a)) => (l, t, a),
        (Err(r), _, _) | (_, Err(r), _) | (_, _, Err(r)) => return r,
    };
    let o = s.overlay();
    let changed = o.contacts_asc();
    let generated = d.shape.contacts;
    let raw = o.raw("contacts");
    let n = generated + raw.len() as u64;
    let time = |p: u64| -> f64 {
        if p >= generated {
            return raw
                .get((p - generated) as usize)
                .and_then(|v| v.get("updated_at"))
                .and_then(Value::as_f64)
                .unwrap_or(f64::INFINITY);
        }
        d.contact_at(p, &changed)
            .map(|k| {
                o.contacts
                    .get(&k)
                    .map(|c| c.updated_at)
                    .unwrap_or_else(|| d.contact_time(k))
            })
            .unwrap_or(f64::INFINITY)
    };
    let start = match (tok, after) {
        (Some(t), _) => t,
        (None, Some(a)) => {
            // Contacts are in ascending `updated_at` order: binary search the first newer one.
            let (mut lo, mut hi) = (0u64, n);
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if time(mid) <= a {
                    lo = mid + 1
                } else {
                    hi = mid
                }
            }
            lo
        }
        (None, None) => 0,
    };
    let end = start.saturating_add(limit as u64).min(n);
    let next = (end < n).then(|| next_link(d, "/contacts", &q, end));
    render_list(d, "/contacts", Some(next.as_deref()), 900 * limit, |out| {
        let mut first = true;
        for p in start..end {
            if p >= generated {
                if let Some(v) = raw.get((p - generated) as usize) {
                    out.comma(&mut first);
                    out.value(v);
                }
            } else if let Some(k) = d.contact_at(p, &changed) {
                out.comma(&mut first);
                d.write_contact(out, k, &o);
            }
        }
    })
}

async fn get_contact(State(s): St, Path(id): Path<String>) -> Response {
    if let Some(v) = s.raw_object("contacts", "crd", &id) {
        return axum::Json(v).into_response();
    }
    match s.contact_index(&id) {
        Some(k) => axum::Json(s.data().contact(k, &s.overlay())).into_response(),
        None => not_found("contact"),
    }
}

async fn patch_contact(State(s): St, Path(id): Path<String>, body: Bytes) -> Response {
    let Some(k) = s.contact_index(&id) else {
        return not_found("contact");
    };
    let m = match json_body(&body) {
        Ok(m) => m,
        Err(r) => return r,
    };
    let fields = match m.get("custom_fields") {
        None => Map::new(),
        Some(Value::Object(f)) => f.clone(),
        Some(_) => return bad_request("custom_fields must be an object"),
    };
    let name = match m.get("name") {
        None => None,
        Some(Value::String(n)) => Some(n.clone()),
        Some(_) => return bad_request("name must be a string"),
    };
    s.update_contact(k, fields, name);
    StatusCode::NO_CONTENT.into_response()
}

async fn list_tags(State(s): St, uri: Uri) -> Response {
    let q = pairs(&uri);
    let d = s.data();
    let (limit, start) = match (limit(&q, 50, s.max_page_size), token(&q)) {
        (Ok(l), Ok(t)) => (l, t.unwrap_or(0)),
        (Err(r), _) | (_, Err(r)) => return r,
    };
    let o = s.overlay();
    let raw = o.raw("tags");
    let generated = d.shape.tags;
    let n = generated + raw.len() as u64;
    let end = start.saturating_add(limit as u64).min(n);
    let results = (start..end)
        .filter_map(|t| {
            if t >= generated {
                raw.get((t - generated) as usize).cloned()
            } else {
                Some(d.tag(t))
            }
        })
        .collect();
    let next = (end < n).then(|| next_link(d, "/tags", &q, end));
    list(d, "/tags", results, next)
}

async fn get_tag(State(s): St, Path(id): Path<String>) -> Response {
    if let Some(v) = s.raw_object("tags", "tag", &id) {
        return axum::Json(v).into_response();
    }
    match s.tag_index(&id) {
        Some(t) => axum::Json(s.data().tag(t)).into_response(),
        None => not_found("tag"),
    }
}

async fn list_teammates(State(s): St) -> Response {
    let d = s.data();
    let mut results: Vec<Value> = (0..d.shape.teammates).map(|t| d.teammate(t)).collect();
    results.extend(s.overlay().raw("teammates").iter().cloned());
    axum::Json(json!({"_links": {"self": format!("{}/teammates", d.base)}, "_results": results}))
        .into_response()
}

async fn list_inboxes(State(s): St) -> Response {
    let d = s.data();
    let mut results: Vec<Value> = (0..d.shape.inboxes).map(|i| d.inbox(i)).collect();
    results.extend(s.overlay().raw("inboxes").iter().cloned());
    axum::Json(json!({"_links": {"self": format!("{}/inboxes", d.base)}, "_results": results}))
        .into_response()
}

/// A custom-fields list (`CustomFieldResponse` items) of `path`.
fn custom_fields(s: &SimState, path: &str, fields: &[(&str, &str, &[&str])]) -> Response {
    let d = s.data();
    let results: Vec<Value> = fields
        .iter()
        .enumerate()
        .map(|(i, (name, kind, values))| {
            json!({
                "_links": {"self": format!("{}/custom_fields/fld_{}", d.base, path.len() + i)},
                "id": format!("fld_{}", path.len() + i),
                "name": name,
                "description": format!("The {}", name.to_lowercase()),
                "type": kind,
                "values": values.iter().map(|v| json!({"value": v, "label": v})).collect::<Vec<_>>(),
            })
        })
        .collect();
    axum::Json(json!({"_links": {"self": format!("{}{path}", d.base)}, "_results": results}))
        .into_response()
}

/// The contacts' custom fields: the `Tier` every generated contact has.
async fn contact_custom_fields(State(s): St) -> Response {
    custom_fields(
        &s,
        "/contacts/custom_fields",
        &[("Tier", "enum", &["gold", "silver", "bronze"])],
    )
}

/// The conversations' custom fields: the `Priority` every generated conversation has.
async fn conversation_custom_fields(State(s): St) -> Response {
    custom_fields(
        &s,
        "/conversations/custom_fields",
        &[("Priority", "enum", &["low", "normal", "high"])],
    )
}

async fn no_custom_fields(State(s): St, uri: Uri) -> Response {
    custom_fields(&s, uri.path(), &[])
}

/// Most positions one `/events` request scans for matches (Front, too, may answer a short
/// page with a `next` link).
const EVENTS_SCAN: u64 = 5_000;

async fn list_events(State(s): St, uri: Uri, _headers: HeaderMap) -> Response {
    let q = pairs(&uri);
    let d = s.data();
    let (limit, tok, after, before) = match (
        limit(&q, 15, 15),
        token(&q),
        secs(&q, "q[after]"),
        secs(&q, "q[before]"),
    ) {
        (Ok(l), Ok(t), Ok(a), Ok(b)) => (l, t, a, b),
        (Err(r), _, _, _) | (_, Err(r), _, _) | (_, _, Err(r), _) | (_, _, _, Err(r)) => return r,
    };
    let types: Vec<&str> = q
        .iter()
        .filter(|(k, _)| k == "q[types]" || k == "q[types][]")
        .map(|(_, v)| v.as_str())
        .collect();
    let asc = param(&q, "sort_order") == Some("asc");
    let o = s.overlay();
    let n = d.events_len(&o);
    let g = d.shape.messages();
    let time = |p: u64| d.event_time(p, &o).unwrap_or(f64::INFINITY);
    // Positions count from the oldest event (asc) or from the newest (desc).
    let at = |pos: u64| if asc { pos } else { n - 1 - pos };
    let start = match tok {
        Some(t) => t,
        None if asc => match after {
            Some(a) => {
                let (mut lo, mut hi) = (0u64, n);
                while lo < hi {
                    let mid = lo + (hi - lo) / 2;
                    if time(mid) <= a {
                        lo = mid + 1
                    } else {
                        hi = mid
                    }
                }
                lo
            }
            None => 0,
        },
        None => 0,
    };
    let generated_match =
        types.is_empty() || types.contains(&"inbound") || types.contains(&"outbound");
    let mut results = Vec::new();
    let mut pos = start;
    let mut scanned = 0u64;
    let mut done = false;
    while results.len() < limit {
        if pos >= n {
            done = true;
            break;
        }
        if scanned >= EVENTS_SCAN {
            break;
        }
        let p = at(pos);
        if asc && !generated_match && p < g {
            pos = g;
            continue;
        }
        scanned += 1;
        pos += 1;
        let t = time(p);
        if asc && before.is_some_and(|b| t >= b) {
            done = true;
            break;
        }
        if !asc && after.is_some_and(|a| t <= a) {
            done = true;
            break;
        }
        if after.is_some_and(|a| t <= a) || before.is_some_and(|b| t >= b) {
            continue;
        }
        if !types.is_empty()
            && !d
                .event_kind(p, &o)
                .is_some_and(|k| types.contains(&k.as_str()))
        {
            continue;
        }
        if let Some(ev) = d.event(p, &o) {
            results.push(ev);
        }
    }
    if pos >= n {
        done = true;
    }
    let next = (!done).then(|| next_link(d, "/events", &q, pos));
    list(d, "/events", results, next)
}
