//! The Mixpanel HTTP API: the Raw Event Export host and the Query API host of the project's
//! region, their credentials and rate limits, and a line-by-line reader for exports.

use std::fmt;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use apex_connect_core::http::{HttpClient, Idempotent, StaticToken};
use apex_connect_core::{Error, ErrorKind, RateGate, Result};
use async_compression::tokio::bufread::GzipDecoder;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bytes::{Bytes, BytesMut};
use chrono::NaiveDate;
use futures::{Stream, StreamExt, TryStreamExt};
use http::{Method, header};
use secrecy::{ExposeSecret, SecretString};
use tokio::io::AsyncRead;
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, Decoder, FramedRead};
use tokio_util::io::StreamReader;

use super::config::MixpanelConfig;
use super::error::MixpanelPolicy;
use crate::quota::{QuotaGate, QuotaPermit, window_gate};

/// Path of the Raw Event Export (on the export host).
pub const EXPORT_PATH: &str = "/api/2.0/export";
/// Path of Engage (profiles) on the Query API host.
pub const ENGAGE_PATH: &str = "/api/query/engage";
/// Path of the cohort list on the Query API host.
pub const COHORTS_PATH: &str = "/api/query/cohorts/list";
/// Path of the funnel list on the Query API host.
pub const FUNNELS_LIST_PATH: &str = "/api/query/funnels/list";
/// Path of funnel results on the Query API host.
pub const FUNNELS_PATH: &str = "/api/query/funnels";

/// How the connection authenticates (HTTP Basic either way).
#[derive(Clone)]
#[non_exhaustive]
pub enum MixpanelAuth {
    /// A service account: `username:secret`, with `project_id` on every request.
    ServiceAccount {
        /// The service account's username.
        username: String,
        /// Its secret.
        secret: SecretString,
    },
    /// The legacy project API secret (`secret:` with an empty password).
    ProjectSecret(SecretString),
}

impl fmt::Debug for MixpanelAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MixpanelAuth::ServiceAccount { username, .. } => f
                .debug_struct("ServiceAccount")
                .field("username", username)
                .field("secret", &"[redacted]")
                .finish(),
            MixpanelAuth::ProjectSecret(_) => f.write_str("ProjectSecret([redacted])"),
        }
    }
}

impl MixpanelAuth {
    /// The `Authorization` header value.
    fn header(&self) -> String {
        let pair = match self {
            MixpanelAuth::ServiceAccount { username, secret } => {
                format!("{username}:{}", secret.expose_secret())
            }
            MixpanelAuth::ProjectSecret(secret) => format!("{}:", secret.expose_secret()),
        };
        format!("Basic {}", STANDARD.encode(pair))
    }
}

/// One line of an export as read: its bytes, or the notice that it was longer than allowed
/// (discarded, with its first bytes kept for the quarantine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExportLine {
    /// A line, without its `\n`.
    Line(Bytes),
    /// A line longer than the limit: its first bytes.
    TooLong(Bytes),
}

/// How much of an over-long line is kept for its quarantine record.
const TOO_LONG_PREFIX: usize = 1024;

/// A `\n`-delimited line decoder with a maximum line length (tokio-util's
/// [`AnyDelimiterCodec`]). An over-long line is not an error that ends the stream: it becomes
/// [`ExportLine::TooLong`] and the codec discards the rest of it.
#[derive(Debug)]
pub struct JsonLinesCodec {
    inner: AnyDelimiterCodec,
}

impl JsonLinesCodec {
    /// A codec for lines of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        JsonLinesCodec {
            inner: AnyDelimiterCodec::new_with_max_length(b"\n".to_vec(), Vec::new(), max),
        }
    }

    fn map(
        r: std::result::Result<Option<Bytes>, AnyDelimiterCodecError>,
        buf: &BytesMut,
    ) -> io::Result<Option<ExportLine>> {
        match r {
            Ok(Some(b)) => Ok(Some(ExportLine::Line(b))),
            Ok(None) => Ok(None),
            Err(AnyDelimiterCodecError::MaxChunkLengthExceeded) => {
                let n = buf.len().min(TOO_LONG_PREFIX);
                Ok(Some(ExportLine::TooLong(Bytes::copy_from_slice(&buf[..n]))))
            }
            Err(AnyDelimiterCodecError::Io(e)) => Err(e),
        }
    }
}

