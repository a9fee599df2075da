//! The simulator's HTTP handlers: the login host (OAuth, with Salesforce's `id` and
//! `signature` added to token answers) and the instance (`/services/data/...`).

use std::io::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use apex_connect_testkit::oauth_server::OAuthServer;
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use serde_json::{Map, Value, json};

use super::data::{Out, gen_id, to_val};
use super::soql::{self, Val};
use super::{Job, QState, SimState};
use crate::models::{parse_datetime, sf_datetime};

type Cell = Arc<OnceLock<Arc<SimState>>>;

pub(crate) fn login_router(state: Arc<SimState>, oauth: OAuthServer) -> Router {
    Router::new()
        .nest("/services/oauth2", oauth.router())
        .layer(middleware::from_fn_with_state(state, add_identity))
}

/// Adds `id` (the identity URL) and `signature` (HMAC-SHA256 of `id` + `issued_at` keyed
/// with the client secret) to successful token answers, as Salesforce does.
async fn add_identity(State(st): State<Arc<SimState>>, req: Request, next: Next) -> Response {
    let is_token = req.uri().path().ends_with("/token");
    let resp = next.run(req).await;
    if !is_token || resp.status() != StatusCode::OK {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    let Ok(mut v) = serde_json::from_slice::<Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let login = st
        .login_url
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let id = format!("{login}/id/{}/{}", st.config.organization_id, st.api_user());
    let issued = v["issued_at"].as_str().unwrap_or("0").to_string();
    let secret = if st.config.bad_signature {
        "not-the-secret"
    } else {
        st.config.client_secret.as_str()
    };
    v["id"] = json!(id);
    v["signature"] = json!(crate::api::sign_identity(&id, &issued, secret));
    let out = serde_json::to_vec(&v).unwrap_or_default();
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(out))
}

pub(crate) fn instance_router(cell: Cell) -> Router {
    Router::new().fallback(dispatch).with_state(cell)
}

fn errors(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!([{"message": message, "errorCode": code}]).to_string(),
    )
        .into_response()
}

fn json_ok(v: &Value) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json;charset=UTF-8")],
        v.to_string(),
    )
        .into_response()
}

