//! Delivering signed webhooks to a receiver, as platforms do.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use apex_connect_core::webhook::WebhookRequest;
use apex_connect_core::{Error, ErrorKind, Result, WebhookVerifier};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, header};

/// The outcome of [`WebhookSender::send`]: the receiver's last answer.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WebhookDelivery {
    /// The status of the last attempt.
    pub status: StatusCode,
    /// The body of the last answer.
    pub body: Bytes,
    /// How many attempts were made (1 when the first succeeded).
    pub attempts: u32,
}

impl WebhookDelivery {
    /// Whether the last answer was 2xx.
    pub fn is_success(&self) -> bool {
        self.status.is_success()
    }
}

/// POSTs webhook bodies signed by a [`WebhookVerifier`]'s `sign`, retrying non-2xx answers
/// (and network errors) a few times with a pause between, as platforms do.
///
/// # Behavior
/// - Every attempt is signed afresh at the sender's clock (`SystemTime::now` unless
///   [`WebhookSender::with_clock`]), so a slow retry carries a fresh timestamp.
/// - Headers: `Content-Type: application/json` (unless set), the extra headers, then the
///   signature headers (which win on a clash).
/// - Stops at the first 2xx; after `1 + retries` attempts returns the last answer.
#[derive(Clone)]
pub struct WebhookSender {
    verifier: Arc<dyn WebhookVerifier>,
    client: reqwest::Client,
    headers: HeaderMap,
    retries: u32,
    backoff: Duration,
    clock: Arc<dyn Fn() -> SystemTime + Send + Sync>,
}

impl fmt::Debug for WebhookSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookSender")
            .field("verifier", &self.verifier)
            .field("extra_headers", &self.headers.keys().collect::<Vec<_>>())
            .field("retries", &self.retries)
            .field("backoff", &self.backoff)
            .finish()
    }
}

impl WebhookSender {
    /// A sender signing with `verifier`, 2 retries 100 ms apart.
    pub fn new(verifier: Arc<dyn WebhookVerifier>) -> Self {
        WebhookSender {
            verifier,
            client: reqwest::Client::new(),
            headers: HeaderMap::new(),
            retries: 2,
            backoff: Duration::from_millis(100),
            clock: Arc::new(SystemTime::now),
        }
    }

    /// Retries a non-2xx answer or network error up to `retries` times.
    pub fn with_retries(mut self, retries: u32) -> Self {
        self.retries = retries;
        self
    }

    /// Waits `backoff` times the attempt number between attempts.
    pub fn with_backoff(mut self, backoff: Duration) -> Self {
        self.backoff = backoff;
        self
    }

    /// Sends `name: value` with every delivery (e.g. an event type header).
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.insert(name, value);
        self
    }

    /// Uses this HTTP client.
    pub fn with_client(mut self, client: reqwest::Client) -> Self {
        self.client = client;
        self
    }

    /// Signs with this clock instead of `SystemTime::now` (to send stale deliveries).
    pub fn with_clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// POSTs `body` to `url`, signed, retrying as configured.
    ///
    /// # Errors
    /// `InvalidInput` for a URL that is not absolute; `Config` when the verifier cannot sign
    /// (no secret); `Network` when the last attempt failed without an answer.
    pub async fn send(&self, url: &str, body: impl Into<Bytes>) -> Result<WebhookDelivery> {
        let body: Bytes = body.into();
        let uri: Uri = url.parse().map_err(|e| {
            Error::new(ErrorKind::InvalidInput, "webhook URL is not a valid URI").set_source(e)
        })?;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let mut headers = self.headers.clone();
            if !headers.contains_key(header::CONTENT_TYPE) {
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            }
            let req = WebhookRequest::new(&Method::POST, &uri, &headers, &body);
            let signed = self.verifier.sign(&req, (self.clock)()).map_err(|e| {
                Error::new(ErrorKind::Config, "webhook verifier cannot sign").set_source(e)
            })?;
            for (name, value) in &signed {
                headers.insert(name.clone(), value.clone());
            }
            let result = self
                .client
                .post(url)
                .headers(headers)
                .body(body.clone())
                .send()
                .await;
            let outcome = match result {
                Ok(resp) => {
                    let status = resp.status();
                    match resp.bytes().await {
                        Ok(b) => Ok((status, b)),
                        Err(e) => Err(e),
                    }
                }
                Err(e) => Err(e),
            };
            let retry = attempt <= self.retries;
            match outcome {
                Ok((status, body)) if status.is_success() || !retry => {
                    return Ok(WebhookDelivery {
                        status,
                        body,
                        attempts: attempt,
                    });
                }
                Err(e) if !retry => {
                    return Err(Error::new(
                        ErrorKind::Network,
                        "webhook delivery failed without an answer",
                    )
                    .with_context("attempts", attempt)
                    .set_source(e.without_url()));
                }
                _ => tokio::time::sleep(self.backoff * attempt).await,
            }
        }
    }
}
