//! The simulator's data: generated on the fly from the seed and an index, plus a small
//! overlay of mutations. Nothing proportional to the account size is kept in memory.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use serde_json::{Map, Value, json};

/// Generated messages are `STEP_SECS` apart, from `BASE_SECS` on (2020-09-13).
pub(crate) const BASE_SECS: f64 = 1_600_000_000.0;
const STEP_SECS: f64 = 60.0;
const FRACTION: f64 = 0.125;
/// Ids at or above this index belong to the overlay (created by mutations).
pub(crate) const OVERLAY_BASE: u64 = 36u64.pow(8);
/// Ids at or above this index name objects added as they are ([`Overlay::raw`]).
pub(crate) const RAW_BASE: u64 = 36u64.pow(9);

const FIRST: [&str; 16] = [
    "Michael", "Dwight", "Jim", "Pam", "Ryan", "Andy", "Angela", "Kevin", "Oscar", "Stanley",
    "Phyllis", "Meredith", "Creed", "Kelly", "Toby", "Erin",
];
const LAST: [&str; 12] = [
    "Scott", "Schrute", "Halpert", "Beesly", "Howard", "Bernard", "Martin", "Malone", "Martinez",
    "Hudson", "Vance", "Palmer",
];
const DOMAINS: [&str; 6] = [
    "dundermifflin.com",
    "limitlesspaper.com",
    "schrutefarms.com",
    "sabre.com",
    "athlead.com",
    "vance-refrigeration.com",
];
pub(super) const TOPICS: [&str; 12] = [
    "Paper order",
    "Invoice question",
    "Delivery delay",
    "Quarterly review",
    "Printer jam",
    "Pricing update",
    "Warehouse visit",
    "Contract renewal",
    "Refund request",
    "New account",
    "Holiday schedule",
    "Sample request",
];
const WORDS: [&str; 16] = [
    "please", "paper", "order", "thanks", "shipment", "invoice", "tomorrow", "regional", "manager",
    "beets", "branch", "client", "sale", "quote", "reply", "soon",
];
const TAG_NAMES: [&str; 10] = [
    "VIP",
    "Billing",
    "Urgent",
    "Feedback",
    "Bug",
    "Sales",
    "Support",
    "Churn risk",
    "Partner",
    "Follow-up",
];
pub(super) const STATUSES: [&str; 3] = ["assigned", "unassigned", "archived"];

