//! Outbound Messages: Salesforce's SOAP notifications, verified (a secret in the endpoint
//! URL and the sending org's id), split into one event per notification, answered with the
//! SOAP `Ack`, and turned into changes by re-reading the named records.
//!
//! Outbound Messages carry no signature: Salesforce's documented protections are TLS, its
//! client certificate (shared by every org) and IP ranges, and checking that
//! `OrganizationId` is yours. So the endpoint configured in Salesforce carries a secret
//! (`.../webhooks/salesforce/<connection>?secret=<outbound_secret>`, or as the last path
//! segment), compared in constant time, and the body's `OrganizationId` must be the
//! connection's. The body is not signed: a changed field value cannot be detected, which is
//! why the records are re-read from the API before they are applied.
//!
//! Change Data Capture over the Pub/Sub API (gRPC + Avro) is the later, richer path; it fits
//! the same [`Webhooks`] split (one event per change, `changeOrigin` for echo suppression
//! via the `Sforce-Call-Options` client this connector sends with writes).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::SystemTime;

use apex_connect_core::webhook::{Verified, WebhookReply, WebhookRequest};
use apex_connect_core::{
    Change, Error, ErrorKind, Op, Result, StreamId, VerifiedWebhook, WebhookError, WebhookEvent,
    WebhookVerifier, Webhooks, async_trait,
};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use quick_xml::events::Event;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::connector::SalesforceConnector;
use crate::models;

/// The SOAP answer Salesforce expects, without which it redelivers for 24 hours.
pub const ACK: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\
<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\">\
<soapenv:Body><notificationsResponse xmlns=\"http://soap.sforce.com/2005/09/outbound\">\
<Ack>true</Ack></notificationsResponse></soapenv:Body></soapenv:Envelope>";

/// Notifications per message (Salesforce sends at most 100).
pub const MAX_NOTIFICATIONS: usize = 100;
/// Fields per notified record.
const MAX_FIELDS: usize = 1_000;
/// Longest field value kept (bytes).
const MAX_VALUE: usize = 128 * 1024;
/// Deepest element nesting accepted.
const MAX_DEPTH: usize = 32;
/// The query parameter that may carry the endpoint secret.
pub const SECRET_PARAM: &str = "secret";

/// One notification: a record of an object, with the fields the message was set up to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct OutboundNotification {
    /// The notification id (the same on every redelivery).
    pub notification_id: String,
    /// The object (`Account`), from the `sObject`'s `xsi:type`.
    pub object: String,
    /// The record's `Id`.
    pub id: String,
    /// The fields sent (`None`: `xsi:nil`).
    pub fields: BTreeMap<String, Option<String>>,
}

/// A parsed Outbound Message (`notifications`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct OutboundMessage {
    /// The sending org.
    pub organization_id: String,
    /// The outbound message action.
    pub action_id: Option<String>,
    /// The notifications (1 to 100).
    pub notifications: Vec<OutboundNotification>,
}

fn local(name: &[u8]) -> &[u8] {
    match name.iter().rposition(|b| *b == b':') {
        Some(i) => &name[i + 1..],
        None => name,
    }
}

