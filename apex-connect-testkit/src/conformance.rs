//! The shared conformance suite: the behaviours every connector + simulator must show.
//!
//! A platform crate supplies a [`ConformanceFixture`] (how to get a fresh connector against its
//! simulator, what data the simulator holds, and optional hooks to provoke 429s, 401s and
//! webhooks), and expands the suite with [`conformance!`](crate::conformance!):
//!
//! ```ignore
//! // apex-connect-frontapp/tests/conformance.rs
//! async fn fixture() -> my_sim::Fixture { my_sim::Fixture::start().await }
//! apex_connect_testkit::conformance!(fixture);
//! ```
//!
//! Each behaviour is one `#[tokio::test]` calling the harness function of the same name in
//! this module with a fresh fixture. A behaviour the connector does not claim (by
//! [`Capabilities`](apex_connect_core::Capabilities)) or the fixture cannot provoke (a hook
//! returning `None`) prints `skipped: <behaviour>: <reason>` and passes.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use apex_connect_core::store::prelude::*;
use apex_connect_core::webhook::WebhookRequest;
use apex_connect_core::{
    ConnectionId, Connector, CursorToken, ErrorKind, MemorySink, MemoryStore, Op, Page, StreamId,
    SyncCursor, SyncEngine, SyncOptions, WebhookError, WriteOp, async_trait,
};
use http::{HeaderMap, Method, Uri};
use serde::{Deserialize, Serialize};

/// The most pages one sync may take before the harness calls it a loop.
const MAX_PAGES: usize = 100_000;
/// The most page boundaries the resume behaviour tries per stream (evenly spread).
const MAX_RESUME_POINTS: usize = 40;

/// A signed webhook request: method, URI, headers and raw body.
pub type SignedWebhook = (Method, Uri, HeaderMap, Vec<u8>);

/// What a platform test supplies to the conformance suite.
///
/// Only [`connector`](ConformanceFixture::connector) and
/// [`expected`](ConformanceFixture::expected) are required; every hook defaults to `None`
/// ("this fixture cannot"), which skips the behaviours that need it.
#[async_trait]
pub trait ConformanceFixture: Send + Sync {
    /// A fresh connector (new HTTP client, new token cache) against the fixture's simulator.
    /// Connectors from one fixture see the same data.
    async fn connector(&self) -> Arc<dyn Connector>;

    /// The simulator's data set of `stream`: live object id -> version (`None` when the
    /// connector reports no version). A full sync must produce exactly this.
    async fn expected(&self, stream: &StreamId) -> BTreeMap<String, Option<i64>>;

    /// Makes the simulator answer the next API request with `429` and
    /// `Retry-After: retry_after` (whole seconds). `None`: the fixture cannot.
    async fn inject_rate_limit(&self, retry_after: Duration) -> Option<()> {
        let _ = retry_after;
        None
    }

    /// How many 429s the simulator has sent so far. `None`: not counted.
    async fn rate_limited_seen(&self) -> Option<u64> {
        None
    }

    /// Makes the simulator refuse the current access token once with `401`, so the connector
    /// must refresh it. `None`: the fixture cannot.
    async fn inject_unauthorized_once(&self) -> Option<()> {
        None
    }

    /// How many token refreshes the simulator's OAuth endpoint has served so far.
    async fn token_refreshes(&self) -> Option<u64> {
        None
    }

    /// A webhook request signed as the platform signs it at `now`, which the connector's
    /// verifier must accept at `now`. `None`: the fixture cannot make one.
    async fn signed_webhook(&self, now: SystemTime) -> Option<SignedWebhook> {
        let _ = now;
        None
    }

    /// Whether the platform's webhook signature covers a timestamp (so a stale delivery is
    /// refused). Default `true`; platforms that sign no timestamp answer `false`.
    fn webhook_timestamped(&self) -> bool {
        true
    }

    /// Strings that must never appear in `Debug` output: tokens, client secrets, webhook
    /// secrets. `None`: nothing to check.
    async fn secrets(&self) -> Option<Vec<String>> {
        None
    }

    /// Write-back operations to try on `stream` (each must get a result). `None`: none.
    async fn write_ops(&self, stream: &StreamId) -> Option<Vec<WriteOp>> {
        let _ = stream;
        None
    }

    /// Adds to the simulator's `stream` objects made from the platform's documented shapes
    /// with hostile variations ([`crate::hostile`], seeded by `seed`): optional fields absent,
    /// `null` or of unexpected types, unknown keys at every level, valid envelopes (id and
    /// cursor timestamp). Returns the ids added. `None`: the fixture cannot (for this stream).
    async fn inject_hostile(&self, stream: &StreamId, seed: u64) -> Option<Vec<String>> {
        let _ = (stream, seed);
        None
    }
}

/// How a behaviour ended when it did not fail.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// The behaviour was checked and holds.
    Passed,
    /// The behaviour does not apply (not claimed, or no hook); the reason says why.
    Skipped(String),
}