/// A 64-bit mix (SplitMix64): the same seed and index always give the same value.
pub(crate) fn mix(seed: u64, stream: u64, i: u64) -> u64 {
    let mut z = seed
        .wrapping_add(stream.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(i.wrapping_mul(0xBF58_476D_1CE4_E5B9));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Lower-case base 36.
pub(crate) fn b36(mut n: u64) -> String {
    const DIGITS: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    if n == 0 {
        return "0".into();
    }
    let mut out = Vec::new();
    while n > 0 {
        out.push(DIGITS[(n % 36) as usize]);
        n /= 36;
    }
    out.reverse();
    String::from_utf8(out).unwrap_or_default()
}

/// Parses `<prefix>_<base36>` back into an index.
pub(crate) fn parse_id(id: &str, prefix: &str) -> Option<u64> {
    let rest = id.strip_prefix(prefix)?.strip_prefix('_')?;
    if rest.is_empty() || rest.len() > 12 {
        return None;
    }
    u64::from_str_radix(rest, 36).ok()
}

/// The sizes and seed of a data set.
#[derive(Debug, Clone)]
pub(crate) struct Shape {
    pub(crate) seed: u64,
    pub(crate) conversations: u64,
    pub(crate) messages_per_conversation: u64,
    pub(crate) comments_per_conversation: u64,
    pub(crate) contacts: u64,
    pub(crate) tags: u64,
    pub(crate) teammates: u64,
    pub(crate) inboxes: u64,
    pub(crate) company: String,
}

impl Shape {
    pub(crate) fn messages(&self) -> u64 {
        self.conversations * self.messages_per_conversation
    }
}

/// A message created by a mutation.
#[derive(Debug, Clone)]
pub(crate) struct NewMessage {
    pub(crate) conversation: u64,
    pub(crate) created_at: f64,
    pub(crate) text: String,
    pub(crate) inbound: bool,
}

/// A comment created by a mutation.
#[derive(Debug, Clone)]
pub(crate) struct NewComment {
    pub(crate) conversation: u64,
    pub(crate) posted_at: f64,
    pub(crate) body: String,
    pub(crate) author: u64,
}

/// A conversation's changed state.
#[derive(Debug, Clone, Default)]
pub(crate) struct ConversationChange {
    pub(crate) updated_at: f64,
    pub(crate) status: Option<String>,
    pub(crate) tags: Option<BTreeSet<u64>>,
    pub(crate) messages: Vec<u64>,
    pub(crate) comments: Vec<u64>,
}

/// A contact's changed state.
#[derive(Debug, Clone, Default)]
pub(crate) struct ContactChange {
    pub(crate) updated_at: f64,
    pub(crate) custom_fields: Map<String, Value>,
    pub(crate) name: Option<String>,
}

/// An event appended by a mutation.
#[derive(Debug, Clone)]
pub(crate) struct NewEvent {
    pub(crate) kind: String,
    pub(crate) emitted_at: f64,
    /// The conversation it is about; `None` for contact events.
    pub(crate) conversation: Option<u64>,
    /// `(target _meta.type, target data)`.
    pub(crate) target: Option<(String, Value)>,
    /// An event added as it is (served instead of one rendered from the fields above).
    pub(crate) raw: Option<Value>,
}

/// Everything mutations changed.
#[derive(Debug, Default)]
pub(crate) struct Overlay {
    pub(crate) conversations: HashMap<u64, ConversationChange>,
    pub(crate) contacts: HashMap<u64, ContactChange>,
    pub(crate) messages: Vec<NewMessage>,
    pub(crate) comments: Vec<NewComment>,
    pub(crate) events: Vec<NewEvent>,
    pub(crate) last_time: f64,
    /// Objects added as they are, per stream (messages and comments belong to conversation
    /// 0; events are in `events`). Object `n` of a stream has index `RAW_BASE + n`.
    pub(crate) raw: HashMap<&'static str, Vec<Value>>,
}

impl Overlay {
    /// A timestamp after every generated one and after the previous overlay timestamp, taken
    /// from the wall clock (rounded to ms).
    pub(crate) fn tick(&mut self) -> f64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as f64 / 1000.0)
            .unwrap_or(0.0);
        let t = now.max(self.last_time + 0.001);
        self.last_time = t;
        t
    }

    /// The objects of `stream` added as they are.
    pub(crate) fn raw(&self, stream: &str) -> &[Value] {
        self.raw.get(stream).map_or(&[], Vec::as_slice)
    }

    /// Touched conversations, most recently updated first.
    pub(crate) fn touched_desc(&self) -> Vec<(u64, f64)> {
        let mut v: Vec<(u64, f64)> = self
            .conversations
            .iter()
            .map(|(c, ch)| (*c, ch.updated_at))
            .collect();
        v.sort_by(|a, b| b.1.total_cmp(&a.1).then(b.0.cmp(&a.0)));
        v
    }

    /// Changed contacts, least recently updated first.
    pub(crate) fn contacts_asc(&self) -> Vec<(u64, f64)> {
        let mut v: Vec<(u64, f64)> = self
            .contacts
            .iter()
            .map(|(c, ch)| (*c, ch.updated_at))
            .collect();
        v.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        v
    }
}

/// The generator and renderer of a data set (pure: the overlay is passed in).
#[derive(Debug, Clone)]
pub(crate) struct Data {
    pub(crate) shape: Shape,
    /// The simulator's base URL for `_links` (set once the server is bound).
    pub(crate) base: String,
    /// The teammates, rendered once: every message and comment embeds one or two.
    teammates: Vec<Value>,
    /// The same teammates serialized, plus the `name` and `handle` of their recipient
    /// entries (for the list renderer in `render.rs`).
    pub(super) teammates_json: Vec<TeammateJson>,
    /// The first tags serialized (conversations embed them).
    pub(super) tags_json: Vec<String>,
}

/// A teammate pre-rendered for the list renderer.
#[derive(Debug, Clone)]
pub(super) struct TeammateJson {
    /// The teammate object as JSON.
    pub(super) object: String,
    /// `"First Last"`.
    pub(super) name: String,
    /// The email.
    pub(super) email: String,
}

impl Data {
    /// The data set of `shape`, linking to `base`.
    pub(crate) fn new(shape: Shape, base: String) -> Data {
        let mut d = Data {
            shape,
            base,
            teammates: Vec::new(),
            teammates_json: Vec::new(),
            tags_json: Vec::new(),
        };
        d.teammates = (0..d.shape.teammates.min(1_000))
            .map(|t| d.render_teammate(t))
            .collect();
        d.teammates_json = d
            .teammates
            .iter()
            .map(|tm| TeammateJson {
                object: tm.to_string(),
                name: format!(
                    "{} {}",
                    tm["first_name"].as_str().unwrap_or(""),
                    tm["last_name"].as_str().unwrap_or("")
                ),
                email: tm["email"].as_str().unwrap_or("").to_string(),
            })
            .collect();
        d.tags_json = (0..d.shape.tags.min(10_000))
            .map(|t| d.tag(t).to_string())
            .collect();
        d
    }