impl Decoder for JsonLinesCodec {
    type Item = ExportLine;
    type Error = io::Error;

    fn decode(&mut self, buf: &mut BytesMut) -> io::Result<Option<ExportLine>> {
        let r = self.inner.decode(buf);
        Self::map(r, buf)
    }

    fn decode_eof(&mut self, buf: &mut BytesMut) -> io::Result<Option<ExportLine>> {
        let r = self.inner.decode_eof(buf);
        Self::map(r, buf)
    }
}

/// An export response read line by line as it arrives (gunzipped when the answer is gzip):
/// never more than one read buffer and one line in memory.
pub struct ExportLines {
    lines: FramedRead<Pin<Box<dyn AsyncRead + Send>>, JsonLinesCodec>,
    _permit: QuotaPermit,
}

impl fmt::Debug for ExportLines {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExportLines").finish_non_exhaustive()
    }
}

impl ExportLines {
    /// Lines read from `body` (gzip-compressed when `gzip`), at most `max_line` bytes each.
    pub fn from_stream<S>(body: S, gzip: bool, max_line: usize, permit: QuotaPermit) -> Self
    where
        S: Stream<Item = io::Result<Bytes>> + Send + 'static,
    {
        let reader = StreamReader::new(body);
        let reader: Pin<Box<dyn AsyncRead + Send>> = if gzip {
            let mut d = GzipDecoder::new(reader);
            d.multiple_members(true);
            Box::pin(d)
        } else {
            Box::pin(reader)
        };
        ExportLines {
            lines: FramedRead::with_capacity(reader, JsonLinesCodec::new(max_line), 64 * 1024),
            _permit: permit,
        }
    }

    /// The next line; `None` at the end of the body.
    ///
    /// # Errors
    /// `InvalidResponse` (temporary) when the body breaks off or does not gunzip.
    pub async fn next_line(&mut self) -> Option<Result<ExportLine>> {
        let item = self.lines.next().await?;
        Some(item.map_err(|e| {
            Error::new(
                ErrorKind::InvalidResponse,
                "the export body broke off or is not valid gzip",
            )
            .temporary()
            .set_source(e)
        }))
    }
}

/// The Mixpanel API of one connection: the region's two hosts (and no others), HTTP Basic
/// credentials, and the rate limits (per host: `queries_per_hour` in the HTTP stack, so every
/// attempt pays it and a 429 pauses every request; `queries_per_second` and the concurrency cap
/// once per request).
#[derive(Clone)]
pub struct MixpanelApi {
    export: HttpClient,
    query: HttpClient,
    export_gate: QuotaGate,
    query_gate: QuotaGate,
    project: Vec<(&'static str, String)>,
    workspace: Option<String>,
    gzip: bool,
    max_line: usize,
    events: Option<String>,
}

impl fmt::Debug for MixpanelApi {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MixpanelApi")
            .field("export", &self.export)
            .field("query", &self.query)
            .field("export_gate", &self.export_gate)
            .field("query_gate", &self.query_gate)
            .field("gzip", &self.gzip)
            .finish_non_exhaustive()
    }
}

fn stack_gate(config: &MixpanelConfig) -> Result<RateGate> {
    Ok(
        window_gate(config.queries_per_hour, Duration::from_secs(3600))?
            .with_max_wait(config.max_wait()),
    )
}

fn pre_gate(config: &MixpanelConfig, max_concurrent: u32) -> Result<QuotaGate> {
    Ok(
        QuotaGate::new(max_concurrent, config.max_wait())?.with_rate(
            "queries_per_second",
            window_gate(config.queries_per_second, Duration::from_secs(1))?
                .with_max_wait(config.max_wait()),
        ),
    )
}