/// Parses a SOAP `notifications` envelope. Never panics; every count and length is capped.
///
/// # Errors
/// A message naming what is wrong: not XML, a `DOCTYPE`, no `notifications`, no
/// `OrganizationId`, a notification without `Id`, `sObject` type or record `Id`, too many
/// notifications or fields, too deep.
pub fn parse_outbound(body: &[u8]) -> std::result::Result<OutboundMessage, String> {
    let mut reader = quick_xml::Reader::from_reader(body);
    reader.config_mut().trim_text(false);
    let mut stack: Vec<Vec<u8>> = Vec::new();
    let mut text = String::new();
    let mut org: Option<String> = None;
    let mut action: Option<String> = None;
    let mut saw_notifications = false;
    let mut notes: Vec<OutboundNotification> = Vec::new();
    let mut cur: Option<OutboundNotification> = None;
    let mut nil = false;
    let mut buf = Vec::new();
    loop {
        let ev = reader
            .read_event_into(&mut buf)
            .map_err(|e| format!("not XML: {e}"))?;
        match ev {
            Event::DocType(_) => return Err("a DOCTYPE is not allowed".into()),
            Event::Start(ref e) | Event::Empty(ref e) => {
                let empty = matches!(ev, Event::Empty(_));
                let name = local(e.name().as_ref()).to_vec();
                nil = false;
                let mut xsi_type: Option<String> = None;
                for a in e.attributes().with_checks(false).flatten() {
                    let key = local(a.key.as_ref()).to_vec();
                    let val = a
                        .unescape_value()
                        .map(|v| v.into_owned())
                        .unwrap_or_default();
                    if key == b"nil" && val.trim() == "true" {
                        nil = true;
                    }
                    if key == b"type" {
                        xsi_type = Some(val);
                    }
                }
                let depth = stack.len();
                if depth >= MAX_DEPTH {
                    return Err("elements nest too deep".into());
                }
                if depth == 0 && name != b"Envelope" {
                    return Err("the root element is not a SOAP Envelope".into());
                }
                if name == b"notifications" {
                    saw_notifications = true;
                }
                let parent = stack.last().map(Vec::as_slice);
                if name == b"Notification" && parent == Some(b"notifications".as_slice()) {
                    if notes.len() >= MAX_NOTIFICATIONS {
                        return Err(format!("more than {MAX_NOTIFICATIONS} notifications"));
                    }
                    cur = Some(OutboundNotification {
                        notification_id: String::new(),
                        object: String::new(),
                        id: String::new(),
                        fields: BTreeMap::new(),
                    });
                }
                if name == b"sObject"
                    && parent == Some(b"Notification".as_slice())
                    && let Some(n) = cur.as_mut()
                {
                    let t = xsi_type.unwrap_or_default();
                    n.object = t.rsplit(':').next().unwrap_or("").to_string();
                }
                text.clear();
                if empty {
                    close(
                        &name,
                        &stack,
                        &mut text,
                        nil,
                        &mut org,
                        &mut action,
                        &mut cur,
                        &mut notes,
                    )?;
                    nil = false;
                } else {
                    stack.push(name);
                }
            }
            Event::Text(t) => {
                let s = t.decode().map_err(|e| format!("text is not UTF-8: {e}"))?;
                if text.len() + s.len() > MAX_VALUE {
                    return Err("a value is too long".into());
                }
                text.push_str(&s);
            }
            Event::CData(t) => {
                let s = t.decode().map_err(|e| format!("text is not UTF-8: {e}"))?;
                if text.len() + s.len() > MAX_VALUE {
                    return Err("a value is too long".into());
                }
                text.push_str(&s);
            }
            Event::GeneralRef(r) => {
                let resolved = if r.is_char_ref() {
                    r.resolve_char_ref().ok().flatten().map(String::from)
                } else {
                    let name = r
                        .decode()
                        .map_err(|e| format!("entity is not UTF-8: {e}"))?;
                    quick_xml::escape::resolve_predefined_entity(&name).map(str::to_string)
                };
                let s = resolved.ok_or_else(|| "unknown entity reference".to_string())?;
                if text.len() + s.len() > MAX_VALUE {
                    return Err("a value is too long".into());
                }
                text.push_str(&s);
            }
            Event::End(_) => {
                let name = stack
                    .pop()
                    .ok_or_else(|| "unbalanced end tag".to_string())?;
                close(
                    &name,
                    &stack,
                    &mut text,
                    nil,
                    &mut org,
                    &mut action,
                    &mut cur,
                    &mut notes,
                )?;
                nil = false;
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if !stack.is_empty() {
        return Err("the document ends inside an element".into());
    }
    if !saw_notifications {
        return Err("no notifications element".into());
    }
    let organization_id = org.filter(|o| !o.is_empty()).ok_or("no OrganizationId")?;
    if notes.is_empty() {
        return Err("no Notification".into());
    }
    Ok(OutboundMessage {
        organization_id,
        action_id: action,
        notifications: notes,
    })
}

#[allow(clippy::too_many_arguments)]
fn close(
    name: &[u8],
    stack: &[Vec<u8>],
    text: &mut String,
    nil: bool,
    org: &mut Option<String>,
    action: &mut Option<String>,
    cur: &mut Option<OutboundNotification>,
    notes: &mut Vec<OutboundNotification>,
) -> std::result::Result<(), String> {
    let parent = stack.last().map(Vec::as_slice);
    let value = std::mem::take(text);
    match (parent, name) {
        (Some(b"notifications"), b"OrganizationId") => *org = Some(value.trim().to_string()),
        (Some(b"notifications"), b"ActionId") => *action = Some(value.trim().to_string()),
        (Some(b"Notification"), b"Id") => {
            if let Some(n) = cur.as_mut() {
                n.notification_id = value.trim().to_string();
            }
        }
        (Some(b"notifications"), b"Notification") => {
            let n = cur.take().ok_or("a Notification outside notifications")?;
            if n.notification_id.is_empty() || n.notification_id.len() > 64 {
                return Err("a Notification has no usable Id".into());
            }
            if !crate::config::is_api_name(&n.object) {
                return Err("a Notification's sObject has no valid xsi:type".into());
            }
            if n.id.is_empty() || n.id.len() > 64 {
                return Err("a Notification's sObject has no Id".into());
            }
            notes.push(n);
        }
        (Some(b"sObject"), field) => {
            if let Some(n) = cur.as_mut() {
                let field = String::from_utf8_lossy(field).into_owned();
                if field == "Id" {
                    n.id = value.trim().to_string();
                }
                if n.fields.len() >= MAX_FIELDS {
                    return Err("a notified record has too many fields".into());
                }
                n.fields.insert(field, (!nil).then_some(value));
            }
        }
        _ => {}
    }
    Ok(())
}

/// Verifies Outbound Messages of one connection: the endpoint secret and the org.
#[derive(Clone)]
pub struct OutboundMessages {
    secret: SecretString,
    organization_id: String,
}

impl fmt::Debug for OutboundMessages {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboundMessages")
            .field("secret", &"[redacted]")
            .field("organization_id", &self.organization_id)
            .finish()
    }
}

impl OutboundMessages {
    /// A verifier for messages of `organization_id` sent to an endpoint carrying `secret`.
    pub fn new(secret: SecretString, organization_id: impl Into<String>) -> Self {
        OutboundMessages {
            secret,
            organization_id: organization_id.into(),
        }
    }

    /// Whether `org` is this connection's org (15-character prefixes compared: an 18-character
    /// id adds a checksum suffix).
    pub fn same_org(&self, org: &str) -> bool {
        let a = self
            .organization_id
            .get(..15)
            .unwrap_or(&self.organization_id);
        let b = org.get(..15).unwrap_or(org);
        a.len() == 15 && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
    }

    fn secret_in(&self, uri: &http::Uri) -> bool {
        let want = self.secret.expose_secret().as_bytes();
        if want.is_empty() {
            return false;
        }
        let last = uri.path().rsplit('/').next().unwrap_or("");
        let from_query = uri.query().and_then(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == SECRET_PARAM)
                .map(|(_, v)| v.into_owned())
        });
        let path_ok = bool::from(last.as_bytes().ct_eq(want));
        let query_ok = from_query.is_some_and(|v| bool::from(v.as_bytes().ct_eq(want)));
        path_ok | query_ok
    }
}