    pub(super) fn link(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub(super) fn pick<'a>(&self, list: &[&'a str], stream: u64, i: u64) -> &'a str {
        list[(mix(self.shape.seed, stream, i) % list.len() as u64) as usize]
    }

    // ----- timestamps

    pub(crate) fn message_time(&self, i: u64) -> f64 {
        BASE_SECS + i as f64 * STEP_SECS + FRACTION
    }

    pub(crate) fn conversation_created(&self, c: u64) -> f64 {
        if self.shape.messages_per_conversation == 0 {
            BASE_SECS + c as f64 * STEP_SECS + FRACTION
        } else {
            self.message_time(c * self.shape.messages_per_conversation)
        }
    }

    pub(crate) fn conversation_updated_generated(&self, c: u64) -> f64 {
        let m = self.shape.messages_per_conversation;
        if m == 0 {
            self.conversation_created(c)
        } else {
            self.message_time(c * m + m - 1)
        }
    }

    pub(crate) fn contact_time(&self, k: u64) -> f64 {
        BASE_SECS - 86_400.0 + k as f64 * 0.5
    }

    fn tag_time(&self, t: u64) -> f64 {
        BASE_SECS - 200_000.0 + t as f64
    }

    // ----- ids

    pub(crate) fn conversation_id(c: u64) -> String {
        format!("cnv_{}", b36(c))
    }
    pub(crate) fn message_id(i: u64) -> String {
        format!("msg_{}", b36(i))
    }
    pub(crate) fn comment_id(i: u64) -> String {
        format!("com_{}", b36(i))
    }
    pub(crate) fn contact_id(k: u64) -> String {
        format!("crd_{}", b36(k))
    }
    pub(crate) fn tag_id(t: u64) -> String {
        format!("tag_{}", b36(t))
    }
    pub(crate) fn teammate_id(t: u64) -> String {
        format!("tea_{}", b36(t))
    }
    pub(crate) fn inbox_id(i: u64) -> String {
        format!("inb_{}", b36(i))
    }
    pub(crate) fn event_id(i: u64) -> String {
        format!("evt_{}", b36(i))
    }

    // ----- objects

    pub(crate) fn teammate(&self, t: u64) -> Value {
        match self.teammates.get(t as usize) {
            Some(v) => v.clone(),
            None => self.render_teammate(t),
        }
    }

    pub(super) fn render_teammate(&self, t: u64) -> Value {
        let first = FIRST[(t % FIRST.len() as u64) as usize];
        let last = LAST[(t % LAST.len() as u64) as usize];
        let id = Self::teammate_id(t);
        json!({
            "_links": {"self": self.link(&format!("/teammates/{id}")),
                       "related": {"inboxes": self.link(&format!("/teammates/{id}/inboxes")),
                                   "conversations": self.link(&format!("/teammates/{id}/conversations"))}},
            "id": id,
            "email": format!("{}.{}@{}.example", first.to_lowercase(), last.to_lowercase(), self.shape.company),
            "username": format!("{}{}", first.to_lowercase(), t),
            "first_name": first,
            "last_name": last,
            "is_admin": t == 0,
            "is_available": t.is_multiple_of(2),
            "is_blocked": false,
            "type": "user",
            "custom_fields": {}
        })
    }

    pub(crate) fn inbox(&self, i: u64) -> Value {
        let id = Self::inbox_id(i);
        let names = ["Support", "Sales", "Billing", "Partners", "Ops"];
        json!({
            "_links": {"self": self.link(&format!("/inboxes/{id}")),
                       "related": {"conversations": self.link(&format!("/inboxes/{id}/conversations"))}},
            "id": id,
            "name": format!("{} {}", names[(i % 5) as usize], i / 5 + 1),
            "is_private": false,
            "is_public": true,
            "custom_fields": {}
        })
    }

    pub(crate) fn tag(&self, t: u64) -> Value {
        let id = Self::tag_id(t);
        let name = if t < TAG_NAMES.len() as u64 {
            TAG_NAMES[t as usize].to_string()
        } else {
            format!("{} {}", TAG_NAMES[(t % TAG_NAMES.len() as u64) as usize], t)
        };
        json!({
            "_links": {"self": self.link(&format!("/tags/{id}")),
                       "related": {"conversations": self.link(&format!("/tags/{id}/conversations"))}},
            "id": id,
            "name": name,
            "description": format!("Conversations about {}", name.to_lowercase()),
            "highlight": (["blue", "green", "red", "yellow"][(t % 4) as usize]),
            "is_private": false,
            "is_visible_in_conversation_lists": true,
            "created_at": self.tag_time(t),
            "updated_at": self.tag_time(t),
        })
    }

    pub(super) fn contact_names(&self, k: u64) -> (&'static str, &'static str, &'static str) {
        (
            self.pick(&FIRST, 11, k),
            self.pick(&LAST, 12, k),
            self.pick(&DOMAINS, 13, k),
        )
    }

    pub(crate) fn contact_email(&self, k: u64) -> String {
        let (f, l, d) = self.contact_names(k);
        format!("{}.{}{}@{}", f.to_lowercase(), l.to_lowercase(), k, d)
    }

    pub(crate) fn contact(&self, k: u64, overlay: &Overlay) -> Value {
        let (f, l, d) = self.contact_names(k);
        let id = Self::contact_id(k);
        let change = overlay.contacts.get(&k);
        let mut custom = Map::new();
        custom.insert(
            "Tier".into(),
            json!(["gold", "silver", "bronze"][(mix(self.shape.seed, 14, k) % 3) as usize]),
        );
        let mut name = format!("{f} {l}");
        let mut updated = self.contact_time(k);
        if let Some(ch) = change {
            for (key, v) in &ch.custom_fields {
                custom.insert(key.clone(), v.clone());
            }
            if let Some(n) = &ch.name {
                name = n.clone();
            }
            updated = ch.updated_at;
        }
        json!({
            "_links": {"self": self.link(&format!("/contacts/{id}")),
                       "related": {"notes": self.link(&format!("/contacts/{id}/notes")),
                                   "conversations": self.link(&format!("/contacts/{id}/conversations")),
                                   "owner": null}},
            "id": id,
            "name": name,
            "description": format!("Customer at {d}"),
            "avatar_url": null,
            "links": [format!("https://www.{d}")],
            "groups": [],
            "lists": [],
            "handles": [
                {"handle": self.contact_email(k), "source": "email"},
                {"handle": format!("+1555{:07}", k % 10_000_000), "source": "phone"}
            ],
            "custom_fields": custom,
            "is_private": false,
            "created_at": self.contact_time(k),
            "updated_at": updated,
        })
    }

    fn recipient(&self, k: u64, role: &str) -> Value {
        let (f, l, _) = self.contact_names(k);
        json!({
            "_links": {"related": {"contact": self.link(&format!("/contacts/{}", Self::contact_id(k)))}},
            "name": format!("{f} {l}"),
            "handle": self.contact_email(k),
            "role": role,
        })
    }

    fn teammate_recipient(&self, t: u64, role: &str) -> Value {
        let tm = self.teammate(t);
        json!({
            "_links": {"related": {"contact": null}},
            "name": format!("{} {}", tm["first_name"].as_str().unwrap_or(""), tm["last_name"].as_str().unwrap_or("")),
            "handle": tm["email"].clone(),
            "role": role,
        })
    }

    pub(crate) fn conversation_contact(&self, c: u64) -> u64 {
        if self.shape.contacts == 0 {
            0
        } else {
            mix(self.shape.seed, 1, c) % self.shape.contacts
        }
    }

    pub(super) fn conversation_teammate(&self, c: u64) -> u64 {
        mix(self.shape.seed, 2, c) % self.shape.teammates.max(1)
    }

    pub(crate) fn generated_tags(&self, c: u64) -> BTreeSet<u64> {
        let mut s = BTreeSet::new();
        if self.shape.tags > 0 {
            s.insert(mix(self.shape.seed, 3, c) % self.shape.tags);
            if c.is_multiple_of(3) {
                s.insert(mix(self.shape.seed, 4, c) % self.shape.tags);
            }
        }
        s
    }

    pub(crate) fn conversation_tags(&self, c: u64, overlay: &Overlay) -> BTreeSet<u64> {
        overlay
            .conversations
            .get(&c)
            .and_then(|ch| ch.tags.clone())
            .unwrap_or_else(|| self.generated_tags(c))
    }

    pub(crate) fn conversation_updated(&self, c: u64, overlay: &Overlay) -> f64 {
        overlay
            .conversations
            .get(&c)
            .map(|ch| ch.updated_at)
            .unwrap_or_else(|| self.conversation_updated_generated(c))
    }

    pub(crate) fn conversation(&self, c: u64, overlay: &Overlay) -> Value {
        let id = Self::conversation_id(c);
        let change = overlay.conversations.get(&c);
        let status = change
            .and_then(|ch| ch.status.clone())
            .unwrap_or_else(|| self.pick(&STATUSES, 5, c).to_string());
        let assignee = if status == "assigned" {
            self.teammate(self.conversation_teammate(c))
        } else {
            Value::Null
        };
        let tags: Vec<Value> = self
            .conversation_tags(c, overlay)
            .into_iter()
            .filter(|t| *t < self.shape.tags)
            .map(|t| self.tag(t))
            .collect();
        let last_message = self.last_message_id(c, overlay);
        json!({
            "_links": {"self": self.link(&format!("/conversations/{id}")),
                       "related": {
                           "events": self.link(&format!("/conversations/{id}/events")),
                           "followers": self.link(&format!("/conversations/{id}/followers")),
                           "messages": self.link(&format!("/conversations/{id}/messages")),
                           "comments": self.link(&format!("/conversations/{id}/comments")),
                           "inboxes": self.link(&format!("/conversations/{id}/inboxes")),
                           "last_message": last_message.map(|m| self.link(&format!("/messages/{m}?referer=conversation"))),
                       }},
            "id": id,
            "type": "email",
            "subject": format!("{} #{}", self.pick(&TOPICS, 6, c), c),
            "status": status,
            "status_id": null,
            "status_category": if status == "archived" { "resolved" } else { "open" },
            "ticket_ids": [],
            "assignee": assignee,
            "recipient": if self.shape.contacts > 0 { self.recipient(self.conversation_contact(c), "from") } else { Value::Null },
            "tags": tags,
            "links": [],
            "custom_fields": {"Priority": (["low", "normal", "high"][(mix(self.shape.seed, 7, c) % 3) as usize])},
            "created_at": self.conversation_created(c),
            "updated_at": self.conversation_updated(c, overlay),
            "waiting_since": null,
            "is_private": false,
            "scheduled_reminders": [],
            "metadata": {},
        })
    }

    pub(super) fn last_message_id(&self, c: u64, overlay: &Overlay) -> Option<String> {
        if let Some(n) = overlay
            .conversations
            .get(&c)
            .and_then(|ch| ch.messages.last())
        {
            return Some(Self::message_id(OVERLAY_BASE + n));
        }
        let m = self.shape.messages_per_conversation;
        (m > 0).then(|| Self::message_id(c * m + m - 1))
    }

    pub(super) fn sentence(&self, stream: u64, i: u64, words: usize) -> String {
        (0..words as u64)
            .map(|w| self.pick(&WORDS, stream, i.wrapping_mul(31).wrapping_add(w)))
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// Message `i` (generated, `i < messages()`) or overlay message `OVERLAY_BASE + n`.
    pub(crate) fn message(&self, i: u64, overlay: &Overlay) -> Option<Value> {
        if i >= RAW_BASE {
            return overlay
                .raw("messages")
                .get((i - RAW_BASE) as usize)
                .cloned();
        }
        let (conv, created, text, inbound, author_t) = if i >= OVERLAY_BASE {
            let m = overlay.messages.get((i - OVERLAY_BASE) as usize)?;
            (
                m.conversation,
                m.created_at,
                m.text.clone(),
                m.inbound,
                self.conversation_teammate(m.conversation),
            )
        } else {
            if i >= self.shape.messages() {
                return None;
            }
            let mpc = self.shape.messages_per_conversation;
            let c = i / mpc;
            let j = i % mpc;
            (
                c,
                self.message_time(i),
                format!("{}.", self.sentence(8, i, 6 + (i % 7) as usize)),
                j.is_multiple_of(2),
                self.conversation_teammate(c),
            )
        };
        let id = Self::message_id(i);
        let cid = Self::conversation_id(conv);
        let contact = self.conversation_contact(conv);
        let (author, recipients) = if inbound {
            (
                Value::Null,
                json!([
                    self.recipient(contact, "from"),
                    self.teammate_recipient(author_t, "to")
                ]),
            )
        } else {
            (
                self.teammate(author_t),
                json!([
                    self.teammate_recipient(author_t, "from"),
                    self.recipient(contact, "to")
                ]),
            )
        };
        let attachments = if mix(self.shape.seed, 9, i).is_multiple_of(5) {
            json!([{
                "id": format!("fil_{}", b36(i)),
                "filename": format!("scan-{}.pdf", b36(i)),
                "url": self.link(&format!("/download/fil_{}", b36(i))),
                "content_type": "application/pdf",
                "size": 1000 + mix(self.shape.seed, 10, i) % 100_000,
                "metadata": {"is_inline": false}
            }])
        } else {
            json!([])
        };
        let blurb: String = text.chars().take(60).collect();
        Some(json!({
            "_links": {"self": self.link(&format!("/messages/{id}")),
                       "related": {"conversation": self.link(&format!("/conversations/{cid}")),
                                   "message_replied_to": null,
                                   "message_seen": self.link(&format!("/messages/{id}/seen"))}},
            "id": id,
            "message_uid": format!("{:016x}", mix(self.shape.seed, 11, i)),
            "type": "email",
            "is_inbound": inbound,
            "draft_mode": null,
            "error_type": null,
            "version": null,
            "created_at": created,
            "subject": format!("Re: {} #{}", self.pick(&TOPICS, 6, conv), conv),
            "blurb": blurb,
            "author": author,
            "recipients": recipients,
            "body": format!("<p>{text}</p>"),
            "text": text,
            "attachments": attachments,
            "signature": null,
            "metadata": {},
        }))
    }

    /// Messages of conversation `c`, newest first: overlay ones, then generated.
    pub(crate) fn message_ids_desc(&self, c: u64, overlay: &Overlay) -> Vec<u64> {
        let mut out: Vec<u64> = overlay
            .conversations
            .get(&c)
            .map(|ch| ch.messages.iter().rev().map(|n| OVERLAY_BASE + n).collect())
            .unwrap_or_default();
        let m = self.shape.messages_per_conversation;
        out.extend((0..m).rev().map(|j| c * m + j));
        if c == 0 {
            out.extend((0..overlay.raw("messages").len() as u64).map(|n| RAW_BASE + n));
        }
        out
    }

    pub(crate) fn comment(&self, i: u64, overlay: &Overlay) -> Option<Value> {
        if i >= RAW_BASE {
            return overlay
                .raw("comments")
                .get((i - RAW_BASE) as usize)
                .cloned();
        }
        let (conv, posted, body, author) = if i >= OVERLAY_BASE {
            let m = overlay.comments.get((i - OVERLAY_BASE) as usize)?;
            (m.conversation, m.posted_at, m.body.clone(), m.author)
        } else {
            let cpc = self.shape.comments_per_conversation;
            if cpc == 0 || i >= self.shape.conversations * cpc {
                return None;
            }
            let c = i / cpc;
            (
                c,
                self.conversation_created(c) + 30.0 + (i % cpc) as f64,
                format!("@team {}", self.sentence(15, i, 5)),
                self.conversation_teammate(c),
            )
        };
        let id = Self::comment_id(i);
        let cid = Self::conversation_id(conv);
        Some(json!({
            "_links": {"self": self.link(&format!("/comments/{id}")),
                       "related": {"conversation": self.link(&format!("/conversations/{cid}")),
                                   "mentions": self.link(&format!("/comments/{id}/mentions"))}},
            "id": id,
            "author": self.teammate(author),
            "body": body,
            "posted_at": posted,
            "attachments": [],
            "is_pinned": false,
        }))
    }

    pub(crate) fn comment_ids(&self, c: u64, overlay: &Overlay) -> Vec<u64> {
        let cpc = self.shape.comments_per_conversation;
        let mut out: Vec<u64> = (0..cpc).map(|j| c * cpc + j).collect();
        if let Some(ch) = overlay.conversations.get(&c) {
            out.extend(ch.comments.iter().map(|n| OVERLAY_BASE + n));
        }
        if c == 0 {
            out.extend((0..overlay.raw("comments").len() as u64).map(|n| RAW_BASE + n));
        }
        out
    }

    /// Generated event `i` belongs to generated message `i`.
    pub(crate) fn generated_event_kind(&self, i: u64) -> &'static str {
        if (i % self.shape.messages_per_conversation.max(1)).is_multiple_of(2) {
            "inbound"
        } else {
            "outbound"
        }
    }

    fn message_preview(&self, i: u64, overlay: &Overlay) -> Value {
        let mut m = self.message(i, overlay).unwrap_or(Value::Null);
        if let Some(obj) = m.as_object_mut() {
            // Events carry the message without its bodies; fetch it for those.
            obj.remove("body");
            obj.remove("text");
        }
        m
    }

    /// Event at position `p` of the ascending feed: generated events first, then the overlay's.
    pub(crate) fn event(&self, p: u64, overlay: &Overlay) -> Option<Value> {
        let g = self.shape.messages();
        let (kind, emitted, conv, source, target) = if p < g {
            let kind = self.generated_event_kind(p);
            let conv = p / self.shape.messages_per_conversation.max(1);
            let source = if kind == "inbound" {
                json!({"_meta": {"type": "inboxes"}, "data": [self.inbox(conv % self.shape.inboxes.max(1))]})
            } else {
                json!({"_meta": {"type": "teammate"}, "data": self.teammate(self.conversation_teammate(conv))})
            };
            (
                kind.to_string(),
                self.message_time(p),
                Some(conv),
                source,
                json!({"_meta": {"type": "message"}, "data": self.message_preview(p, overlay)}),
            )
        } else {
            let e = overlay.events.get((p - g) as usize)?;
            if let Some(raw) = &e.raw {
                return Some(raw.clone());
            }
            let target = match &e.target {
                Some((t, data)) => json!({"_meta": {"type": t}, "data": data}),
                None => Value::Null,
            };
            (
                e.kind.clone(),
                e.emitted_at,
                e.conversation,
                json!({"_meta": {"type": "api"}, "data": null}),
                target,
            )
        };
        let id = Self::event_id(p);
        Some(json!({
            "_links": {"self": self.link(&format!("/events/{id}"))},
            "id": id,
            "type": kind,
            "emitted_at": emitted,
            "source": source,
            "target": target,
            "conversation": conv.map_or(Value::Null, |c| self.conversation(c, overlay)),
        }))
    }

    pub(crate) fn event_time(&self, p: u64, overlay: &Overlay) -> Option<f64> {
        let g = self.shape.messages();
        if p < g {
            Some(self.message_time(p))
        } else {
            overlay.events.get((p - g) as usize).map(|e| e.emitted_at)
        }
    }

    pub(crate) fn event_kind(&self, p: u64, overlay: &Overlay) -> Option<String> {
        let g = self.shape.messages();
        if p < g {
            Some(self.generated_event_kind(p).to_string())
        } else {
            overlay.events.get((p - g) as usize).map(|e| e.kind.clone())
        }
    }

    pub(crate) fn events_len(&self, overlay: &Overlay) -> u64 {
        self.shape.messages() + overlay.events.len() as u64
    }

    /// The conversation at position `p` of the list (most recently updated first).
    pub(crate) fn conversation_at(&self, p: u64, touched: &[(u64, f64)]) -> Option<u64> {
        let n = self.shape.conversations;
        if p >= n {
            return None;
        }
        if (p as usize) < touched.len() {
            return Some(touched[p as usize].0);
        }
        let k = p - touched.len() as u64;
        let set: BTreeSet<u64> = touched.iter().map(|t| t.0).collect();
        // The (k+1)-th largest index not in `set`.
        let mut x = n.checked_sub(1 + k)?;
        loop {
            let touched_above = set.range(x..).count() as u64;
            let untouched_above = (n - x) - touched_above;
            if untouched_above > k {
                return Some(x);
            }
            x = x.checked_sub(k + 1 - untouched_above)?;
        }
    }

    /// The contact at position `p` in `updated_at` order: generated untouched ones, then
    /// changed ones.
    pub(crate) fn contact_at(&self, p: u64, changed: &[(u64, f64)]) -> Option<u64> {
        let n = self.shape.contacts;
        let untouched = n - changed.len() as u64;
        if p >= n {
            return None;
        }
        if p >= untouched {
            return changed.get((p - untouched) as usize).map(|c| c.0);
        }
        // The (p+1)-th smallest index not changed.
        let set: BTreeSet<u64> = changed.iter().map(|c| c.0).collect();
        let mut x = p;
        loop {
            let below = set.range(..=x).count() as u64;
            let free = x + 1 - below;
            if free > p && !set.contains(&x) {
                return Some(x);
            }
            x += (p + 1).saturating_sub(free).max(1);
        }
    }

    /// All ids and versions per stream (for tests; materialises the whole data set).
    pub(crate) fn expected(
        &self,
        stream: &str,
        overlay: &Overlay,
    ) -> BTreeMap<String, Option<i64>> {
        let ms = |s: f64| Some((s * 1000.0).round() as i64);
        let mut out = BTreeMap::new();
        match stream {
            "conversations" => {
                for c in 0..self.shape.conversations {
                    out.insert(
                        Self::conversation_id(c),
                        ms(self.conversation_updated(c, overlay)),
                    );
                }
            }
            "messages" => {
                for c in 0..self.shape.conversations {
                    for i in self.message_ids_desc(c, overlay) {
                        let t = if i >= RAW_BASE {
                            self.message(i, overlay)
                                .and_then(|v| v.get("created_at").and_then(Value::as_f64))
                        } else if i >= OVERLAY_BASE {
                            overlay
                                .messages
                                .get((i - OVERLAY_BASE) as usize)
                                .map(|m| m.created_at)
                        } else {
                            Some(self.message_time(i))
                        };
                        out.insert(Self::message_id(i), t.and_then(ms));
                    }
                }
            }
            "comments" => {
                for c in 0..self.shape.conversations {
                    for i in self.comment_ids(c, overlay) {
                        let t = self
                            .comment(i, overlay)
                            .and_then(|v| v["posted_at"].as_f64());
                        out.insert(Self::comment_id(i), t.and_then(ms));
                    }
                }
            }
            "contacts" => {
                for k in 0..self.shape.contacts {
                    let t = overlay
                        .contacts
                        .get(&k)
                        .map(|c| c.updated_at)
                        .unwrap_or_else(|| self.contact_time(k));
                    out.insert(Self::contact_id(k), ms(t));
                }
            }
            "tags" => {
                for t in 0..self.shape.tags {
                    out.insert(Self::tag_id(t), ms(self.tag_time(t)));
                }
            }
            "teammates" => {
                for t in 0..self.shape.teammates {
                    out.insert(Self::teammate_id(t), None);
                }
            }
            "inboxes" => {
                for i in 0..self.shape.inboxes {
                    out.insert(Self::inbox_id(i), None);
                }
            }
            "events" => {
                for p in 0..self.events_len(overlay) {
                    out.insert(Self::event_id(p), self.event_time(p, overlay).and_then(ms));
                }
            }
            _ => {}
        }
        // Objects added as they are (messages and comments are in their conversation's list).
        let prefix = match stream {
            "conversations" => "cnv",
            "contacts" => "crd",
            "tags" => "tag",
            "teammates" => "tea",
            "inboxes" => "inb",
            _ => return out,
        };
        let field = |v: &Value, f: &str| v.get(f).and_then(Value::as_f64);
        for (n, v) in overlay.raw(stream).iter().enumerate() {
            let version = match stream {
                "teammates" | "inboxes" => None,
                _ => field(v, "updated_at")
                    .or_else(|| field(v, "created_at"))
                    .and_then(ms),
            };
            out.insert(format!("{prefix}_{}", b36(RAW_BASE + n as u64)), version);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: u64) -> Data {
        Data::new(
            Shape {
                seed: 7,
                conversations: n,
                messages_per_conversation: 3,
                comments_per_conversation: 1,
                contacts: n,
                tags: 5,
                teammates: 3,
                inboxes: 2,
                company: "acme".into(),
            },
            "http://127.0.0.1:1".into(),
        )
    }

    #[test]
    fn ids_roundtrip_and_determinism() {
        assert_eq!(parse_id(&Data::message_id(123_456), "msg"), Some(123_456));
        assert_eq!(parse_id("msg_", "msg"), None);
        assert_eq!(parse_id("cnv_zz", "msg"), None);
        let d = data(10);
        let o = Overlay::default();
        assert_eq!(d.conversation(3, &o), d.conversation(3, &o));
        assert_eq!(d.message(5, &o), data(10).message(5, &o));
    }

    #[test]
    fn list_orders_cover_everything_once() {
        let d = data(20);
        let touched = vec![(4, 9e9), (17, 8e9), (0, 7e9)];
        let order: Vec<u64> = (0..20)
            .map(|p| d.conversation_at(p, &touched).unwrap())
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..20).collect::<Vec<_>>());
        assert_eq!(&order[..4], &[4, 17, 0, 19]);
        assert!(d.conversation_at(20, &touched).is_none());

        let changed = vec![(3, 9e9), (0, 9.5e9)];
        let order: Vec<u64> = (0..20)
            .map(|p| d.contact_at(p, &changed).unwrap())
            .collect();
        let mut sorted = order.clone();
        sorted.sort();
        assert_eq!(sorted, (0..20).collect::<Vec<_>>());
        assert_eq!(&order[..3], &[1, 2, 4]);
        assert_eq!(&order[18..], &[3, 0]);
    }
}