/// A behaviour that does not hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The behaviour's name (the harness function's name).
    pub behaviour: &'static str,
    /// What went wrong.
    pub message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "conformance: {}: {}", self.behaviour, self.message)
    }
}

impl std::error::Error for Failure {}

/// The result of one behaviour.
pub type BehaviourResult = Result<Outcome, Failure>;

/// Turns a behaviour's result into a test verdict: prints `skipped: <behaviour>: <reason>`
/// for skips, panics with the failure otherwise. Used by [`conformance!`](crate::conformance!).
#[track_caller]
pub fn report(behaviour: &'static str, result: BehaviourResult) {
    match result {
        Ok(Outcome::Passed) => {}
        Ok(Outcome::Skipped(reason)) => println!("skipped: {behaviour}: {reason}"),
        Err(failure) => panic!("{failure}"),
    }
}

fn fail(behaviour: &'static str, message: impl Into<String>) -> Failure {
    Failure {
        behaviour,
        message: message.into(),
    }
}

fn skip(reason: impl Into<String>) -> BehaviourResult {
    Ok(Outcome::Skipped(reason.into()))
}

/// The streams the connector declares.
fn streams(connector: &dyn Connector) -> Vec<StreamId> {
    connector
        .info()
        .capabilities
        .streams
        .iter()
        .map(|s| s.id.clone())
        .collect()
}

/// One read of a stream: its pages in order, each with the cursor it was read from.
struct Walk {
    pages: Vec<(Option<CursorToken>, Page)>,
}

/// Reads `stream` from `start` until `has_more == false`, checking that every page that
/// claims more advances to a cursor not seen before.
async fn walk(
    behaviour: &'static str,
    connector: &dyn Connector,
    stream: &StreamId,
    start: Option<CursorToken>,
) -> Result<Walk, Failure> {
    let mut pages = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    if let Some(c) = &start {
        seen.insert(c.as_str().to_string());
    }
    let mut cursor = start;
    loop {
        if pages.len() >= MAX_PAGES {
            return Err(fail(
                behaviour,
                format!("stream `{stream}` did not end within {MAX_PAGES} pages"),
            ));
        }
        let page = connector.read(stream, cursor.as_ref()).await.map_err(|e| {
            fail(
                behaviour,
                format!("read of `{stream}` failed after {} pages: {e}", pages.len()),
            )
        })?;
        let has_more = page.has_more;
        let next = page.next.clone();
        pages.push((cursor.clone(), page));
        if !has_more {
            return Ok(Walk { pages });
        }
        let Some(next) = next else {
            return Err(fail(
                behaviour,
                format!(
                    "page {} of `{stream}` has more but no next cursor",
                    pages.len() - 1
                ),
            ));
        };
        if !seen.insert(next.as_str().to_string()) {
            return Err(fail(
                behaviour,
                format!(
                    "page {} of `{stream}` has more but repeats an earlier cursor",
                    pages.len() - 1
                ),
            ));
        }
        cursor = Some(next);
    }
}

/// Applies pages to a replica: upserts set the version, deletes remove the id.
fn apply<'a>(
    replica: &mut BTreeMap<String, Option<i64>>,
    pages: impl IntoIterator<Item = &'a Page>,
) {
    for page in pages {
        for r in &page.records {
            match r.op {
                Op::Upsert => {
                    // A record read twice (a lookback window) keeps its newest version.
                    let keep = match (replica.get(&r.id), r.version) {
                        (Some(Some(old)), Some(new)) => new >= *old,
                        _ => true,
                    };
                    if keep {
                        replica.insert(r.id.clone(), r.version);
                    }
                }
                Op::Delete => {
                    replica.remove(&r.id);
                }
            }
        }
    }
}

/// Describes how `got` differs from `want`, or `None` when equal.
fn diff(
    got: &BTreeMap<String, Option<i64>>,
    want: &BTreeMap<String, Option<i64>>,
) -> Option<String> {
    if got == want {
        return None;
    }
    let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    let stale: Vec<String> = want
        .iter()
        .filter_map(|(k, v)| match got.get(k) {
            Some(g) if g != v => Some(format!("{k}: got {g:?}, want {v:?}")),
            _ => None,
        })
        .collect();
    let show = |v: Vec<String>| -> String {
        let n = v.len();
        let mut s: Vec<String> = v.into_iter().take(5).collect();
        if n > 5 {
            s.push(format!("... ({n} in all)"));
        }
        s.join(", ")
    };
    Some(format!(
        "{} records vs {} expected; missing [{}]; unexpected [{}]; wrong version [{}]",
        got.len(),
        want.len(),
        show(missing.into_iter().cloned().collect()),
        show(extra.into_iter().cloned().collect()),
        show(stale),
    ))
}

