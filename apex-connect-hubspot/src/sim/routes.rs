//! The simulator's routes.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use apex_connect_testkit::sim::paging::query_params;
use apex_connect_testkit::sim::{Intercept, Next};
use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures::future::BoxFuture;
use serde_json::{Value, json};

use super::data::{Obj, Seeded, custom_property, property_names};
use super::{Shared, render};
use crate::models::{OBJECT_TYPES, format_time_ms, parse_time_ms};

type St = State<Arc<Shared>>;

/// A JSON answer with HubSpot's content type.
pub(crate) fn hubspot_json(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json;charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

fn err(shared: &Shared, status: StatusCode, category: &str, message: &str) -> Response {
    hubspot_json(
        status,
        json!({"status": "error", "message": message, "correlationId": shared.correlation_id(), "category": category}),
    )
}

/// Refuses API calls without a valid bearer token (private app token or live OAuth token).
#[derive(Clone)]
pub(crate) struct AuthCheck {
    pub(crate) shared: Arc<Shared>,
}

impl Intercept for AuthCheck {
    fn intercept(&self, req: Request, next: Next) -> BoxFuture<'static, Response> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let ok = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .is_some_and(|t| {
                    t == shared.config.private_app_token || shared.oauth.validate_access_token(t)
                });
            if !req.uri().path().starts_with("/crm/") || ok {
                next.run(req).await
            } else {
                err(
                    &shared,
                    StatusCode::UNAUTHORIZED,
                    "INVALID_AUTHENTICATION",
                    "Authentication credentials not found. This API supports OAuth 2.0 authentication.",
                )
            }
        })
    }
}

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/crm/v3/objects/{object}", get(list))
        .route("/crm/v3/objects/{object}/search", post(search))
        .route("/crm/v3/objects/{object}/batch/{action}", post(batch))
        .route("/crm/v3/properties/{object}", get(properties))
        .route("/crm/v3/owners", get(owners))
        .route(
            "/crm/v4/associations/{from}/{to}/batch/read",
            post(associations),
        )
        .with_state(shared)
}

fn type_of(shared: &Shared, object: &str) -> Result<usize, Box<Response>> {
    let name = match object {
        "0-1" => "contacts",
        "0-2" => "companies",
        "0-3" => "deals",
        other => other,
    };
    OBJECT_TYPES
        .iter()
        .position(|o| o.stream == name)
        .ok_or_else(|| {
            Box::new(err(
                shared,
                StatusCode::NOT_FOUND,
                "OBJECT_NOT_FOUND",
                "Unable to infer object type",
            ))
        })
}

fn assoc_render(shared: &Shared, t: usize, id: u64, to_names: &[&str]) -> Value {
    let ov = shared.overlay();
    let mut m = serde_json::Map::new();
    for name in to_names {
        let Some(to) = OBJECT_TYPES.iter().position(|o| o.stream == *name) else {
            continue;
        };
        let results: Vec<Value> = shared
            .seeded
            .associations(t, id, to)
            .into_iter()
            .filter(|x| shared.get(&ov, to, *x).is_some())
            .map(|x| json!({"id": x.to_string(), "type": format!("{}_to_{}", OBJECT_TYPES[t].singular, OBJECT_TYPES[to].singular)}))
            .collect();
        if !results.is_empty() {
            m.insert((*name).to_string(), json!({ "results": results }));
        }
    }
    Value::Object(m)
}

fn default_properties(t: usize) -> Vec<String> {
    let ot = &OBJECT_TYPES[t];
    let mut v = vec![
        "createdate".to_string(),
        "hs_object_id".into(),
        ot.modified_property.to_string(),
    ];
    match ot.stream {
        "contacts" => v.extend(["email", "firstname", "lastname"].map(String::from)),
        "companies" => v.extend(["domain", "name"].map(String::from)),
        "deals" => {
            v.extend(["amount", "closedate", "dealname", "dealstage", "pipeline"].map(String::from))
        }
        _ => {}
    }
    v
}