impl WebhookVerifier for OutboundMessages {
    /// - `Content-Type` must be present (`MissingHeader`) and XML (`Malformed`).
    /// - The URL must carry the secret (last path segment or `?secret=`): else `BadSignature`.
    /// - The body must be a `notifications` envelope (`Malformed`) of this org
    ///   (`BadSignature`). No timestamp is signed: Salesforce signs none.
    fn verify(
        &self,
        request: &WebhookRequest<'_>,
        _now: SystemTime,
    ) -> std::result::Result<Verified, WebhookError> {
        let ctype = request.require_header("content-type")?;
        if !ctype.to_ascii_lowercase().contains("xml") {
            return Err(WebhookError::Malformed(
                "an Outbound Message is text/xml".into(),
            ));
        }
        if !self.secret_in(request.uri) {
            return Err(WebhookError::BadSignature);
        }
        let msg = parse_outbound(request.body).map_err(|e| WebhookError::Malformed(e.into()))?;
        if !self.same_org(&msg.organization_id) {
            return Err(WebhookError::BadSignature);
        }
        Ok(Verified::default())
    }

    /// The headers Salesforce sends (`Content-Type: text/xml; charset=utf-8`, `SOAPAction`);
    /// the secret goes in the URL, which the sender chooses.
    fn sign(
        &self,
        _request: &WebhookRequest<'_>,
        _now: SystemTime,
    ) -> std::result::Result<HeaderMap, WebhookError> {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/xml; charset=utf-8"),
        );
        h.insert("soapaction", HeaderValue::from_static("\"\""));
        Ok(h)
    }
}