/// A full sync of every declared stream equals the simulator's data set.
pub async fn full_sync<F: ConformanceFixture + ?Sized>(fixture: &F) -> BehaviourResult {
    const B: &str = "full_sync";
    let connector = fixture.connector().await;
    let streams = streams(connector.as_ref());
    if streams.is_empty() {
        return Err(fail(B, "the connector declares no streams"));
    }
    for stream in streams {
        let w = walk(B, connector.as_ref(), &stream, None).await?;
        let mut got = BTreeMap::new();
        apply(&mut got, w.pages.iter().map(|(_, p)| p));
        let want = fixture.expected(&stream).await;
        if let Some(d) = diff(&got, &want) {
            return Err(fail(B, format!("stream `{stream}`: {d}")));
        }
    }
    Ok(Outcome::Passed)
}

/// Resuming from every page boundary, with a fresh connector, loses nothing and adds nothing:
/// the pages up to the boundary plus the resumed read equal the data set.
pub async fn resume_from_every_page<F: ConformanceFixture + ?Sized>(
    fixture: &F,
) -> BehaviourResult {
    const B: &str = "resume_from_every_page";
    let connector = fixture.connector().await;
    for stream in streams(connector.as_ref()) {
        let want = fixture.expected(&stream).await;
        let w = walk(B, connector.as_ref(), &stream, None).await?;
        let n = w.pages.len();
        let step = n.div_ceil(MAX_RESUME_POINTS).max(1);
        let mut boundaries: Vec<usize> = (0..n).step_by(step).collect();
        if boundaries.last() != Some(&(n - 1)) {
            boundaries.push(n - 1);
        }
        for i in boundaries {
            let Some(next) = w.pages[i].1.next.clone() else {
                continue;
            };
            let fresh = fixture.connector().await;
            let resumed = walk(B, fresh.as_ref(), &stream, Some(next)).await?;
            let mut got = BTreeMap::new();
            apply(&mut got, w.pages[..=i].iter().map(|(_, p)| p));
            apply(&mut got, resumed.pages.iter().map(|(_, p)| p));
            if let Some(d) = diff(&got, &want) {
                return Err(fail(
                    B,
                    format!("stream `{stream}`, resumed after page {i} of {n}: {d}"),
                ));
            }
        }
    }
    Ok(Outcome::Passed)
}

/// A cursor of another kind, of another version of the connector's own kind, or garbage is
/// refused with `InvalidInput`.
pub async fn foreign_cursor_is_invalid_input<F: ConformanceFixture + ?Sized>(
    fixture: &F,
) -> BehaviourResult {
    const B: &str = "foreign_cursor_is_invalid_input";
    #[derive(Debug, Clone, Serialize, Deserialize)]
    struct Foreign {
        page: u32,
    }
    impl SyncCursor for Foreign {
        const KIND: &'static str = "apex-conformance.foreign";
        const VERSION: u32 = 1;
    }
    let connector = fixture.connector().await;
    for stream in streams(connector.as_ref()) {
        let mut bad = vec![
            ("a cursor of another kind", Foreign { page: 2 }.to_token()),
            ("garbage", CursorToken::from_string("not a cursor")),
        ];
        let first = connector
            .read(&stream, None)
            .await
            .map_err(|e| fail(B, format!("first read of `{stream}` failed: {e}")))?;
        if let Some(real) = &first.next
            && let Some(kind) = real.kind()
            // `<kind>.v<N>.<payload>` -> `<kind>.v999999.<payload>`
            && let Some((_, payload)) = real.as_str()[kind.len()..]
                .strip_prefix(".v")
                .and_then(|r| r.split_once('.'))
        {
            bad.push((
                "a newer version of the connector's own cursor",
                CursorToken::from_string(format!("{kind}.v999999.{payload}")),
            ));
        }
        for (what, token) in bad {
            match connector.read(&stream, Some(&token)).await {
                Ok(_) => {
                    return Err(fail(
                        B,
                        format!("stream `{stream}` accepted {what}: {token:?}"),
                    ));
                }
                Err(e) if e.kind() == ErrorKind::InvalidInput => {}
                Err(e) => {
                    return Err(fail(
                        B,
                        format!(
                            "stream `{stream}` refused {what} with {} instead of invalid_input: {e}",
                            e.kind()
                        ),
                    ));
                }
            }
        }
    }
    Ok(Outcome::Passed)
}

/// Reading a stream the connector does not declare is `NotFound`.
pub async fn unknown_stream_is_not_found<F: ConformanceFixture + ?Sized>(
    fixture: &F,
) -> BehaviourResult {
    const B: &str = "unknown_stream_is_not_found";
    let connector = fixture.connector().await;
    let stream = StreamId::from_static("apex-conformance-no-such-stream");
    match connector.read(&stream, None).await {
        Ok(_) => Err(fail(B, "reading an undeclared stream succeeded")),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(Outcome::Passed),
        Err(e) => Err(fail(
            B,
            format!(
                "undeclared stream gave {} instead of not_found: {e}",
                e.kind()
            ),
        )),
    }
}