async fn list(State(s): St, Path(object): Path<String>, uri: Uri) -> Response {
    let t = match type_of(&s, &object) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let q = query_params(&uri);
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => 10,
        Some(Ok(n)) if (1..=100).contains(&n) => n,
        Some(_) => {
            return err(
                &s,
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                "limit must be between 1 and 100",
            );
        }
    };
    let start: u64 = match q.get("after").map(|a| a.parse::<u64>()) {
        None => 0,
        Some(Ok(a)) => a,
        Some(Err(_)) => {
            return err(
                &s,
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                "after is not a valid paging token",
            );
        }
    };
    let props: Vec<String> = match q.get("properties") {
        Some(p) => p
            .split(',')
            .filter(|x| !x.is_empty())
            .map(String::from)
            .collect(),
        None => default_properties(t),
    };
    let assoc: Vec<&str> = q
        .get("associations")
        .map(|a| a.split(',').collect())
        .unwrap_or_default();
    let mut results: Vec<(u64, Result<Obj, Value>)> = Vec::with_capacity(limit);
    let mut next = None;
    {
        let ov = s.overlay();
        let first = Seeded::first_id(t);
        let base_end = first + s.seeded.counts[t];
        // Objects created through the API and hostile ones share the ids after the seeded.
        let mut created: Vec<u64> = ov.objects[t]
            .range(base_end..)
            .map(|(id, _)| *id)
            .chain(ov.raw[t].keys().copied())
            .filter(|id| *id >= start)
            .collect();
        created.sort_unstable();
        let ids = (first.max(start)..base_end).chain(created);
        for id in ids {
            let item = match ov.raw[t].get(&id) {
                Some(v) => Err(v.clone()),
                None => match s.get(&ov, t, id) {
                    Some(o) => Ok(o),
                    None => continue,
                },
            };
            if results.len() == limit {
                next = Some(id);
                break;
            }
            results.push((id, item));
        }
    }
    let results: Vec<Value> = results
        .into_iter()
        .map(|(id, item)| match item {
            Err(verbatim) => verbatim,
            Ok(o) => {
                let mut v = render(t, id, &o, Some(&props));
                if !assoc.is_empty() {
                    v["associations"] = assoc_render(&s, t, id, &assoc);
                }
                v
            }
        })
        .collect();
    let mut body = json!({ "results": results });
    if let Some(n) = next {
        body["paging"] = json!({"next": {"after": n.to_string(), "link": format!("?after={n}")}});
    }
    hubspot_json(StatusCode::OK, body)
}

#[derive(Clone, Copy, PartialEq)]
enum Cmp {
    Eq,
    Neq,
    Gt,
    Gte,
    Lt,
    Lte,
    Between,
    Has,
    NotHas,
}

struct Filter {
    prop: String,
    op: Cmp,
    value: Option<String>,
    high: Option<String>,
}

fn parse_filters(body: &Value) -> Result<Vec<Vec<Filter>>, String> {
    let mut groups = Vec::new();
    let empty = Vec::new();
    let gs = body
        .get("filterGroups")
        .and_then(Value::as_array)
        .unwrap_or(&empty);
    if gs.len() > 5 {
        return Err("too many filterGroups (max 5)".into());
    }
    let mut total = 0;
    for g in gs {
        let mut fs = Vec::new();
        for f in g.get("filters").and_then(Value::as_array).unwrap_or(&empty) {
            total += 1;
            let prop = f
                .get("propertyName")
                .and_then(Value::as_str)
                .ok_or("filter without propertyName")?;
            let op = match f.get("operator").and_then(Value::as_str).unwrap_or("") {
                "EQ" => Cmp::Eq,
                "NEQ" => Cmp::Neq,
                "GT" => Cmp::Gt,
                "GTE" => Cmp::Gte,
                "LT" => Cmp::Lt,
                "LTE" => Cmp::Lte,
                "BETWEEN" => Cmp::Between,
                "HAS_PROPERTY" => Cmp::Has,
                "NOT_HAS_PROPERTY" => Cmp::NotHas,
                other => {
                    return Err(format!(
                        "operator {other} is not supported by the simulator"
                    ));
                }
            };
            let s = |k: &str| {
                f.get(k).map(|v| {
                    v.as_str()
                        .map(String::from)
                        .unwrap_or_else(|| v.to_string())
                })
            };
            fs.push(Filter {
                prop: prop.to_string(),
                op,
                value: s("value"),
                high: s("highValue"),
            });
        }
        if fs.len() > 6 {
            return Err("too many filters in a group (max 6)".into());
        }
        groups.push(fs);
    }
    if total > 18 {
        return Err("too many filters (max 18)".into());
    }
    Ok(groups)
}