impl MixpanelApi {
    /// The API for `config` with `auth`; `base_url` replaces both hosts (simulators).
    ///
    /// # Errors
    /// `Config` for bad settings or base URL.
    pub fn new(
        config: &MixpanelConfig,
        auth: &MixpanelAuth,
        base_url: Option<&str>,
    ) -> Result<Self> {
        let credentials = Arc::new(StaticToken::raw(auth.header()));
        let export_base = base_url.unwrap_or(config.region.export_base());
        let query_base = base_url.unwrap_or(config.region.query_base());
        let export = HttpClient::builder(export_base)
            .credentials(credentials.clone())
            .policy(Arc::new(MixpanelPolicy))
            .rate_gate(stack_gate(config)?)
            .timeout(Duration::from_secs(config.export_timeout_secs))
            .build()?;
        let query = HttpClient::builder(query_base)
            .credentials(credentials)
            .policy(Arc::new(MixpanelPolicy))
            .rate_gate(stack_gate(config)?)
            .build()?;
        let mut project = Vec::new();
        if let Some(p) = config.project_id {
            project.push(("project_id", p.to_string()));
        }
        let events =
            if config.events.is_empty() {
                None
            } else {
                Some(serde_json::to_string(&config.events).map_err(|e| {
                    Error::config("Mixpanel `events` cannot be encoded").set_source(e)
                })?)
            };
        Ok(MixpanelApi {
            export,
            query,
            export_gate: pre_gate(config, config.max_concurrent_exports)?,
            query_gate: pre_gate(config, config.max_concurrent_queries)?,
            project,
            workspace: config.workspace_id.map(|w| w.to_string()),
            gzip: config.gzip,
            max_line: config.max_line_bytes,
            events,
        })
    }

    /// The export host's client.
    pub fn export_client(&self) -> &HttpClient {
        &self.export
    }

    /// The Query API host's client.
    pub fn query_client(&self) -> &HttpClient {
        &self.query
    }

    /// The export requests' gate (per-second rate and concurrency).
    pub fn export_gate(&self) -> &QuotaGate {
        &self.export_gate
    }

    fn query_params(&self) -> Vec<(&'static str, String)> {
        let mut q = self.project.clone();
        if let Some(w) = &self.workspace {
            q.push(("workspace_id", w.clone()));
        }
        q
    }