/// Every page with `has_more` carries a next cursor never seen before in the read (no loops),
/// for every stream.
pub async fn has_more_advances_cursor<F: ConformanceFixture + ?Sized>(
    fixture: &F,
) -> BehaviourResult {
    const B: &str = "has_more_advances_cursor";
    let connector = fixture.connector().await;
    for stream in streams(connector.as_ref()) {
        // `walk` checks it page by page.
        walk(B, connector.as_ref(), &stream, None).await?;
    }
    Ok(Outcome::Passed)
}

/// The retry hint used by [`rate_limit_honoured`].
pub const RATE_LIMIT_HINT: Duration = Duration::from_secs(1);

/// After an injected `429` with `Retry-After: 1`, the sync still completes, equals the data
/// set, and took at least the hint (real time).
pub async fn rate_limit_honoured<F: ConformanceFixture + ?Sized>(fixture: &F) -> BehaviourResult {
    const B: &str = "rate_limit_honoured";
    let connector = fixture.connector().await;
    let Some(stream) = streams(connector.as_ref()).into_iter().next() else {
        return Err(fail(B, "the connector declares no streams"));
    };
    let before = fixture.rate_limited_seen().await;
    if fixture.inject_rate_limit(RATE_LIMIT_HINT).await.is_none() {
        return skip("the fixture has no inject_rate_limit hook");
    }
    let started = Instant::now();
    let w = walk(B, connector.as_ref(), &stream, None).await?;
    let elapsed = started.elapsed();
    let mut got = BTreeMap::new();
    apply(&mut got, w.pages.iter().map(|(_, p)| p));
    if let Some(d) = diff(&got, &fixture.expected(&stream).await) {
        return Err(fail(B, format!("stream `{stream}` after a 429: {d}")));
    }
    if let (Some(before), Some(after)) = (before, fixture.rate_limited_seen().await)
        && after <= before
    {
        return Err(fail(
            B,
            "the simulator sent no 429: the injection did not reach the connector",
        ));
    }
    // Allow for timer granularity, not for ignoring the hint.
    if elapsed + Duration::from_millis(50) < RATE_LIMIT_HINT {
        return Err(fail(
            B,
            format!(
                "the sync finished {:.3}s after a 429 asking for {}s: Retry-After was not honoured",
                elapsed.as_secs_f64(),
                RATE_LIMIT_HINT.as_secs()
            ),
        ));
    }
    Ok(Outcome::Passed)
}

/// A `401` on an API call makes the connector refresh its token exactly once, and the sync
/// completes (capability `oauth_refresh`).
pub async fn unauthorized_refreshes_once<F: ConformanceFixture + ?Sized>(
    fixture: &F,
) -> BehaviourResult {
    const B: &str = "unauthorized_refreshes_once";
    let connector = fixture.connector().await;
    if !connector.info().capabilities.oauth_refresh {
        return skip("the connector does not claim oauth_refresh");
    }
    let Some(stream) = streams(connector.as_ref()).into_iter().next() else {
        return Err(fail(B, "the connector declares no streams"));
    };
    // Warm up: the first read may legitimately fetch a first token.
    connector
        .read(&stream, None)
        .await
        .map_err(|e| fail(B, format!("first read of `{stream}` failed: {e}")))?;
    let Some(before) = fixture.token_refreshes().await else {
        return skip("the fixture has no token_refreshes hook");
    };
    if fixture.inject_unauthorized_once().await.is_none() {
        return skip("the fixture has no inject_unauthorized_once hook");
    }
    let w = walk(B, connector.as_ref(), &stream, None).await?;
    let mut got = BTreeMap::new();
    apply(&mut got, w.pages.iter().map(|(_, p)| p));
    if let Some(d) = diff(&got, &fixture.expected(&stream).await) {
        return Err(fail(B, format!("stream `{stream}` after a 401: {d}")));
    }
    let after = fixture.token_refreshes().await.unwrap_or(before);
    if after != before + 1 {
        return Err(fail(
            B,
            format!(
                "expected exactly one token refresh after a 401, saw {}",
                after.saturating_sub(before)
            ),
        ));
    }
    Ok(Outcome::Passed)
}

/// Common preparation of the webhook behaviours.
async fn webhook_setup<F: ConformanceFixture + ?Sized>(
    behaviour: &'static str,
    fixture: &F,
    now: SystemTime,
) -> Result<Result<(Arc<dyn Connector>, SignedWebhook), String>, Failure> {
    let _ = behaviour;
    let connector = fixture.connector().await;
    if connector.webhooks().is_none() {
        return Ok(Err("the connector takes no webhooks".into()));
    }
    let Some(signed) = fixture.signed_webhook(now).await else {
        return Ok(Err("the fixture has no signed_webhook hook".into()));
    };
    Ok(Ok((connector, signed)))
}