/// Compares as numbers (dates in ms or ISO, ids) when both sides are, else as text.
fn compare(a: &str, b: &str) -> std::cmp::Ordering {
    match (parse_time_ms(a), parse_time_ms(b)) {
        (Some(x), Some(y)) => x.cmp(&y),
        _ => a.to_ascii_lowercase().cmp(&b.to_ascii_lowercase()),
    }
}

fn matches(f: &Filter, value: Option<&str>) -> bool {
    use std::cmp::Ordering::*;
    let Some(v) = value else {
        return f.op == Cmp::NotHas || f.op == Cmp::Neq;
    };
    let want = f.value.as_deref().unwrap_or("");
    match f.op {
        Cmp::Has => true,
        Cmp::NotHas => false,
        Cmp::Eq => compare(v, want) == Equal,
        Cmp::Neq => compare(v, want) != Equal,
        Cmp::Gt => compare(v, want) == Greater,
        Cmp::Gte => compare(v, want) != Less,
        Cmp::Lt => compare(v, want) == Less,
        Cmp::Lte => compare(v, want) != Greater,
        Cmp::Between => {
            compare(v, want) != Less && compare(v, f.high.as_deref().unwrap_or("")) != Greater
        }
    }
}

/// The [lo, hi] modified-date bounds the filter groups allow (to skip most seeded objects).
fn ts_bounds(groups: &[Vec<Filter>], prop: &str) -> (i64, i64) {
    if groups.is_empty() {
        return (i64::MIN, i64::MAX);
    }
    let (mut lo, mut hi) = (i64::MAX, i64::MIN);
    for g in groups {
        let (mut glo, mut ghi) = (i64::MIN, i64::MAX);
        for f in g.iter().filter(|f| f.prop == prop) {
            let v = f.value.as_deref().and_then(parse_time_ms);
            let h = f.high.as_deref().and_then(parse_time_ms);
            match (f.op, v) {
                (Cmp::Eq, Some(v)) => (glo, ghi) = (glo.max(v), ghi.min(v)),
                (Cmp::Gt | Cmp::Gte, Some(v)) => glo = glo.max(v),
                (Cmp::Lt | Cmp::Lte, Some(v)) => ghi = ghi.min(v),
                (Cmp::Between, Some(v)) => {
                    glo = glo.max(v);
                    if let Some(h) = h {
                        ghi = ghi.min(h);
                    }
                }
                _ => {}
            }
        }
        lo = lo.min(glo);
        hi = hi.max(ghi);
    }
    (lo, hi)
}

