//! The list renderer: generated objects written straight into one response buffer, with no
//! `serde_json::Value` tree in between.
//!
//! The bytes are exactly those of `serde_json::to_vec` of the `Value` the [`Data`] methods
//! build (keys in sorted order, as serde_json's `Map` keeps them, numbers formatted by
//! serde_json), which the tests below check object by object; objects changed by mutations
//! (the overlay) are still rendered through their `Value`. Teammates and tags, which every
//! message, comment and conversation embeds, are serialized once when the data set is made.

use std::io::Write as _;

use serde::Serialize;

use super::data::{Data, OVERLAY_BASE, Overlay, STATUSES, TOPICS, b36, mix};

/// A JSON writer over a byte buffer (writing into a `Vec` cannot fail).
pub(crate) struct Out<'a>(pub(crate) &'a mut Vec<u8>);

impl Out<'_> {
    fn raw(&mut self, s: &str) {
        self.0.extend_from_slice(s.as_bytes());
    }

    /// A string's contents, escaped as serde_json escapes them.
    fn escaped(&mut self, s: &str) {
        if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
            self.raw(s);
        } else {
            let mut quoted = Vec::with_capacity(s.len() + 8);
            let _ = serde_json::to_writer(&mut quoted, s);
            self.0
                .extend_from_slice(&quoted[1..quoted.len().saturating_sub(1)]);
        }
    }

    /// A JSON string made of `parts`.
    fn str(&mut self, parts: &[&str]) {
        self.0.push(b'"');
        for p in parts {
            self.escaped(p);
        }
        self.0.push(b'"');
    }

    /// A number as serde_json writes an `f64`.
    fn f64(&mut self, f: f64) {
        let _ = serde_json::to_writer(&mut *self.0, &f);
    }

    fn u64(&mut self, n: u64) {
        let _ = write!(self.0, "{n}");
    }

    fn bool(&mut self, b: bool) {
        self.raw(if b { "true" } else { "false" });
    }

    /// Any serializable value, through serde_json (the slow path).
    pub(crate) fn value(&mut self, v: &impl Serialize) {
        let _ = serde_json::to_writer(&mut *self.0, v);
    }

    /// A list answer: `{"_links":{"self":..},"_pagination":{"next":..},"_results":[..]}`
    /// (`_pagination` only when `next` is `Some(..)`), the results written by `items`.
    pub(crate) fn list(
        &mut self,
        base: &str,
        path: &str,
        next: Option<Option<&str>>,
        items: impl FnOnce(&mut Out<'_>),
    ) {
        self.raw("{\"_links\":{\"self\":");
        self.str(&[base, path]);
        self.raw("}");
        if let Some(next) = next {
            self.raw(",\"_pagination\":{\"next\":");
            match next {
                Some(n) => self.str(&[n]),
                None => self.raw("null"),
            }
            self.raw("}");
        }
        self.raw(",\"_results\":[");
        items(self);
        self.raw("]}");
    }

    /// A separator before every item but the first of a list.
    pub(crate) fn comma(&mut self, first: &mut bool) {
        if !std::mem::take(first) {
            self.0.push(b',');
        }
    }
}

impl Data {
    fn teammate_json(&self, out: &mut Out<'_>, t: u64) {
        match self.teammates_json.get(t as usize) {
            Some(tm) => out.raw(&tm.object),
            None => out.value(&self.render_teammate(t)),
        }
    }

    /// `{"_links":{"related":{"contact":null}},"handle":..,"name":..,"role":..}`.
    fn teammate_recipient_json(&self, out: &mut Out<'_>, t: u64, role: &str) {
        let Some(tm) = self.teammates_json.get(t as usize) else {
            let v = self.render_teammate(t);
            let name = format!(
                "{} {}",
                v["first_name"].as_str().unwrap_or(""),
                v["last_name"].as_str().unwrap_or("")
            );
            out.value(&serde_json::json!({
                "_links": {"related": {"contact": null}},
                "name": name,
                "handle": v["email"].clone(),
                "role": role,
            }));
            return;
        };
        out.raw("{\"_links\":{\"related\":{\"contact\":null}},\"handle\":");
        out.str(&[&tm.email]);
        out.raw(",\"name\":");
        out.str(&[&tm.name]);
        out.raw(",\"role\":");
        out.str(&[role]);
        out.raw("}");
    }