/// The webhook handler of a connector that `webhook_setup` checked has one.
fn hooks(connector: &Arc<dyn Connector>) -> &dyn apex_connect_core::Webhooks {
    match connector.webhooks() {
        Some(h) => h,
        None => unreachable!("webhook_setup checked that the connector takes webhooks"),
    }
}

/// A webhook signed as the platform does is accepted, and `parse_webhook` understands it
/// (capability `webhooks`).
pub async fn webhook_verifies<F: ConformanceFixture + ?Sized>(fixture: &F) -> BehaviourResult {
    const B: &str = "webhook_verifies";
    let now = SystemTime::now();
    let (connector, (method, uri, headers, body)) = match webhook_setup(B, fixture, now).await? {
        Ok(parts) => parts,
        Err(reason) => return skip(reason),
    };
    let verifier = hooks(&connector).verifier();
    let verified = verifier
        .verify(&WebhookRequest::new(&method, &uri, &headers, &body), now)
        .map_err(|e| fail(B, format!("a correctly signed webhook was refused: {e}")))?;
    let webhook = apex_connect_core::VerifiedWebhook::new(verified, headers, body.into(), now);
    let events = hooks(&connector)
        .events(&webhook.verified, &webhook.body)
        .map_err(|e| fail(B, format!("a verified webhook's events were refused: {e}")))?;
    if events.is_empty() {
        return Err(fail(B, "a verified webhook yielded no event"));
    }
    for event in events {
        let mut one = webhook.clone();
        one.body = event.body;
        hooks(&connector).parse(&one).await.map_err(|e| {
            fail(
                B,
                format!("parse failed on an event of a verified webhook: {e}"),
            )
        })?;
    }
    Ok(Outcome::Passed)
}

/// Changing one byte of the body makes verification fail with `BadSignature`.
pub async fn webhook_tampered_body_rejected<F: ConformanceFixture + ?Sized>(
    fixture: &F,
) -> BehaviourResult {
    const B: &str = "webhook_tampered_body_rejected";
    let now = SystemTime::now();
    let (connector, (method, uri, headers, mut body)) = match webhook_setup(B, fixture, now).await?
    {
        Ok(parts) => parts,
        Err(reason) => return skip(reason),
    };
    let verifier = hooks(&connector).verifier();
    if body.is_empty() {
        body.push(b' ');
    } else {
        let mid = body.len() / 2;
        body[mid] ^= 0x01;
    }
    match verifier.verify(&WebhookRequest::new(&method, &uri, &headers, &body), now) {
        Err(WebhookError::BadSignature) => Ok(Outcome::Passed),
        Err(e) => Err(fail(
            B,
            format!("a tampered body was refused with `{e:?}` instead of BadSignature"),
        )),
        Ok(_) => Err(fail(B, "a tampered body was accepted")),
    }
}

/// How far in the past the stale webhook is signed.
pub const STALE_WEBHOOK_AGE: Duration = Duration::from_secs(24 * 60 * 60);

/// A webhook signed a day ago is refused with `OutsideTolerance` (platforms that sign a
/// timestamp).
pub async fn webhook_stale_timestamp_rejected<F: ConformanceFixture + ?Sized>(
    fixture: &F,
) -> BehaviourResult {
    const B: &str = "webhook_stale_timestamp_rejected";
    if !fixture.webhook_timestamped() {
        return skip("the platform's webhook signature covers no timestamp");
    }
    let now = SystemTime::now();
    let then = now - STALE_WEBHOOK_AGE;
    let (connector, (method, uri, headers, body)) = match webhook_setup(B, fixture, then).await? {
        Ok(parts) => parts,
        Err(reason) => return skip(reason),
    };
    let verifier = hooks(&connector).verifier();
    match verifier.verify(&WebhookRequest::new(&method, &uri, &headers, &body), now) {
        Err(WebhookError::OutsideTolerance { .. }) => Ok(Outcome::Passed),
        Err(e) => Err(fail(
            B,
            format!("a day-old webhook was refused with `{e:?}` instead of OutsideTolerance"),
        )),
        Ok(_) => Err(fail(B, "a day-old webhook was accepted")),
    }
}