fn query_param(uri: &Uri, name: &str) -> Option<String> {
    url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

async fn dispatch(
    State(cell): State<Cell>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(st) = cell.get().cloned() else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    let path = uri.path().to_string();
    let Some(rest) = path.strip_prefix("/services/data") else {
        return errors(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The requested resource does not exist",
        );
    };
    let segs: Vec<&str> = rest.split('/').filter(|s| !s.is_empty()).collect();
    if segs.is_empty() {
        // The versions list: no authentication, not counted.
        let list: Vec<Value> = st
            .config
            .versions
            .iter()
            .map(|v| json!({"label": format!("v{v}"), "url": format!("/services/data/v{v}"), "version": v}))
            .collect();
        return json_ok(&Value::Array(list));
    }
    // Authentication.
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let ok = token == st.config.static_token || st.oauth.validate_access_token(token);
    if st.unauthorized_once.swap(false, Ordering::SeqCst) || !ok {
        return errors(
            StatusCode::UNAUTHORIZED,
            "INVALID_SESSION_ID",
            "Session expired or invalid",
        );
    }
    let used = st.api_used.fetch_add(1, Ordering::SeqCst) + 1;
    let max = st.api_max.load(Ordering::SeqCst);
    let mut resp = if used > max {
        errors(
            StatusCode::FORBIDDEN,
            "REQUEST_LIMIT_EXCEEDED",
            "TotalRequests Limit exceeded.",
        )
    } else {
        route(&st, &method, &uri, &headers, &body, &segs).await
    };
    if let Ok(v) = HeaderValue::from_str(&format!("api-usage={used}/{max}")) {
        resp.headers_mut().insert("sforce-limit-info", v);
    }
    resp
}

async fn route(
    st: &Arc<SimState>,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &Bytes,
    segs: &[&str],
) -> Response {
    let version = segs[0].strip_prefix('v').unwrap_or("");
    if !st.config.versions.iter().any(|v| v == version) {
        return errors(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The requested resource does not exist",
        );
    }
    let v = version.to_string();
    match (method.clone(), &segs[1..]) {
        (Method::GET, []) => json_ok(&json!({
            "sobjects": format!("/services/data/v{v}/sobjects"),
            "query": format!("/services/data/v{v}/query"),
            "limits": format!("/services/data/v{v}/limits"),
        })),
        (Method::GET, ["limits"]) => json_ok(&json!({"DailyApiRequests": {
            "Max": st.api_max.load(Ordering::SeqCst),
            "Remaining": st.api_max.load(Ordering::SeqCst).saturating_sub(st.api_used.load(Ordering::SeqCst)),
        }})),
        (Method::GET, ["sobjects", obj, "describe"]) => match st.spec(obj) {
            Some(o) => json_ok(&st.specs[o].describe()),
            None => errors(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "The requested resource does not exist",
            ),
        },
        (Method::GET, ["sobjects", obj, "deleted"]) => get_deleted(st, obj, uri),
        (Method::PATCH, ["sobjects", obj, id]) => patch_row(st, obj, id, headers, body),
        (Method::GET, [kind @ ("query" | "queryAll")]) => {
            let q = query_param(uri, "q").unwrap_or_default();
            start_query(st, &v, &q, *kind == "queryAll", headers)
        }
        (Method::GET, ["query" | "queryAll", loc]) => query_more(st, &v, loc, headers),
        (Method::POST, ["jobs", "query"]) => bulk_create(st, body),
        (Method::GET, ["jobs", "query", id]) => bulk_status(st, id),
        (Method::DELETE, ["jobs", "query", id]) => {
            st.jobs
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(*id);
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::GET, ["jobs", "query", id, "results"]) => bulk_results(st, &v, id, uri, headers),
        (Method::POST, ["composite", "sobjects"]) => collection_write(st, body, "create", None),
        (Method::PATCH, ["composite", "sobjects"]) => collection_write(st, body, "update", None),
        (Method::PATCH, ["composite", "sobjects", obj, field]) => {
            collection_write(st, body, "upsert", Some((obj, field)))
        }
        (Method::DELETE, ["composite", "sobjects"]) => collection_delete(st, uri),
        (Method::POST, ["composite", "sobjects", obj]) => retrieve(st, &v, obj, body),
        _ => errors(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The requested resource does not exist",
        ),
    }
}

// ----- records -----

/// One record position of a scan: generated index, or overlay key.
enum At<'a> {
    Gen(u64),
    Over(&'a str),
}

/// Walks the virtual sequence of `obj` from `pos`: generated records in index order, then the
/// snapshot's overlay records; calls `f(pos, record)` until it returns `false`.
fn scan(
    st: &SimState,
    q: &QState,
    mut pos: u64,
    mut f: impl FnMut(u64, &dyn Fn(&str) -> Val, At<'_>) -> bool,
) {
    let spec = &st.specs[q.obj];
    let ov = st.overlay.read().unwrap_or_else(|p| p.into_inner());
    let overlay = &ov[q.obj];
    let n = spec.count;
    while pos < n {
        if !overlay.shadowed.contains(&pos) {
            let i = pos;
            let get = |field: &str| st.generator.val(spec, i, field);
            if !f(pos, &get, At::Gen(i)) {
                return;
            }
        }
        pos += 1;
    }
    let snap = &q.snapshot;
    while let Some((stamp, id)) = usize::try_from(pos - n).ok().and_then(|k| snap.get(k)) {
        if let Some(r) = overlay.recs.get(id)
            && r.stamp == *stamp
            && (q.all || !r.deleted)
        {
            let get = |field: &str| match field {
                "IsDeleted" => Val::Bool(r.deleted),
                "SystemModstamp" => Val::Ms(r.stamp),
                _ => r
                    .fields
                    .get(field)
                    .map_or(Val::Null, |v| to_val(spec, field, v)),
            };
            if !f(pos, &get, At::Over(id)) {
                return;
            }
        }
        pos += 1;
    }
}

fn render_json(st: &SimState, v: &str, q: &QState, at: &At<'_>, out: &mut Vec<u8>) {
    let spec = &st.specs[q.obj];
    let ov = st.overlay.read().unwrap_or_else(|p| p.into_inner());
    match at {
        At::Over(id) => {
            let Some(r) = ov[q.obj].recs.get(*id) else {
                out.extend_from_slice(b"null");
                return;
            };
            if let Some(raw) = &r.raw {
                out.extend_from_slice(raw.as_bytes());
                return;
            }
            let mut m = Map::new();
            m.insert("attributes".into(), json!({"type": spec.name, "url": format!("/services/data/v{v}/sobjects/{}/{id}", spec.name)}));
            for f in &q.q.fields {
                let val = match f.as_str() {
                    "Id" => json!(id),
                    "IsDeleted" => json!(r.deleted),
                    other => r.fields.get(other).cloned().unwrap_or(Value::Null),
                };
                m.insert(f.clone(), val);
            }
            let _ = serde_json::to_writer(&mut *out, &Value::Object(m));
        }
        At::Gen(i) => {
            let id = gen_id(spec.prefix, *i);
            let _ = write!(
                out,
                "{{\"attributes\":{{\"type\":\"{}\",\"url\":\"/services/data/v{v}/sobjects/{}/{id}\"}}",
                spec.name, spec.name
            );
            let mut s = String::new();
            for f in &q.q.fields {
                s.clear();
                let _ = write!(out, ",\"{f}\":");
                match st.generator.write(spec, *i, f, &mut s) {
                    Out::Null => out.extend_from_slice(b"null"),
                    Out::Raw => out.extend_from_slice(s.as_bytes()),
                    Out::Str => {
                        let _ = serde_json::to_writer(&mut *out, &s);
                    }
                }
            }
            out.push(b'}');
        }
    }
}

fn csv_field(s: &str, out: &mut Vec<u8>) {
    if s.contains([',', '"', '\n', '\r']) {
        out.push(b'"');
        out.extend_from_slice(s.replace('"', "\"\"").as_bytes());
        out.push(b'"');
    } else {
        out.extend_from_slice(s.as_bytes());
    }
}

fn render_csv(st: &SimState, q: &QState, at: &At<'_>, out: &mut Vec<u8>, scratch: &mut String) {
    let spec = &st.specs[q.obj];
    for (k, f) in q.q.fields.iter().enumerate() {
        if k > 0 {
            out.push(b',');
        }
        scratch.clear();
        match at {
            At::Gen(i) => {
                let _ = st.generator.write(spec, *i, f, scratch);
                csv_field(scratch, out);
            }
            At::Over(id) => {
                let ov = st.overlay.read().unwrap_or_else(|p| p.into_inner());
                let v = match f.as_str() {
                    "Id" => Value::String(id.to_string()),
                    _ => ov[q.obj]
                        .recs
                        .get(*id)
                        .and_then(|r| r.fields.get(f).cloned())
                        .unwrap_or(Value::Null),
                };
                match v {
                    Value::Null => {}
                    Value::String(s) => csv_field(&s, out),
                    other => csv_field(&other.to_string(), out),
                }
            }
        }
    }
    out.push(b'\n');
}

fn parse_query(st: &SimState, soql_text: &str, all: bool) -> Result<QState, Box<Response>> {
    let q = soql::parse(soql_text)
        .map_err(|e| Box::new(errors(StatusCode::BAD_REQUEST, "MALFORMED_QUERY", &e)))?;
    let obj = st.spec(&q.object).ok_or_else(|| {
        Box::new(errors(
            StatusCode::BAD_REQUEST,
            "INVALID_TYPE",
            &format!("sObject type '{}' is not supported.", q.object),
        ))
    })?;
    for f in &q.fields {
        if st.specs[obj].field(f).is_none() {
            return Err(Box::new(errors(
                StatusCode::BAD_REQUEST,
                "INVALID_FIELD",
                &format!("No such column '{f}' on entity '{}'", q.object),
            )));
        }
    }
    if let Some(limit) = st.config.query_timeout_above {
        let (lo, hi) = q.filter.bounds("SystemModstamp");
        let wide = match (lo, hi) {
            (Some(l), Some(h)) => {
                u128::try_from(h.saturating_sub(l)).unwrap_or(0) > limit.as_millis()
            }
            _ => q.filter.id_list().is_none(),
        };
        if wide {
            return Err(Box::new(errors(
                StatusCode::BAD_REQUEST,
                "QUERY_TIMEOUT",
                "Your query request was running for too long.",
            )));
        }
    }
    let snapshot: Vec<(i64, String)> = st.overlay.read().unwrap_or_else(|p| p.into_inner())[obj]
        .order
        .iter()
        .cloned()
        .collect();
    Ok(QState {
        obj,
        q,
        all,
        snapshot: Arc::new(snapshot),
    })
}

fn batch_size(headers: &HeaderMap) -> u64 {
    headers
        .get("sforce-query-options")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.split(',').find_map(|p| {
                p.trim()
                    .strip_prefix("batchSize=")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        })
        .unwrap_or(2000)
        .clamp(200, 2000)
}

fn start_query(
    st: &Arc<SimState>,
    v: &str,
    text: &str,
    all: bool,
    headers: &HeaderMap,
) -> Response {
    let q = match parse_query(st, text, all) {
        Ok(q) => q,
        Err(r) => return *r,
    };
    let mut total = 0u64;
    scan(st, &q, 0, |_, get, _| {
        if q.q.filter.eval(get) {
            total += 1;
        }
        true
    });
    if let Some(l) = q.q.limit {
        total = total.min(l);
    }
    let qid = format!("01gSIM{:010}", st.next_id.fetch_add(1, Ordering::SeqCst));
    let q = Arc::new(q);
    {
        let mut qs = st.queries.lock().unwrap_or_else(|p| p.into_inner());
        if qs.len() > 10_000 {
            qs.clear();
        }
        qs.insert(qid.clone(), q.clone());
    }
    page(st, v, &qid, &q, 0, 0, total, batch_size(headers))
}

fn query_more(st: &Arc<SimState>, v: &str, loc: &str, headers: &HeaderMap) -> Response {
    let parsed = loc.rsplit_once('-').and_then(|(qid, rest)| {
        let (pos, done) = rest.split_once('.')?;
        Some((
            qid.to_string(),
            pos.parse::<u64>().ok()?,
            done.parse::<u64>().ok()?,
        ))
    });
    let Some((qid, pos, done)) = parsed else {
        return errors(
            StatusCode::BAD_REQUEST,
            "INVALID_QUERY_LOCATOR",
            "invalid query locator",
        );
    };
    let q = st
        .queries
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&qid)
        .cloned();
    match q {
        Some(q) => {
            let total = done + 1;
            page(
                st,
                v,
                &qid,
                &q,
                pos,
                done,
                total.max(done),
                batch_size(headers),
            )
        }
        None => errors(
            StatusCode::BAD_REQUEST,
            "INVALID_QUERY_LOCATOR",
            "invalid query locator",
        ),
    }
}

#[allow(clippy::too_many_arguments)]
fn page(
    st: &SimState,
    v: &str,
    qid: &str,
    q: &QState,
    pos: u64,
    done: u64,
    total: u64,
    batch: u64,
) -> Response {
    let limit = q.q.limit.unwrap_or(u64::MAX);
    let mut taken = Vec::new();
    let mut next_pos = None;
    let mut count = done;
    scan(st, q, pos, |p, get, at| {
        if !q.q.filter.eval(get) {
            return true;
        }
        if taken.len() as u64 >= batch || count >= limit {
            next_pos = (count < limit).then_some(p);
            return false;
        }
        let key = match at {
            At::Gen(i) => Err(i),
            At::Over(id) => Ok(id.to_string()),
        };
        taken.push(key);
        count += 1;
        true
    });
    let mut out = Vec::with_capacity(taken.len() * 400 + 128);
    out.push(b'[');
    for (k, key) in taken.iter().enumerate() {
        if k > 0 {
            out.push(b',');
        }
        let at = match key {
            Err(i) => At::Gen(*i),
            Ok(id) => At::Over(id.as_str()),
        };
        render_json(st, v, q, &at, &mut out);
    }
    out.push(b']');
    let records = String::from_utf8(out).unwrap_or_else(|_| "[]".into());
    let mut body = format!(
        "{{\"totalSize\":{},\"done\":{}",
        total.max(count),
        next_pos.is_none()
    );
    if let Some(p) = next_pos {
        body.push_str(&format!(
            ",\"nextRecordsUrl\":\"/services/data/v{v}/query/{qid}-{p}.{count}\""
        ));
    }
    body.push_str(",\"records\":");
    body.push_str(&records);
    body.push('}');
    (
        [(header::CONTENT_TYPE, "application/json;charset=UTF-8")],
        body,
    )
        .into_response()
}

fn get_deleted(st: &SimState, obj: &str, uri: &Uri) -> Response {
    let Some(o) = st.spec(obj) else {
        return errors(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The requested resource does not exist",
        );
    };
    let start = query_param(uri, "start").and_then(|s| parse_datetime(&s));
    let end = query_param(uri, "end").and_then(|s| parse_datetime(&s));
    let (Some(start), Some(end)) = (start, end) else {
        return errors(
            StatusCode::BAD_REQUEST,
            "INVALID_REPLICATION_DATE",
            "start and end are required",
        );
    };
    let log = st.deleted_log.lock().unwrap_or_else(|p| p.into_inner());
    let recs: Vec<Value> = log
        .iter()
        .filter(|(lo, _, ms)| *lo == o && *ms >= start && *ms <= end + 59_999)
        .map(|(_, id, ms)| json!({"id": id, "deletedDate": sf_datetime(*ms)}))
        .collect();
    json_ok(
        &json!({"deletedRecords": recs, "earliestDateAvailable": sf_datetime(super::data::BASE_MS), "latestDateCovered": sf_datetime(end)}),
    )
}

// ----- Bulk API 2.0 -----

fn bulk_create(st: &Arc<SimState>, body: &Bytes) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return errors(
            StatusCode::BAD_REQUEST,
            "JSON_PARSER_ERROR",
            "body is not JSON",
        );
    };
    let op = v["operation"].as_str().unwrap_or("query");
    let text = v["query"].as_str().unwrap_or("");
    let q = match parse_query(st, text, op == "queryAll") {
        Ok(q) => q,
        Err(r) => return *r,
    };
    let mut total = 0u64;
    scan(st, &q, 0, |_, get, _| {
        if q.q.filter.eval(get) {
            total += 1;
        }
        true
    });
    let id = format!("750SIM{:012}", st.next_id.fetch_add(1, Ordering::SeqCst));
    let object = st.specs[q.obj].name.clone();
    st.jobs.lock().unwrap_or_else(|p| p.into_inner()).insert(
        id.clone(),
        Job {
            q,
            polls_left: st.config.bulk_polls,
            total,
        },
    );
    json_ok(
        &json!({"id": id, "operation": op, "object": object, "state": "UploadComplete", "contentType": "CSV", "apiVersion": 64.0}),
    )
}