    /// Opens the Raw Event Export of the whole days `from..=to` (in the project's time zone),
    /// times in milliseconds, gzip when configured. The concurrency slot is held until the
    /// returned lines are dropped.
    ///
    /// # Errors
    /// The HTTP stack's kinds (the request is retried before any line is read).
    pub async fn export(&self, from: NaiveDate, to: NaiveDate) -> Result<ExportLines> {
        let permit = self.export_gate.admit().await?;
        let mut q = self.project.clone();
        q.push(("from_date", from.to_string()));
        q.push(("to_date", to.to_string()));
        q.push(("time_in_ms", "true".to_string()));
        if let Some(e) = &self.events {
            q.push(("event", e.clone()));
        }
        let mut rb = self.export.request(Method::GET, EXPORT_PATH)?.query(&q);
        if self.gzip {
            rb = rb.header(header::ACCEPT_ENCODING, "gzip");
        }
        let resp = self.export.send(rb).await?;
        let gzip = resp
            .headers()
            .get(header::CONTENT_ENCODING)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("gzip"));
        let body = resp.bytes_stream().map_err(io::Error::other);
        Ok(ExportLines::from_stream(body, gzip, self.max_line, permit))
    }

    /// One Engage page: `page` of `session_id` (`None`: the first page), members of `cohort`
    /// when given. `POST` with a form body, as documented; marked idempotent (it reads).
    ///
    /// # Errors
    /// The HTTP stack's kinds.
    pub async fn engage(
        &self,
        position: Option<(&str, u32)>,
        cohort: Option<&str>,
        page_size: u32,
    ) -> Result<Bytes> {
        let _permit = self.query_gate.admit().await?;
        let mut form: Vec<(&str, String)> = vec![("page_size", page_size.to_string())];
        if let Some((session, page)) = position {
            form.push(("session_id", session.to_string()));
            form.push(("page", page.to_string()));
        }
        if let Some(c) = cohort {
            let filter = match c.parse::<u64>() {
                Ok(n) => format!("{{\"id\":{n}}}"),
                Err(_) => serde_json::json!({ "id": c }).to_string(),
            };
            form.push(("filter_by_cohort", filter));
        }
        let rb = self
            .query
            .request(Method::POST, ENGAGE_PATH)?
            .query(&self.query_params())
            .form(&form)
            .with_extension(Idempotent);
        let resp = self.query.send(rb).await?;
        crate::body::read_body(resp).await
    }

    /// `GET path` on the Query API host with the project parameters and `extra`.
    ///
    /// # Errors
    /// The HTTP stack's kinds.
    pub async fn query_get(&self, path: &str, extra: &[(&'static str, String)]) -> Result<Bytes> {
        let _permit = self.query_gate.admit().await?;
        let mut q = self.query_params();
        q.extend(extra.iter().cloned());
        self.query.get_bytes(path, &q).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(body: Vec<Bytes>, gzip: bool, max: usize) -> Vec<ExportLine> {
        let permit = QuotaGate::new(1, Duration::from_secs(1))
            .unwrap()
            .admit()
            .await
            .unwrap();
        let stream = futures::stream::iter(body.into_iter().map(Ok));
        let mut lines = ExportLines::from_stream(stream, gzip, max, permit);
        let mut out = Vec::new();
        while let Some(l) = lines.next_line().await {
            out.push(l.unwrap());
        }
        out
    }

    #[tokio::test]
    async fn lines_split_across_chunks_gzip_and_over_long_lines() {
        let body = vec![
            Bytes::from_static(b"{\"a\":1}\n{\"b\""),
            Bytes::from_static(b":2}\r\n"),
            Bytes::from(format!("{}\n", "x".repeat(5000))),
            Bytes::from_static(b"{\"c\":3}"),
        ];
        let got = collect(body.clone(), false, 1000).await;
        assert_eq!(got.len(), 4);
        assert_eq!(got[0], ExportLine::Line(Bytes::from_static(b"{\"a\":1}")));
        assert_eq!(got[1], ExportLine::Line(Bytes::from_static(b"{\"b\":2}\r")));
        assert!(matches!(&got[2], ExportLine::TooLong(p) if p.len() == 1024));
        assert_eq!(got[3], ExportLine::Line(Bytes::from_static(b"{\"c\":3}")));

        // The same, gzip-compressed and cut into 7-byte chunks.
        let plain: Vec<u8> = body.iter().flat_map(|b| b.to_vec()).collect();
        let enc = gzip(&plain).await;
        let chunks: Vec<Bytes> = enc.chunks(7).map(Bytes::copy_from_slice).collect();
        assert_eq!(collect(chunks, true, 1000).await, got);
    }

    async fn gzip(data: &[u8]) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut out = Vec::new();
        let mut enc = async_compression::tokio::bufread::GzipEncoder::new(data);
        enc.read_to_end(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn broken_gzip_is_a_temporary_error() {
        let permit = QuotaGate::new(1, Duration::from_secs(1))
            .unwrap()
            .admit()
            .await
            .unwrap();
        let stream = futures::stream::iter(vec![Ok(Bytes::from_static(b"not gzip at all"))]);
        let mut lines = ExportLines::from_stream(stream, true, 100, permit);
        let e = lines.next_line().await.unwrap().unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidResponse);
        assert!(e.is_temporary());
    }

    #[test]
    fn auth_headers_and_debug() {
        let sa = MixpanelAuth::ServiceAccount {
            username: "user".into(),
            secret: SecretString::from("s3cret-value"),
        };
        assert_eq!(
            sa.header(),
            format!("Basic {}", STANDARD.encode("user:s3cret-value"))
        );
        assert!(!format!("{sa:?}").contains("s3cret"));
        let ps = MixpanelAuth::ProjectSecret(SecretString::from("projsecret"));
        assert_eq!(
            ps.header(),
            format!("Basic {}", STANDARD.encode("projsecret:"))
        );
        assert!(!format!("{ps:?}").contains("projsecret"));
    }
}