    /// A contact as a recipient: `{"_links":{"related":{"contact":..}},"handle","name","role"}`.
    fn recipient_json(&self, out: &mut Out<'_>, k: u64, role: &str) {
        let (f, l, d) = self.contact_names(k);
        let id = Self::contact_id(k);
        out.raw("{\"_links\":{\"related\":{\"contact\":");
        out.str(&[&self.base, "/contacts/", &id]);
        out.raw("}},\"handle\":\"");
        out.escaped(&f.to_lowercase());
        out.raw(".");
        out.escaped(&l.to_lowercase());
        out.u64(k);
        out.raw("@");
        out.escaped(d);
        out.raw("\",\"name\":");
        out.str(&[f, " ", l]);
        out.raw(",\"role\":");
        out.str(&[role]);
        out.raw("}");
    }

    /// Writes message `i` (as [`Data::message`] renders it); `false` when there is none.
    pub(crate) fn write_message(&self, out: &mut Out<'_>, i: u64, overlay: &Overlay) -> bool {
        if i >= OVERLAY_BASE {
            return match self.message(i, overlay) {
                Some(v) => {
                    out.value(&v);
                    true
                }
                None => false,
            };
        }
        if i >= self.shape.messages() {
            return false;
        }
        let mpc = self.shape.messages_per_conversation;
        let conv = i / mpc;
        let inbound = (i % mpc).is_multiple_of(2);
        let author_t = self.conversation_teammate(conv);
        let text = format!("{}.", self.sentence(8, i, 6 + (i % 7) as usize));
        let id = Self::message_id(i);
        let cid = Self::conversation_id(conv);
        let contact = self.conversation_contact(conv);
        let base = self.base.as_str();

        out.raw("{\"_links\":{\"related\":{\"conversation\":");
        out.str(&[base, "/conversations/", &cid]);
        out.raw(",\"message_replied_to\":null,\"message_seen\":");
        out.str(&[base, "/messages/", &id, "/seen"]);
        out.raw("},\"self\":");
        out.str(&[base, "/messages/", &id]);
        out.raw("},\"attachments\":[");
        if mix(self.shape.seed, 9, i).is_multiple_of(5) {
            let f = b36(i);
            out.raw("{\"content_type\":\"application/pdf\",\"filename\":");
            out.str(&["scan-", &f, ".pdf"]);
            out.raw(",\"id\":");
            out.str(&["fil_", &f]);
            out.raw(",\"metadata\":{\"is_inline\":false},\"size\":");
            out.u64(1000 + mix(self.shape.seed, 10, i) % 100_000);
            out.raw(",\"url\":");
            out.str(&[base, "/download/fil_", &f]);
            out.raw("}");
        }
        out.raw("],\"author\":");
        if inbound {
            out.raw("null");
        } else {
            self.teammate_json(out, author_t);
        }
        out.raw(",\"blurb\":");
        match text.char_indices().nth(60) {
            Some((end, _)) => out.str(&[&text[..end]]),
            None => out.str(&[&text]),
        }
        out.raw(",\"body\":");
        out.str(&["<p>", &text, "</p>"]);
        out.raw(",\"created_at\":");
        out.f64(self.message_time(i));
        out.raw(",\"draft_mode\":null,\"error_type\":null,\"id\":");
        out.str(&[&id]);
        out.raw(",\"is_inbound\":");
        out.bool(inbound);
        out.raw(",\"message_uid\":");
        let _ = write!(out.0, "\"{:016x}\"", mix(self.shape.seed, 11, i));
        out.raw(",\"metadata\":{},\"recipients\":[");
        if inbound {
            self.recipient_json(out, contact, "from");
            out.raw(",");
            self.teammate_recipient_json(out, author_t, "to");
        } else {
            self.teammate_recipient_json(out, author_t, "from");
            out.raw(",");
            self.recipient_json(out, contact, "to");
        }
        out.raw("],\"signature\":null,\"subject\":\"Re: ");
        out.escaped(self.pick(&TOPICS, 6, conv));
        let _ = write!(out.0, " #{conv}\"");
        out.raw(",\"text\":");
        out.str(&[&text]);
        out.raw(",\"type\":\"email\",\"version\":null}");
        true
    }