fn bulk_status(st: &SimState, id: &str) -> Response {
    let mut jobs = st.jobs.lock().unwrap_or_else(|p| p.into_inner());
    let Some(job) = jobs.get_mut(id) else {
        return errors(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The requested resource does not exist",
        );
    };
    let state = if job.polls_left > 0 {
        job.polls_left -= 1;
        "InProgress"
    } else {
        "JobComplete"
    };
    let processed = if state == "JobComplete" { job.total } else { 0 };
    json_ok(
        &json!({"id": id, "operation": "query", "state": state, "numberRecordsProcessed": processed}),
    )
}

fn bulk_results(
    st: &Arc<SimState>,
    _v: &str,
    id: &str,
    uri: &Uri,
    headers: &HeaderMap,
) -> Response {
    let (qs, ready) = {
        let jobs = st.jobs.lock().unwrap_or_else(|p| p.into_inner());
        let Some(job) = jobs.get(id) else {
            return errors(
                StatusCode::NOT_FOUND,
                "NOT_FOUND",
                "The requested resource does not exist",
            );
        };
        (
            Arc::new(QState {
                obj: job.q.obj,
                q: job.q.q.clone(),
                all: job.q.all,
                snapshot: job.q.snapshot.clone(),
            }),
            job.polls_left == 0,
        )
    };
    if !ready {
        return errors(
            StatusCode::BAD_REQUEST,
            "INVALIDJOBSTATE",
            "the job is not complete",
        );
    }
    let max = query_param(uri, "maxRecords")
        .and_then(|m| m.parse::<u64>().ok())
        .unwrap_or(50_000)
        .max(1);
    let start = match query_param(uri, "locator") {
        Some(l) => match base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(l.as_bytes())
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.parse::<u64>().ok())
        {
            Some(p) => p,
            None => return errors(StatusCode::BAD_REQUEST, "INVALIDLOCATOR", "invalid locator"),
        },
        None => 0,
    };
    // Pass 1: where this page ends and where the next begins (predicate only).
    let mut n = 0u64;
    let mut end = u64::MAX;
    let mut next = None;
    scan(st, &qs, start, |p, get, _| {
        if !qs.q.filter.eval(get) {
            return true;
        }
        if n == max {
            end = p;
            next = Some(p);
            return false;
        }
        n += 1;
        true
    });
    let locator = next
        .map(|p| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(p.to_string()))
        .unwrap_or_else(|| "null".into());
    let gzip = st.config.gzip
        && headers
            .get(header::ACCEPT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("gzip"));
    // Pass 2: stream the rows, 1000 at a time.
    let header_row = format!("{}\n", qs.q.fields.join(","));
    struct S {
        st: Arc<SimState>,
        q: Arc<QState>,
        pos: u64,
        end: u64,
        head: Option<String>,
        gz: Option<flate2::write::GzEncoder<Vec<u8>>>,
        finished: bool,
    }
    let s = S {
        st: st.clone(),
        q: qs.clone(),
        pos: start,
        end,
        head: Some(header_row),
        gz: gzip.then(|| flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast())),
        finished: false,
    };
    let stream = futures::stream::unfold(s, |mut s| async move {
        if s.finished {
            return None;
        }
        let mut out = Vec::with_capacity(256 * 1024);
        if let Some(h) = s.head.take() {
            out.extend_from_slice(h.as_bytes());
        }
        let mut rows = 0;
        let mut last = s.pos;
        let mut scratch = String::new();
        let mut reached_end = true;
        {
            let q = s.q.clone();
            let st = s.st.clone();
            let end = s.end;
            scan(&st, &q, s.pos, |p, get, at| {
                if p >= end {
                    last = p;
                    return false;
                }
                if rows >= 1000 {
                    last = p;
                    reached_end = false;
                    return false;
                }
                if q.q.filter.eval(get) {
                    render_csv(&st, &q, &at, &mut out, &mut scratch);
                    rows += 1;
                }
                last = p + 1;
                true
            });
        }
        s.pos = last;
        if reached_end {
            s.finished = true;
        }
        let chunk = match s.gz.as_mut() {
            Some(gz) => {
                let _ = gz.write_all(&out);
                if s.finished {
                    s.gz.take()
                        .map(|g| g.finish().unwrap_or_default())
                        .unwrap_or_default()
                } else {
                    std::mem::take(gz.get_mut())
                }
            }
            None => out,
        };
        Some((Ok::<Bytes, std::io::Error>(Bytes::from(chunk)), s))
    });
    let mut resp = Response::new(Body::from_stream(stream));
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/csv"));
    if gzip {
        h.insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    if let Ok(v) = HeaderValue::from_str(&locator) {
        h.insert("sforce-locator", v);
    }
    if let Ok(v) = HeaderValue::from_str(&n.to_string()) {
        h.insert("sforce-numberofrecords", v);
    }
    resp
}