/// Without its signature headers a webhook is refused with `MissingHeader`.
///
/// The harness removes the headers one at a time: at least one removal must give
/// `MissingHeader`, and none may give anything but a refusal from the scheme (`MissingHeader`,
/// `BadSignature`, `Malformed`) or acceptance (a header the scheme ignores). Removing every
/// header must give `MissingHeader`.
pub async fn webhook_missing_signature_rejected<F: ConformanceFixture + ?Sized>(
    fixture: &F,
) -> BehaviourResult {
    const B: &str = "webhook_missing_signature_rejected";
    let now = SystemTime::now();
    let (connector, (method, uri, headers, body)) = match webhook_setup(B, fixture, now).await? {
        Ok(parts) => parts,
        Err(reason) => return skip(reason),
    };
    let verifier = hooks(&connector).verifier();
    let empty = HeaderMap::new();
    match verifier.verify(&WebhookRequest::new(&method, &uri, &empty, &body), now) {
        Err(WebhookError::MissingHeader(_)) => {}
        Err(e) => {
            return Err(fail(
                B,
                format!(
                    "a webhook without headers was refused with `{e:?}` instead of MissingHeader"
                ),
            ));
        }
        Ok(_) => return Err(fail(B, "a webhook without any header was accepted")),
    }
    let mut missing_seen = false;
    for name in headers.keys() {
        let mut h = headers.clone();
        h.remove(name);
        match verifier.verify(&WebhookRequest::new(&method, &uri, &h, &body), now) {
            Ok(_) => {}
            Err(WebhookError::MissingHeader(_)) => missing_seen = true,
            Err(WebhookError::BadSignature | WebhookError::Malformed(_)) => {}
            Err(e) => {
                return Err(fail(B, format!("removing header `{name}` gave `{e:?}`")));
            }
        }
    }
    if !missing_seen {
        return Err(fail(
            B,
            "no single header's removal was reported as MissingHeader",
        ));
    }
    Ok(Outcome::Passed)
}

/// `Debug` of the connector, of its webhook verifier and of its errors shows none of the
/// fixture's secrets.
pub async fn debug_shows_no_secret<F: ConformanceFixture + ?Sized>(fixture: &F) -> BehaviourResult {
    const B: &str = "debug_shows_no_secret";
    let Some(secrets) = fixture.secrets().await else {
        return skip("the fixture has no secrets hook");
    };
    let secrets: Vec<String> = secrets.into_iter().filter(|s| s.len() >= 4).collect();
    if secrets.is_empty() {
        return skip("the fixture lists no secret of 4 characters or more");
    }
    let connector = fixture.connector().await;
    let mut outputs: Vec<(String, String)> = Vec::new();
    let mut capture = |what: String, text: String| outputs.push((what, text));
    capture(
        "connector (before use)".into(),
        format!("{connector:?} {connector:#?}"),
    );
    if let Some(h) = connector.webhooks() {
        let v = h.verifier();
        capture("webhook verifier".into(), format!("{v:?} {v:#?}"));
    }
    if let Err(e) = connector.check().await {
        capture("check() error".into(), format!("{e:?} {e:#?} {e}"));
    }
    let unknown = StreamId::from_static("apex-conformance-no-such-stream");
    if let Err(e) = connector.read(&unknown, None).await {
        capture("unknown-stream error".into(), format!("{e:?} {e:#?} {e}"));
    }
    let garbage = CursorToken::from_string("not a cursor");
    for stream in streams(connector.as_ref()) {
        if let Err(e) = connector.read(&stream, Some(&garbage)).await {
            capture(
                format!("bad-cursor error on `{stream}`"),
                format!("{e:?} {e:#?} {e}"),
            );
        }
        match connector.read(&stream, None).await {
            Ok(page) => capture(
                format!("first page of `{stream}`"),
                format!("{:?}", page.next),
            ),
            Err(e) => capture(
                format!("read error on `{stream}`"),
                format!("{e:?} {e:#?} {e}"),
            ),
        }
    }
    capture(
        "connector (after use)".into(),
        format!("{connector:?} {connector:#?}"),
    );
    for (what, text) in &outputs {
        for (i, secret) in secrets.iter().enumerate() {
            if text.contains(secret.as_str()) {
                return Err(fail(
                    B,
                    format!("Debug/Display of the {what} contains secret #{i}"),
                ));
            }
        }
    }
    Ok(Outcome::Passed)
}

/// With `write_back` claimed and write operations given, `write` returns one result per
/// operation, under each operation's key, in order.
pub async fn write_back_smoke<F: ConformanceFixture + ?Sized>(fixture: &F) -> BehaviourResult {
    const B: &str = "write_back_smoke";
    let connector = fixture.connector().await;
    if !connector.info().capabilities.write_back {
        return skip("the connector does not claim write_back");
    }
    let mut tried = 0;
    for stream in streams(connector.as_ref()) {
        let Some(ops) = fixture.write_ops(&stream).await else {
            continue;
        };
        if ops.is_empty() {
            continue;
        }
        tried += 1;
        let keys: Vec<String> = ops.iter().map(|o| o.key.clone()).collect();
        let report = connector
            .write(&stream, ops)
            .await
            .map_err(|e| fail(B, format!("write to `{stream}` failed as a whole: {e}")))?;
        let got: Vec<String> = report.results.iter().map(|r| r.key.clone()).collect();
        if got != keys {
            return Err(fail(
                B,
                format!("write to `{stream}` reported keys {got:?} for operations {keys:?}"),
            ));
        }
    }
    if tried == 0 {
        return skip("the fixture gives no write_ops for any stream");
    }
    Ok(Outcome::Passed)
}