async fn search(State(s): St, Path(object): Path<String>, body: Bytes) -> Response {
    s.search_requests.fetch_add(1, Ordering::Relaxed);
    let t = match type_of(&s, &object) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    if body.len() > 3000 {
        return err(
            &s,
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            "The maximum query size is 3000 characters.",
        );
    }
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return err(
            &s,
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            "Invalid input JSON",
        );
    };
    let groups = match parse_filters(&req) {
        Ok(g) => g,
        Err(m) => return err(&s, StatusCode::BAD_REQUEST, "VALIDATION_ERROR", &m),
    };
    let limit = match req.get("limit").map(Value::as_u64) {
        None => 10,
        Some(Some(n)) if (1..=200).contains(&n) => n as usize,
        Some(_) => {
            return err(
                &s,
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                "limit must be between 1 and 200",
            );
        }
    };
    let offset: usize = match req.get("after") {
        None | Some(Value::Null) => 0,
        Some(v) => match v
            .as_str()
            .map(str::parse::<usize>)
            .or_else(|| v.as_u64().map(|n| Ok(n as usize)))
        {
            Some(Ok(n)) => n,
            _ => {
                return err(
                    &s,
                    StatusCode::BAD_REQUEST,
                    "VALIDATION_ERROR",
                    "after must be an integer",
                );
            }
        },
    };
    if offset + limit > 10_000 {
        return err(
            &s,
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            "The search endpoints are limited to 10,000 total results for any given query.",
        );
    }
    let sorts = req
        .get("sorts")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if sorts.len() > 1 {
        return err(
            &s,
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            "Only one sort is allowed",
        );
    }
    let ot = &OBJECT_TYPES[t];
    let modified = ot.modified_property;
    let (sort_prop, desc) = match sorts.first() {
        Some(v) => {
            let p = v
                .get("propertyName")
                .and_then(Value::as_str)
                .unwrap_or("hs_object_id")
                .to_string();
            (
                p,
                v.get("direction").and_then(Value::as_str) == Some("DESCENDING"),
            )
        }
        None => ("hs_object_id".to_string(), false),
    };
    let (lo, hi) = ts_bounds(&groups, modified);
    let mut hits: Vec<(i64, u64, Obj)> = Vec::new();
    {
        let ov = s.overlay();
        let eval = |id: u64, o: &Obj| -> bool {
            groups.is_empty()
                || groups.iter().any(|g| {
                    g.iter().all(|f| {
                        let v: Option<String> = match f.prop.as_str() {
                            "hs_object_id" => Some(id.to_string()),
                            p if p == modified => Some(o.updated_ms.to_string()),
                            "createdate" | "hs_createdate" => Some(o.created_ms.to_string()),
                            p => o.props.get(p).cloned(),
                        };
                        matches(f, v.as_deref())
                    })
                })
        };
        if lo <= hi {
            for i in s.seeded.base_range(t, lo, hi) {
                let id = Seeded::first_id(t) + i;
                if ov.objects[t].contains_key(&id) {
                    continue;
                }
                let ts = s.seeded.base_ts(t, i);
                if ts < lo || ts > hi {
                    continue;
                }
                let o = s.seeded.base(t, i);
                if eval(id, &o) {
                    hits.push((ts, id, o));
                }
            }
            let from = (lo.saturating_sub(1), 0);
            for &(ts, id) in ov.by_modified[t].range(from..) {
                if ts > hi {
                    break;
                }
                if let Some(o) = ov.objects[t].get(&id)
                    && eval(id, o)
                {
                    hits.push((ts, id, o.clone()));
                }
            }
        }
    }
    // HubSpot leaves the order of ties unspecified: the simulator returns them by id
    // descending, so a client that assumes an id order within a timestamp loses records.
    let key = |h: &(i64, u64, Obj)| -> (i64, i64) {
        match sort_prop.as_str() {
            "hs_object_id" => (h.1 as i64, 0),
            "createdate" | "hs_createdate" => (h.2.created_ms, -(h.1 as i64)),
            p if p == modified => (h.0, -(h.1 as i64)),
            _ => (0, h.1 as i64),
        }
    };
    hits.sort_by(|a, b| {
        let (ka, kb) = (key(a), key(b));
        if desc {
            (kb.0, ka.1).cmp(&(ka.0, kb.1))
        } else {
            ka.cmp(&kb)
        }
    });
    let total = hits.len();
    let capped = total.min(10_000);
    let end = (offset + limit).min(capped);
    let props: Vec<String> = match req.get("properties").and_then(Value::as_array) {
        Some(a) if !a.is_empty() => a
            .iter()
            .filter_map(|p| p.as_str().map(String::from))
            .collect(),
        _ => vec![
            "createdate".into(),
            "hs_object_id".into(),
            modified.to_string(),
        ],
    };
    let results: Vec<Value> = hits
        .get(offset.min(end)..end)
        .unwrap_or(&[])
        .iter()
        .map(|(_, id, o)| render(t, *id, o, Some(&props)))
        .collect();
    let mut out = json!({ "total": total, "results": results });
    if end < capped {
        out["paging"] =
            json!({"next": {"after": end.to_string(), "link": format!("?after={end}")}});
    }
    hubspot_json(StatusCode::OK, out)
}

fn batch_reply(
    s: &Shared,
    status_ok: StatusCode,
    results: Vec<Value>,
    errors: Vec<Value>,
) -> Response {
    let now = format_time_ms(apex_connect_core::webhook::unix_ms(
        std::time::SystemTime::now(),
    ));
    let mut body =
        json!({"status": "COMPLETE", "results": results, "startedAt": now, "completedAt": now});
    let _ = s;
    if errors.is_empty() {
        hubspot_json(status_ok, body)
    } else {
        body["numErrors"] = json!(errors.len());
        body["errors"] = json!(errors);
        hubspot_json(StatusCode::MULTI_STATUS, body)
    }
}