    /// Writes comment `i` (as [`Data::comment`] renders it); `false` when there is none.
    pub(crate) fn write_comment(&self, out: &mut Out<'_>, i: u64, overlay: &Overlay) -> bool {
        let cpc = self.shape.comments_per_conversation;
        if i >= OVERLAY_BASE || cpc == 0 || i >= self.shape.conversations * cpc {
            return match self.comment(i, overlay) {
                Some(v) => {
                    out.value(&v);
                    true
                }
                None => false,
            };
        }
        let c = i / cpc;
        let id = Self::comment_id(i);
        let cid = Self::conversation_id(c);
        let base = self.base.as_str();
        out.raw("{\"_links\":{\"related\":{\"conversation\":");
        out.str(&[base, "/conversations/", &cid]);
        out.raw(",\"mentions\":");
        out.str(&[base, "/comments/", &id, "/mentions"]);
        out.raw("},\"self\":");
        out.str(&[base, "/comments/", &id]);
        out.raw("},\"attachments\":[],\"author\":");
        self.teammate_json(out, self.conversation_teammate(c));
        out.raw(",\"body\":");
        out.str(&["@team ", &self.sentence(15, i, 5)]);
        out.raw(",\"id\":");
        out.str(&[&id]);
        out.raw(",\"is_pinned\":false,\"posted_at\":");
        out.f64(self.conversation_created(c) + 30.0 + (i % cpc) as f64);
        out.raw("}");
        true
    }

    /// Writes conversation `c` (as [`Data::conversation`] renders it).
    pub(crate) fn write_conversation(&self, out: &mut Out<'_>, c: u64, overlay: &Overlay) {
        if overlay.conversations.contains_key(&c) {
            out.value(&self.conversation(c, overlay));
            return;
        }
        let id = Self::conversation_id(c);
        let base = self.base.as_str();
        let status = self.pick(&STATUSES, 5, c);
        let link = |out: &mut Out<'_>, rel: &str| out.str(&[base, "/conversations/", &id, rel]);
        out.raw("{\"_links\":{\"related\":{\"comments\":");
        link(out, "/comments");
        out.raw(",\"events\":");
        link(out, "/events");
        out.raw(",\"followers\":");
        link(out, "/followers");
        out.raw(",\"inboxes\":");
        link(out, "/inboxes");
        out.raw(",\"last_message\":");
        match self.last_message_id(c, overlay) {
            Some(m) => out.str(&[base, "/messages/", &m, "?referer=conversation"]),
            None => out.raw("null"),
        }
        out.raw(",\"messages\":");
        link(out, "/messages");
        out.raw("},\"self\":");
        link(out, "");
        out.raw("},\"assignee\":");
        if status == "assigned" {
            self.teammate_json(out, self.conversation_teammate(c));
        } else {
            out.raw("null");
        }
        out.raw(",\"created_at\":");
        out.f64(self.conversation_created(c));
        out.raw(",\"custom_fields\":{\"Priority\":");
        out.str(&[["low", "normal", "high"][(mix(self.shape.seed, 7, c) % 3) as usize]]);
        out.raw("},\"id\":");
        out.str(&[&id]);
        out.raw(",\"is_private\":false,\"links\":[],\"metadata\":{},\"recipient\":");
        if self.shape.contacts > 0 {
            self.recipient_json(out, self.conversation_contact(c), "from");
        } else {
            out.raw("null");
        }
        out.raw(",\"scheduled_reminders\":[],\"status\":");
        out.str(&[status]);
        out.raw(",\"status_category\":");
        out.str(&[if status == "archived" {
            "resolved"
        } else {
            "open"
        }]);
        out.raw(",\"status_id\":null,\"subject\":\"");
        out.escaped(self.pick(&TOPICS, 6, c));
        let _ = write!(out.0, " #{c}\"");
        out.raw(",\"tags\":[");
        let mut first = true;
        for t in self.generated_tags(c) {
            if t >= self.shape.tags {
                continue;
            }
            out.comma(&mut first);
            match self.tags_json.get(t as usize) {
                Some(j) => out.raw(j),
                None => out.value(&self.tag(t)),
            }
        }
        out.raw("],\"ticket_ids\":[],\"type\":\"email\",\"updated_at\":");
        out.f64(self.conversation_updated_generated(c));
        out.raw(",\"waiting_since\":null}");
    }