/// The body stored for one notification (an inbox event).
#[derive(Debug, Serialize, Deserialize)]
struct EventBody {
    organization_id: String,
    #[serde(default)]
    action_id: Option<String>,
    notification: OutboundNotification,
}

/// The notifications of a stored event body: one JSON event, or a whole SOAP envelope.
fn notifications_of(body: &[u8]) -> Result<Vec<OutboundNotification>> {
    if body.first() == Some(&b'{') {
        let e: EventBody = serde_json::from_slice(body).map_err(|e| {
            Error::invalid_input("the event is not a stored Outbound Message notification")
                .set_source(e)
        })?;
        return Ok(vec![e.notification]);
    }
    parse_outbound(body)
        .map(|m| m.notifications)
        .map_err(|e| Error::invalid_input(format!("the body is not an Outbound Message: {e}")))
}

#[async_trait]
impl Webhooks for SalesforceConnector {
    fn verifier(&self) -> &dyn WebhookVerifier {
        match &self.webhooks {
            Some(v) => v,
            None => &NO_WEBHOOKS,
        }
    }

    /// One event per notification, keyed `<org>:<notification id>` (the same on every
    /// redelivery), its body the notification as JSON.
    fn events(
        &self,
        _verified: &Verified,
        body: &Bytes,
    ) -> std::result::Result<Vec<WebhookEvent>, WebhookError> {
        let msg = parse_outbound(body).map_err(|e| WebhookError::Malformed(e.into()))?;
        let org15 = msg
            .organization_id
            .get(..15)
            .unwrap_or(&msg.organization_id)
            .to_string();
        msg.notifications
            .into_iter()
            .map(|n| {
                let id = format!("{org15}:{}", n.notification_id);
                let body = serde_json::to_vec(&EventBody {
                    organization_id: msg.organization_id.clone(),
                    action_id: msg.action_id.clone(),
                    notification: n,
                })
                .map_err(|_| WebhookError::Malformed("notification cannot be stored".into()))?;
                Ok(WebhookEvent::new(id, Bytes::from(body)))
            })
            .collect()
    }

    fn accepted_reply(&self, _verified: &Verified, _body: &Bytes) -> Option<WebhookReply> {
        Some(WebhookReply {
            status: 200,
            content_type: "text/xml; charset=utf-8",
            body: Bytes::from_static(ACK.as_bytes()),
        })
    }

    async fn parse(&self, webhook: &VerifiedWebhook) -> Result<Vec<Change>> {
        let mut out = self.parse_batch(std::slice::from_ref(webhook)).await;
        out.pop().unwrap_or_else(|| Ok(Vec::new()))
    }

    /// Re-reads every notified record in as few queries as possible (grouped by object, 200
    /// ids per query); a record no longer visible is a delete; our own writes coming back
    /// (see [`SalesforceConnector::is_echo`]) are dropped.
    async fn parse_batch(&self, webhooks: &[VerifiedWebhook]) -> Vec<Result<Vec<Change>>> {
        let parsed: Vec<Result<Vec<OutboundNotification>>> =
            webhooks.iter().map(|w| notifications_of(&w.body)).collect();
        let mut by_object: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for n in parsed.iter().flatten().flatten() {
            let ids = by_object.entry(n.object.clone()).or_default();
            if !ids.contains(&n.id) {
                ids.push(n.id.clone());
            }
        }
        let mut found: HashMap<(String, String), apex_connect_core::Record> = HashMap::new();
        let mut failed: HashMap<String, Error> = HashMap::new();
        for (object, ids) in by_object {
            if !self.config().objects.contains(&object) {
                failed.insert(
                    object.clone(),
                    Error::invalid_input("the notified object is not synced by this connection")
                        .with_context("object", &object),
                );
                continue;
            }
            match self.read_by_ids(&object, &ids).await {
                Ok(records) => {
                    for r in records {
                        found.insert((object.clone(), r.id.clone()), r);
                    }
                }
                Err(e) => {
                    failed.insert(object, e);
                }
            }
        }
        parsed
            .into_iter()
            .map(|p| {
                let notes = p?;
                let mut changes = Vec::new();
                for n in notes {
                    if let Some(e) = failed.get(&n.object) {
                        return Err(Error::new(e.kind(), e.message().to_string()).with_context("object", &n.object));
                    }
                    let stream = StreamId::new(n.object.clone());
                    match found.get(&(n.object.clone(), n.id.clone())) {
                        Some(r) => {
                            let v: serde_json::Map<String, serde_json::Value> = r.raw.deserialize().unwrap_or_default();
                            let lm = v.get("LastModifiedDate").and_then(|x| x.as_str()).and_then(models::parse_datetime);
                            let by = v.get("LastModifiedById").and_then(|x| x.as_str());
                            if self.is_echo(&n.object, &n.id, lm, by) {
                                tracing::debug!(object = %n.object, id = %n.id, "dropping the echo of our own write");
                                continue;
                            }
                            let mut c = Change::new(stream, n.id.clone(), Op::Upsert, "outbound_message").with_record(r.clone());
                            if let Some(ms) = r.updated_at {
                                c = c.at(ms);
                            }
                            changes.push(c);
                        }
                        None => changes.push(Change::new(stream, n.id.clone(), Op::Delete, "outbound_message_gone")),
                    }
                }
                Ok(changes)
            })
            .collect()
    }
}