fn known_property(t: usize, name: &str) -> bool {
    property_names(t).contains(&name)
}

fn find_by_unique(
    s: &Shared,
    ov: &super::data::Overlay,
    t: usize,
    prop: &str,
    value: &str,
) -> Option<u64> {
    let value = value.to_ascii_lowercase();
    for (id, o) in &ov.objects[t] {
        if !o.archived
            && o.props
                .get(prop)
                .is_some_and(|v| v.to_ascii_lowercase() == value)
        {
            return Some(*id);
        }
    }
    // Seeded emails end with `.<id>@...`, domains with `-<id>.example.com`.
    let id: Option<u64> = match prop {
        "email" => value
            .split('@')
            .next()
            .and_then(|l| l.rsplit('.').next())
            .and_then(|x| x.parse().ok()),
        "domain" => value
            .split('.')
            .next()
            .and_then(|l| l.rsplit('-').next())
            .and_then(|x| x.parse().ok()),
        _ => None,
    };
    let id = id?;
    if ov.objects[t].contains_key(&id) {
        return None;
    }
    let i = s.seeded.base_index(t, id)?;
    let o = s.seeded.base(t, i);
    o.props
        .get(prop)
        .is_some_and(|v| v.to_ascii_lowercase() == value)
        .then_some(id)
}