    /// Writes contact `k` (as [`Data::contact`] renders it).
    pub(crate) fn write_contact(&self, out: &mut Out<'_>, k: u64, overlay: &Overlay) {
        if overlay.contacts.contains_key(&k) {
            out.value(&self.contact(k, overlay));
            return;
        }
        let (f, l, d) = self.contact_names(k);
        let id = Self::contact_id(k);
        let base = self.base.as_str();
        out.raw("{\"_links\":{\"related\":{\"conversations\":");
        out.str(&[base, "/contacts/", &id, "/conversations"]);
        out.raw(",\"notes\":");
        out.str(&[base, "/contacts/", &id, "/notes"]);
        out.raw(",\"owner\":null},\"self\":");
        out.str(&[base, "/contacts/", &id]);
        out.raw("},\"avatar_url\":null,\"created_at\":");
        out.f64(self.contact_time(k));
        out.raw(",\"custom_fields\":{\"Tier\":");
        out.str(&[["gold", "silver", "bronze"][(mix(self.shape.seed, 14, k) % 3) as usize]]);
        out.raw("},\"description\":");
        out.str(&["Customer at ", d]);
        out.raw(",\"groups\":[],\"handles\":[{\"handle\":");
        out.str(&[&self.contact_email(k)]);
        out.raw(",\"source\":\"email\"},{\"handle\":");
        out.str(&[&format!("+1555{:07}", k % 10_000_000)]);
        out.raw(",\"source\":\"phone\"}],\"id\":");
        out.str(&[&id]);
        out.raw(",\"is_private\":false,\"links\":[");
        out.str(&["https://www.", d]);
        out.raw("],\"lists\":[],\"name\":");
        out.str(&[f, " ", l]);
        out.raw(",\"updated_at\":");
        out.f64(self.contact_time(k));
        out.raw("}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sim::data::Shape;
    use serde_json::Value;

    fn slow(v: &Value) -> String {
        serde_json::to_string(v).unwrap_or_default()
    }

    fn data(contacts: u64, tags: u64, teammates: u64) -> Data {
        Data::new(
            Shape {
                seed: 42,
                conversations: 300,
                messages_per_conversation: 7,
                comments_per_conversation: 2,
                contacts,
                tags,
                teammates,
                inboxes: 3,
                company: "ac\"me".into(),
            },
            "http://127.0.0.1:4242".into(),
        )
    }

    fn fast(f: impl FnOnce(&mut Out<'_>)) -> String {
        let mut buf = Vec::new();
        f(&mut Out(&mut buf));
        String::from_utf8(buf).unwrap_or_default()
    }

    #[test]
    fn fast_renderer_matches_the_value_renderer_byte_for_byte() {
        for d in [data(50, 12, 5), data(0, 0, 1), data(20_000, 3, 1_200)] {
            let mut o = Overlay::default();
            for i in 0..d.shape.messages() {
                let v = d.message(i, &o).map(|v| slow(&v)).unwrap_or_default();
                assert_eq!(
                    fast(|out| assert!(d.write_message(out, i, &o))),
                    v,
                    "message {i}"
                );
            }
            assert_eq!(
                fast(|out| assert!(!d.write_message(out, d.shape.messages(), &o))),
                ""
            );
            for i in 0..d.shape.conversations * 2 {
                let v = slow(&d.comment(i, &o).unwrap_or(Value::Null));
                assert_eq!(
                    fast(|out| assert!(d.write_comment(out, i, &o))),
                    v,
                    "comment {i}"
                );
            }
            for c in 0..d.shape.conversations {
                let v = slow(&d.conversation(c, &o));
                assert_eq!(
                    fast(|out| d.write_conversation(out, c, &o)),
                    v,
                    "conversation {c}"
                );
            }
            for k in 0..d.shape.contacts.min(2_000) {
                let v = slow(&d.contact(k, &o));
                assert_eq!(fast(|out| d.write_contact(out, k, &o)), v, "contact {k}");
            }
            // Objects changed by mutations go through their `Value`.
            o.conversations.entry(3).or_default().updated_at = 1.7e9;
            assert_eq!(
                fast(|out| d.write_conversation(out, 3, &o)),
                slow(&d.conversation(3, &o))
            );
        }
    }

    #[test]
    fn strings_are_escaped_like_serde_json() {
        let s = "a\"b\\c\nd\u{1}é/";
        assert_eq!(
            fast(|out| out.str(&[s, s])),
            slow(&Value::String(format!("{s}{s}")))
        );
        let listed = fast(|out| {
            out.list("http://h", "/x", Some(None), |out| {
                let mut first = true;
                for n in [1u64, 2] {
                    out.comma(&mut first);
                    out.u64(n);
                }
            })
        });
        let v: Value = serde_json::from_str(&listed).unwrap_or(Value::Null);
        assert_eq!(
            listed,
            slow(
                &serde_json::json!({"_pagination": {"next": null}, "_links": {"self": "http://h/x"}, "_results": [1, 2]})
            )
        );
        assert_eq!(v["_results"][1], 2);
    }
}