// ----- writes -----

fn item_ok(id: &str) -> Value {
    json!({"id": id, "success": true, "errors": []})
}

fn item_err(code: &str, message: &str, fields: &[&str]) -> Value {
    json!({"success": false, "errors": [{"statusCode": code, "message": message, "fields": fields}]})
}

fn required(obj: &str) -> &'static [&'static str] {
    match obj {
        "Account" | "Opportunity" | "Invoice__c" => &["Name"],
        "Contact" | "Lead" => &["LastName"],
        _ => &[],
    }
}

fn collection_write(
    st: &Arc<SimState>,
    body: &Bytes,
    op: &str,
    upsert: Option<(&&str, &&str)>,
) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return errors(
            StatusCode::BAD_REQUEST,
            "JSON_PARSER_ERROR",
            "body is not JSON",
        );
    };
    let Some(records) = v["records"].as_array() else {
        return errors(
            StatusCode::BAD_REQUEST,
            "INVALID_FIELD",
            "records is required",
        );
    };
    if records.len() > 200 {
        return errors(
            StatusCode::BAD_REQUEST,
            "EXCEEDED_ID_LIMIT",
            "record limit is 200",
        );
    }
    let mut out = Vec::new();
    for rec in records {
        let Some(m) = rec.as_object() else {
            out.push(item_err("INVALID_FIELD", "record is not an object", &[]));
            continue;
        };
        let ty = rec["attributes"]["type"].as_str().unwrap_or("");
        let Some(o) = st.spec(ty) else {
            out.push(item_err("INVALID_TYPE", "unknown sObject type", &[]));
            continue;
        };
        let spec = &st.specs[o];
        let fields: Map<String, Value> = m
            .iter()
            .filter(|(k, _)| *k != "attributes" && *k != "id")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if let Some(bad) = fields.keys().find(|k| spec.field(k).is_none()) {
            out.push(item_err(
                "INVALID_FIELD",
                &format!("No such column '{bad}' on sobject of type {ty}"),
                &[bad.as_str()],
            ));
            continue;
        }
        let target: Option<String> = match (op, upsert) {
            ("update", _) => rec["id"].as_str().map(str::to_string),
            ("upsert", Some((_, field))) => {
                let Some(val) = fields.get(&**field as &str).cloned() else {
                    out.push(item_err(
                        "REQUIRED_FIELD_MISSING",
                        "the external id is missing",
                        &[field],
                    ));
                    continue;
                };
                find_by(st, o, field, &val)
            }
            _ => None,
        };
        match target {
            Some(id) => match st.current(o, &id) {
                Some((mut cur, false)) => {
                    cur.extend(fields);
                    st.store(o, id.clone(), cur, false);
                    let mut ok = item_ok(&id);
                    if op == "upsert" {
                        ok["created"] = json!(false);
                    }
                    out.push(ok);
                }
                Some((_, true)) => {
                    out.push(item_err("ENTITY_IS_DELETED", "entity is deleted", &[]))
                }
                None => out.push(item_err(
                    "INVALID_CROSS_REFERENCE_KEY",
                    "invalid cross reference id",
                    &[],
                )),
            },
            None if op == "update" => out.push(item_err(
                "MALFORMED_ID",
                "the record id is missing or malformed",
                &["Id"],
            )),
            None => {
                let missing: Vec<&str> = required(ty)
                    .iter()
                    .copied()
                    .filter(|f| fields.get(*f).is_none_or(Value::is_null))
                    .collect();
                if !missing.is_empty() {
                    out.push(item_err(
                        "REQUIRED_FIELD_MISSING",
                        &format!("Required fields are missing: [{}]", missing.join(", ")),
                        &missing,
                    ));
                    continue;
                }
                let id = st.new_id(o);
                let mut all: Map<String, Value> = spec
                    .fields
                    .iter()
                    .filter(|f| f.sf_type != "address")
                    .map(|f| (f.name.clone(), Value::Null))
                    .collect();
                all.extend(fields);
                all.insert("Id".into(), json!(id));
                let now = sf_datetime(st.now_ms());
                all.insert("CreatedDate".into(), json!(now));
                all.insert("CreatedById".into(), json!(st.api_user()));
                if spec.field("OwnerId").is_some() && all.get("OwnerId").is_none_or(Value::is_null)
                {
                    all.insert("OwnerId".into(), json!(st.api_user()));
                }
                st.store(o, id.clone(), all, false);
                let mut ok = item_ok(&id);
                if op == "upsert" {
                    ok["created"] = json!(true);
                }
                out.push(ok);
            }
        }
    }
    json_ok(&Value::Array(out))
}