async fn batch(
    State(s): St,
    Path((object, action)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let t = match type_of(&s, &object) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return err(
            &s,
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            "Invalid input JSON",
        );
    };
    let inputs = req
        .get("inputs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if inputs.len() > 100 {
        return err(
            &s,
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            "Batch operations are limited to 100 records at a time",
        );
    }
    let singular = OBJECT_TYPES[t].singular.to_uppercase();
    let id_of = |v: &Value| crate::api::id_of(v.get("id"));
    let props_of = |v: &Value| -> Vec<(String, String)> {
        v.get("properties")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        (
                            k.clone(),
                            v.as_str()
                                .map(String::from)
                                .unwrap_or_else(|| v.to_string()),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    let trace = |v: &Value| v.get("objectWriteTraceId").cloned();
    // Unknown properties fail the whole batch, as HubSpot does.
    if matches!(action.as_str(), "update" | "upsert" | "create") {
        for i in &inputs {
            for (k, _) in props_of(i) {
                if !known_property(t, &k) {
                    return err(
                        &s,
                        StatusCode::BAD_REQUEST,
                        "VALIDATION_ERROR",
                        &format!("Property values were not valid: Property \"{k}\" does not exist"),
                    );
                }
            }
        }
    }
    let not_found = |ids: Vec<String>, traces: Vec<Value>| -> Value {
        let mut ctx = json!({ "ids": ids });
        if !traces.is_empty() {
            ctx["objectWriteTraceId"] = json!(traces);
        }
        json!({"status": "error", "category": "OBJECT_NOT_FOUND",
            "message": format!("Could not get some {singular} objects, they may be deleted or not exist. Check that ids are valid."),
            "context": ctx})
    };
    let mut results = Vec::new();
    let mut errors = Vec::new();
    let mut ov = s.overlay();
    match action.as_str() {
        "read" => {
            let props: Option<Vec<String>> = req
                .get("properties")
                .and_then(Value::as_array)
                .filter(|a| !a.is_empty())
                .map(|a| {
                    a.iter()
                        .filter_map(|p| p.as_str().map(String::from))
                        .collect()
                });
            let props = props.unwrap_or_else(|| default_properties(t));
            let id_prop = req
                .get("idProperty")
                .and_then(Value::as_str)
                .map(String::from);
            let mut missing = Vec::new();
            for i in &inputs {
                let Some(key) = id_of(i) else { continue };
                let id = match &id_prop {
                    Some(p) if p != "hs_object_id" => find_by_unique(&s, &ov, t, p, &key),
                    _ => key.parse().ok(),
                };
                match id.and_then(|id| s.get(&ov, t, id).map(|o| (id, o))) {
                    Some((id, o)) => {
                        let mut p = props.clone();
                        if let Some(ip) = &id_prop {
                            p.push(ip.clone());
                        }
                        results.push(render(t, id, &o, Some(&p)));
                    }
                    None => missing.push(key),
                }
            }
            if !missing.is_empty() {
                errors.push(not_found(missing, Vec::new()));
            }
            drop(ov);
            batch_reply(&s, StatusCode::OK, results, errors)
        }
        "update" => {
            for i in &inputs {
                let key = id_of(i).unwrap_or_default();
                match key
                    .parse::<u64>()
                    .ok()
                    .and_then(|id| s.get(&ov, t, id).map(|o| (id, o)))
                {
                    Some((id, mut o)) => {
                        for (k, v) in props_of(i) {
                            if v.is_empty() {
                                o.props.remove(&k);
                            } else {
                                o.props.insert(k, v);
                            }
                        }
                        o.updated_ms = s.next_ts(&mut ov);
                        let mut r = render(t, id, &o, None);
                        if let Some(tr) = trace(i) {
                            r["objectWriteTraceId"] = tr;
                        }
                        ov.put(t, id, o);
                        results.push(r);
                    }
                    None => errors.push(not_found(vec![key], trace(i).into_iter().collect())),
                }
            }
            drop(ov);
            batch_reply(&s, StatusCode::OK, results, errors)
        }
        "upsert" | "create" => {
            for i in &inputs {
                let existing = if action == "upsert" {
                    let (Some(key), Some(prop)) =
                        (id_of(i), i.get("idProperty").and_then(Value::as_str))
                    else {
                        drop(ov);
                        return err(
                            &s,
                            StatusCode::BAD_REQUEST,
                            "VALIDATION_ERROR",
                            "upsert inputs need id and idProperty",
                        );
                    };
                    if !known_property(t, prop)
                        || !matches!(prop, "email" | "domain" | "hs_object_id")
                    {
                        drop(ov);
                        return err(
                            &s,
                            StatusCode::BAD_REQUEST,
                            "VALIDATION_ERROR",
                            "idProperty must be a unique property",
                        );
                    }
                    let found = if prop == "hs_object_id" {
                        key.parse().ok()
                    } else {
                        find_by_unique(&s, &ov, t, prop, &key)
                    };
                    Some((
                        found.and_then(|id| s.get(&ov, t, id).map(|o| (id, o))),
                        prop.to_string(),
                        key,
                    ))
                } else {
                    None
                };
                let now = s.next_ts(&mut ov);
                let (id, mut o, is_new) = match existing {
                    Some((Some((id, o)), _, _)) => (id, o, false),
                    other => {
                        let id = ov.next_id[t];
                        ov.next_id[t] += 1;
                        let mut o = Obj {
                            props: Default::default(),
                            created_ms: now,
                            updated_ms: now,
                            archived: false,
                        };
                        if let Some((None, prop, key)) = other
                            && prop != "hs_object_id"
                        {
                            o.props.insert(prop, key);
                        }
                        (id, o, true)
                    }
                };
                for (k, v) in props_of(i) {
                    o.props.insert(k, v);
                }
                o.updated_ms = now;
                let mut r = render(t, id, &o, None);
                if action == "upsert" {
                    r["new"] = json!(is_new);
                }
                if let Some(tr) = trace(i) {
                    r["objectWriteTraceId"] = tr;
                }
                ov.put(t, id, o);
                results.push(r);
            }
            drop(ov);
            batch_reply(
                &s,
                if action == "create" {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                },
                results,
                errors,
            )
        }
        "archive" => {
            for i in &inputs {
                if let Some(id) = id_of(i).and_then(|k| k.parse::<u64>().ok())
                    && let Some(mut o) = s.get(&ov, t, id)
                {
                    o.archived = true;
                    o.updated_ms = s.next_ts(&mut ov);
                    ov.put(t, id, o);
                }
            }
            StatusCode::NO_CONTENT.into_response()
        }
        _ => {
            drop(ov);
            err(
                &s,
                StatusCode::NOT_FOUND,
                "OBJECT_NOT_FOUND",
                "no such batch action",
            )
        }
    }
}

async fn properties(State(s): St, Path(object): Path<String>) -> Response {
    let t = match type_of(&s, &object) {
        Ok(t) => t,
        Err(r) => return *r,
    };
    let at = format_time_ms(s.config.base_ms - 86_400_000);
    let results: Vec<Value> = property_names(t)
        .into_iter()
        .map(|p| {
            let custom = p == custom_property(t);
            let date = p.ends_with("date") || p.starts_with("hs_timestamp") || p.ends_with("_time");
            json!({
                "name": p, "label": p.replace('_', " "), "type": if date { "datetime" } else { "string" },
                "fieldType": if date { "date" } else { "text" }, "groupName": if custom { "apex" } else { "information" },
                "description": "", "hubspotDefined": !custom, "calculated": false, "hidden": false,
                "createdAt": at, "updatedAt": at, "archived": false,
            })
        })
        .collect();
    hubspot_json(StatusCode::OK, json!({ "results": results }))
}

async fn owners(State(s): St, uri: Uri) -> Response {
    let q = query_params(&uri);
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<u64>().ok())
        .unwrap_or(100)
        .clamp(1, 500);
    let start = match q.get("after").map(|a| a.parse::<u64>()) {
        None => 0,
        Some(Ok(a)) => a,
        Some(Err(_)) => {
            return err(
                &s,
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                "after is not valid",
            );
        }
    };
    let end = (start + limit).min(s.seeded.owners);
    let results: Vec<Value> = (start.min(end)..end).map(|i| s.seeded.owner(i)).collect();
    let mut body = json!({ "results": results });
    if end < s.seeded.owners {
        body["paging"] =
            json!({"next": {"after": end.to_string(), "link": format!("?after={end}")}});
    }
    hubspot_json(StatusCode::OK, body)
}

fn type_id(from: usize, to: usize) -> u64 {
    let (f, t) = (OBJECT_TYPES[from].stream, OBJECT_TYPES[to].stream);
    match (f, t) {
        ("contacts", "companies") => 279,
        ("deals", "contacts") => 3,
        ("deals", "companies") => 341,
        ("notes", "contacts") => 202,
        ("notes", "companies") => 190,
        ("notes", "deals") => 214,
        ("emails", "contacts") => 198,
        ("emails", "companies") => 186,
        ("emails", "deals") => 210,
        ("calls", "contacts") => 194,
        ("calls", "companies") => 182,
        ("calls", "deals") => 206,
        ("tasks", "contacts") => 204,
        ("tasks", "companies") => 192,
        ("tasks", "deals") => 216,
        ("meetings", "contacts") => 200,
        ("meetings", "companies") => 188,
        ("meetings", "deals") => 212,
        _ => 0,
    }
}

async fn associations(
    State(s): St,
    Path((from, to)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let (ft, tt) = match (type_of(&s, &from), type_of(&s, &to)) {
        (Ok(a), Ok(b)) => (a, b),
        (Err(r), _) | (_, Err(r)) => return *r,
    };
    let Ok(req) = serde_json::from_slice::<Value>(&body) else {
        return err(
            &s,
            StatusCode::BAD_REQUEST,
            "VALIDATION_ERROR",
            "Invalid input JSON",
        );
    };
    let inputs = req
        .get("inputs")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let ov = s.overlay();
    let mut results = Vec::new();
    for i in inputs {
        let Some(id) = crate::api::id_of(i.get("id")).and_then(|x| x.parse::<u64>().ok()) else {
            continue;
        };
        if s.get(&ov, ft, id).is_none() {
            continue;
        }
        let to_list: Vec<Value> = s
            .seeded
            .associations(ft, id, tt)
            .into_iter()
            .filter(|x| s.get(&ov, tt, *x).is_some())
            .map(|x| json!({"toObjectId": x, "associationTypes": [{"category": "HUBSPOT_DEFINED", "typeId": type_id(ft, tt), "label": null}]}))
            .collect();
        if !to_list.is_empty() {
            results.push(json!({"from": {"id": id.to_string()}, "to": to_list}));
        }
    }
    drop(ov);
    batch_reply(&s, StatusCode::OK, results, Vec::new())
}