/// Seeds tried by [`hostile_records_never_fail_a_page`].
const HOSTILE_SEEDS: [u64; 2] = [7, 1_000_003];

/// Full-syncs `stream` through the engine into an entity sink; returns the sink and store.
async fn engine_sync(
    connector: &dyn Connector,
    stream: &StreamId,
) -> Result<
    (
        Arc<MemorySink>,
        Arc<MemoryStore>,
        apex_connect_core::SyncReport,
    ),
    String,
> {
    let store = Arc::new(MemoryStore::new());
    let sink = Arc::new(MemorySink::with_entities());
    let engine = SyncEngine::new(store.clone() as Arc<dyn apex_connect_core::StateStore>);
    let conn = ConnectionId::from_static("conformance");
    let report = engine
        .run(
            connector,
            &conn,
            stream,
            sink.as_ref(),
            SyncOptions::new().full(true),
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok((sink, store, report))
}

/// Objects of the platform's documented shapes with hostile variations (optional fields
/// absent, `null` or of unexpected types; unknown keys at every level) never fail a page: a
/// full sync through the engine into an entity sink succeeds, and every injected object is
/// either in the sink (mapped) or quarantined in the rejects — none is lost.
pub async fn hostile_records_never_fail_a_page<F: ConformanceFixture + ?Sized>(
    fixture: &F,
) -> BehaviourResult {
    const B: &str = "hostile_records_never_fail_a_page";
    let connector = fixture.connector().await;
    let mut tried = 0;
    for stream in streams(connector.as_ref()) {
        let mut injected = Vec::new();
        for seed in HOSTILE_SEEDS {
            if let Some(ids) = fixture.inject_hostile(&stream, seed).await {
                injected.extend(ids);
            }
        }
        if injected.is_empty() {
            continue;
        }
        tried += 1;
        let fresh = fixture.connector().await;
        let (sink, store, report) = engine_sync(fresh.as_ref(), &stream)
            .await
            .map_err(|e| fail(B, format!("stream `{stream}`: a page failed: {e}")))?;
        let conn = ConnectionId::from_static("conformance");
        let held = sink.all();
        let rejects = store
            .list_rejects(Some(&conn), Some(&stream), usize::MAX)
            .await
            .map_err(|e| fail(B, e.to_string()))?;
        let rejected: BTreeSet<String> =
            rejects.iter().filter_map(|r| r.reject.id.clone()).collect();
        let lost: Vec<&String> = injected
            .iter()
            .filter(|id| {
                !held.contains_key(&(conn.clone(), stream.clone(), (*id).clone()))
                    && !rejected.contains(*id)
            })
            .collect();
        if !lost.is_empty() {
            return Err(fail(
                B,
                format!(
                    "stream `{stream}`: {} of {} injected objects are neither synced nor \
                     quarantined, e.g. {:?} (report: {report:?})",
                    lost.len(),
                    injected.len(),
                    &lost[..lost.len().min(5)]
                ),
            ));
        }
        if report.rejected != rejects.len() as u64 {
            return Err(fail(
                B,
                format!(
                    "stream `{stream}`: the report counts {} rejects, the store holds {}",
                    report.rejected,
                    rejects.len()
                ),
            ));
        }
    }
    if tried == 0 {
        return skip("the fixture has no inject_hostile hook");
    }
    Ok(Outcome::Passed)
}

/// Every record the simulator serves maps to its entity without error (none quarantined),
/// and validates against the stream's discovered JSON Schema, whose key fields are declared.
pub async fn records_map_and_match_schema<F: ConformanceFixture + ?Sized>(
    fixture: &F,
) -> BehaviourResult {
    const B: &str = "records_map_and_match_schema";
    let connector = fixture.connector().await;
    for stream in streams(connector.as_ref()) {
        let schema = connector
            .discover(&stream)
            .await
            .map_err(|e| fail(B, format!("discover(`{stream}`) failed: {e}")))?;
        if schema.stream != stream {
            return Err(fail(
                B,
                format!("discover(`{stream}`) named another stream"),
            ));
        }
        if schema.schema.get("type") != Some(&serde_json::json!("object")) {
            return Err(fail(
                B,
                format!("`{stream}`'s schema is not an object schema"),
            ));
        }
        let validator = jsonschema::validator_for(&schema.schema).map_err(|e| {
            fail(
                B,
                format!("`{stream}`'s schema is not a valid JSON Schema: {e}"),
            )
        })?;
        let w = walk(B, connector.as_ref(), &stream, None).await?;
        for (_, page) in &w.pages {
            if !page.rejects.is_empty() {
                return Err(fail(
                    B,
                    format!(
                        "`{stream}`: the simulator's own data was quarantined: {}",
                        page.rejects[0].error
                    ),
                ));
            }
            for r in &page.records {
                connector.map_entity(r).map_err(|e| {
                    fail(B, format!("`{stream}` record `{}` does not map: {e}", r.id))
                })?;
                if r.op == Op::Delete {
                    continue;
                }
                let value = r
                    .raw
                    .to_value()
                    .map_err(|e| fail(B, format!("`{stream}` record `{}`: {e}", r.id)))?;
                if let Some(err) = validator.iter_errors(&value).next() {
                    return Err(fail(
                        B,
                        format!(
                            "`{stream}` record `{}` does not match its schema at `{}`: {err}",
                            r.id,
                            err.instance_path()
                        ),
                    ));
                }
            }
        }
    }
    Ok(Outcome::Passed)
}

/// A record read again from its raw JSON ([`Connector::parse_record`], used to re-drive
/// quarantined records) has the same envelope (skipped when the connector does not support it).
pub async fn parse_record_roundtrip<F: ConformanceFixture + ?Sized>(
    fixture: &F,
) -> BehaviourResult {
    const B: &str = "parse_record_roundtrip";
    let connector = fixture.connector().await;
    let mut checked = 0u64;
    for stream in streams(connector.as_ref()) {
        let w = walk(B, connector.as_ref(), &stream, None).await?;
        for (_, page) in &w.pages {
            for r in page.records.iter().filter(|r| r.op == Op::Upsert) {
                match connector.parse_record(&stream, &r.raw, r.parent.as_deref()) {
                    Ok(back) => {
                        if back.id != r.id || back.op != r.op || back.version != r.version {
                            return Err(fail(
                                B,
                                format!(
                                    "`{stream}` record `{}` (version {:?}) reads back as `{}` \
                                     (version {:?})",
                                    r.id, r.version, back.id, back.version
                                ),
                            ));
                        }
                        checked += 1;
                    }
                    Err(e) if e.kind() == ErrorKind::Unsupported => {
                        return skip(format!("parse_record is not supported for `{stream}`"));
                    }
                    Err(e) => {
                        return Err(fail(
                            B,
                            format!("`{stream}` record `{}` does not read back: {e}", r.id),
                        ));
                    }
                }
            }
        }
    }
    if checked == 0 {
        return skip("no records to read back");
    }
    Ok(Outcome::Passed)
}

/// Expands the conformance suite for a fixture: a module with one `#[tokio::test]` per
/// behaviour.
///
/// The fixture is a path to an `async fn() -> impl ConformanceFixture`, called once per test,
/// so each behaviour gets a fresh fixture (and simulator). The module is named
/// `conformance_suite`, or as given before `=>` (for crates with several connectors, such
/// as analytics' Mixpanel and GA4). Tests run on a multi-threaded runtime with 2 workers, so
/// the crate needs `tokio` (with `macros` and `rt-multi-thread`) as a dev-dependency.
///
/// ```ignore
/// async fn fixture() -> MyFixture { MyFixture::start().await }
/// apex_connect_testkit::conformance!(fixture);
/// // or, several in one file:
/// apex_connect_testkit::conformance!(mixpanel_conformance => mixpanel_fixture);
/// ```
#[macro_export]
macro_rules! conformance {
    ($fixture:path) => {
        $crate::conformance!(conformance_suite => $fixture);
    };
    ($module:ident => $fixture:path) => {
        #[allow(missing_docs)]
        mod $module {
            use super::*;

            macro_rules! __apex_conformance_behaviour {
                ($name:ident) => {
                    #[::tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let fixture = $fixture().await;
                        $crate::conformance::report(
                            ::core::stringify!($name),
                            $crate::conformance::$name(&fixture).await,
                        );
                    }
                };
            }

            __apex_conformance_behaviour!(full_sync);
            __apex_conformance_behaviour!(resume_from_every_page);
            __apex_conformance_behaviour!(foreign_cursor_is_invalid_input);
            __apex_conformance_behaviour!(unknown_stream_is_not_found);
            __apex_conformance_behaviour!(has_more_advances_cursor);
            __apex_conformance_behaviour!(rate_limit_honoured);
            __apex_conformance_behaviour!(unauthorized_refreshes_once);
            __apex_conformance_behaviour!(webhook_verifies);
            __apex_conformance_behaviour!(webhook_tampered_body_rejected);
            __apex_conformance_behaviour!(webhook_stale_timestamp_rejected);
            __apex_conformance_behaviour!(webhook_missing_signature_rejected);
            __apex_conformance_behaviour!(debug_shows_no_secret);
            __apex_conformance_behaviour!(write_back_smoke);
            __apex_conformance_behaviour!(hostile_records_never_fail_a_page);
            __apex_conformance_behaviour!(records_map_and_match_schema);
            __apex_conformance_behaviour!(parse_record_roundtrip);
        }
    };
}