fn find_by(st: &SimState, o: usize, field: &str, val: &Value) -> Option<String> {
    let spec = &st.specs[o];
    {
        let ov = st.overlay.read().unwrap_or_else(|p| p.into_inner());
        if let Some((id, _)) = ov[o]
            .recs
            .iter()
            .find(|(_, r)| !r.deleted && r.fields.get(field) == Some(val))
        {
            return Some(id.clone());
        }
        for i in 0..spec.count {
            if !ov[o].shadowed.contains(&i) && &st.generator.value(spec, i, field) == val {
                return Some(gen_id(spec.prefix, i));
            }
        }
    }
    None
}

fn collection_delete(st: &SimState, uri: &Uri) -> Response {
    let ids = query_param(uri, "ids").unwrap_or_default();
    let mut out = Vec::new();
    for id in ids.split(',').filter(|s| !s.is_empty()) {
        let o = st.specs.iter().position(|s| id.starts_with(s.prefix));
        match o.and_then(|o| st.current(o, id).map(|c| (o, c))) {
            Some((o, (cur, false))) => {
                let stamp = st.store(o, id.to_string(), cur, true);
                st.deleted_log.lock().unwrap_or_else(|p| p.into_inner()).push((o, id.to_string(), stamp));
                out.push(item_ok(id));
            }
            Some((_, (_, true))) => out.push(json!({"id": id, "success": false, "errors": [{"statusCode": "ENTITY_IS_DELETED", "message": "entity is deleted", "fields": []}]})),
            None => out.push(json!({"id": id, "success": false, "errors": [{"statusCode": "INVALID_CROSS_REFERENCE_KEY", "message": "invalid cross reference id", "fields": []}]})),
        }
    }
    json_ok(&Value::Array(out))
}