/// The verifier of a connection without Outbound Messages: refuses everything.
#[derive(Debug)]
struct NoWebhooks;

static NO_WEBHOOKS: NoWebhooks = NoWebhooks;

impl WebhookVerifier for NoWebhooks {
    fn verify(
        &self,
        _: &WebhookRequest<'_>,
        _: SystemTime,
    ) -> std::result::Result<Verified, WebhookError> {
        Err(WebhookError::NoSecret)
    }
    fn sign(
        &self,
        _: &WebhookRequest<'_>,
        _: SystemTime,
    ) -> std::result::Result<HeaderMap, WebhookError> {
        Err(WebhookError::NoSecret)
    }
}

/// One notification for [`outbound_envelope`]: `(notification id, object, record id,
/// fields)` (a `None` value is sent as `xsi:nil`).
pub type NotificationSpec = (String, String, String, Vec<(String, Option<String>)>);

/// Builds a `notifications` envelope (simulators, tests).
pub fn outbound_envelope(
    organization_id: &str,
    action_id: &str,
    records: &[NotificationSpec],
) -> String {
    let esc = |s: &str| quick_xml::escape::escape(s).into_owned();
    let mut x = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<soapenv:Envelope xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" \
xmlns:xsd=\"http://www.w3.org/2001/XMLSchema\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">\n<soapenv:Body>\n\
<notifications xmlns=\"http://soap.sforce.com/2005/09/outbound\">\n",
    );
    x.push_str(&format!("<OrganizationId>{}</OrganizationId>\n<ActionId>{}</ActionId>\n<SessionId xsi:nil=\"true\"/>\n", esc(organization_id), esc(action_id)));
    x.push_str("<EnterpriseUrl>https://example.my.salesforce.com/services/Soap/c/64.0</EnterpriseUrl>\n<PartnerUrl>https://example.my.salesforce.com/services/Soap/u/64.0</PartnerUrl>\n");
    for (nid, object, id, fields) in records {
        x.push_str(&format!(
            "<Notification>\n<Id>{}</Id>\n<sObject xsi:type=\"sf:{}\" xmlns:sf=\"urn:sobject.enterprise.soap.sforce.com\">\n<sf:Id>{}</sf:Id>\n",
            esc(nid), esc(object), esc(id)
        ));
        for (k, v) in fields {
            match v {
                Some(v) => x.push_str(&format!("<sf:{k}>{}</sf:{k}>\n", esc(v))),
                None => x.push_str(&format!("<sf:{k} xsi:nil=\"true\"/>\n")),
            }
        }
        x.push_str("</sObject>\n</Notification>\n");
    }
    x.push_str("</notifications>\n</soapenv:Body>\n</soapenv:Envelope>\n");
    x
}

/// Whether an error kind of a re-read is worth retrying the event for (kept for callers).
pub fn retryable(e: &Error) -> bool {
    e.is_temporary() || e.kind() == ErrorKind::RateLimited
}