fn retrieve(st: &SimState, _v: &str, obj: &str, body: &Bytes) -> Response {
    let Some(o) = st.spec(obj) else {
        return errors(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The requested resource does not exist",
        );
    };
    let Ok(v) = serde_json::from_slice::<Value>(body) else {
        return errors(
            StatusCode::BAD_REQUEST,
            "JSON_PARSER_ERROR",
            "body is not JSON",
        );
    };
    let ids: Vec<&str> = v["ids"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let fields: Vec<&str> = v["fields"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if ids.len() > 2000 {
        return errors(StatusCode::BAD_REQUEST, "EXCEEDED_ID_LIMIT", "too many ids");
    }
    let spec = &st.specs[o];
    let out: Vec<Value> = ids
        .iter()
        .map(|id| match st.current(o, id) {
            Some((cur, false)) => {
                let mut m = Map::new();
                m.insert("attributes".into(), json!({"type": spec.name, "url": format!("/services/data/v64.0/sobjects/{}/{id}", spec.name)}));
                for f in &fields {
                    m.insert(f.to_string(), if *f == "Id" { json!(id) } else { cur.get(*f).cloned().unwrap_or(Value::Null) });
                }
                Value::Object(m)
            }
            _ => Value::Null,
        })
        .collect();
    json_ok(&Value::Array(out))
}

fn patch_row(st: &SimState, obj: &str, id: &str, headers: &HeaderMap, body: &Bytes) -> Response {
    let Some(o) = st.spec(obj) else {
        return errors(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The requested resource does not exist",
        );
    };
    let Some((mut cur, false)) = st.current(o, id) else {
        return errors(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            "The requested resource does not exist",
        );
    };
    if let Some(since) = headers
        .get(header::IF_UNMODIFIED_SINCE)
        .and_then(|v| v.to_str().ok())
    {
        let Ok(t) = chrono::DateTime::parse_from_rfc2822(since) else {
            return errors(
                StatusCode::BAD_REQUEST,
                "INVALID_HEADER",
                "If-Unmodified-Since is not an HTTP date",
            );
        };
        let lm = cur
            .get("LastModifiedDate")
            .and_then(Value::as_str)
            .and_then(parse_datetime)
            .unwrap_or(0);
        if lm > t.timestamp_millis() {
            return errors(
                StatusCode::PRECONDITION_FAILED,
                "PRECONDITION_FAILED",
                "The record was modified since the If-Unmodified-Since date",
            );
        }
    }
    let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(body) else {
        return errors(
            StatusCode::BAD_REQUEST,
            "JSON_PARSER_ERROR",
            "body is not a JSON object",
        );
    };
    cur.extend(fields);
    st.store(o, id.to_string(), cur, false);
    StatusCode::NO_CONTENT.into_response()
}
