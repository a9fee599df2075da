//! The simulator's data: seeded objects generated on the fly from their index, and a small
//! overlay of mutations (updates, creations, archivals).

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::models::{OBJECT_TYPES, ObjectKind, format_time_ms};

/// Ids of type `t` start after `(t + 1) * ID_SPAN`.
pub(crate) const ID_SPAN: u64 = 10_000_000;

/// The custom property each object type has (discovered by the connector, mapped by config).
pub(crate) fn custom_property(t: usize) -> &'static str {
    match OBJECT_TYPES[t].kind {
        ObjectKind::Person => "apex_tier",
        ObjectKind::Organization => "apex_segment",
        ObjectKind::Deal => "apex_forecast",
        ObjectKind::Activity => "apex_source",
    }
}

/// Property names of type `t` (besides the system ones every type has).
pub(crate) fn property_names(t: usize) -> Vec<&'static str> {
    let ot = &OBJECT_TYPES[t];
    let mut v: Vec<&'static str> = match ot.kind {
        ObjectKind::Person => vec![
            "firstname",
            "lastname",
            "email",
            "phone",
            "company",
            "jobtitle",
            "lifecyclestage",
            "hubspot_owner_id",
            "hs_additional_emails",
        ],
        ObjectKind::Organization => vec![
            "name",
            "domain",
            "industry",
            "city",
            "country",
            "phone",
            "hubspot_owner_id",
        ],
        ObjectKind::Deal => vec![
            "dealname",
            "amount",
            "dealstage",
            "pipeline",
            "closedate",
            "hubspot_owner_id",
        ],
        ObjectKind::Activity => match ot.stream {
            "notes" => vec!["hs_note_body", "hs_timestamp", "hubspot_owner_id"],
            "emails" => vec![
                "hs_email_subject",
                "hs_email_text",
                "hs_email_direction",
                "hs_timestamp",
                "hubspot_owner_id",
            ],
            "calls" => vec![
                "hs_call_title",
                "hs_call_body",
                "hs_call_duration",
                "hs_call_direction",
                "hs_timestamp",
                "hubspot_owner_id",
            ],
            "meetings" => vec![
                "hs_meeting_title",
                "hs_meeting_body",
                "hs_meeting_start_time",
                "hs_meeting_end_time",
                "hs_timestamp",
                "hubspot_owner_id",
            ],
            _ => vec![
                "hs_task_subject",
                "hs_task_body",
                "hs_task_status",
                "hs_task_priority",
                "hs_timestamp",
                "hubspot_owner_id",
            ],
        },
    };
    v.push(custom_property(t));
    v.push("createdate");
    v.push("hs_object_id");
    v.push(ot.modified_property);
    if ot.modified_property != "hs_lastmodifieddate" {
        // Contacts also carry hs_lastmodifieddate? No: they use lastmodifieddate only.
    }
    v
}

/// One object's state.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Obj {
    pub(crate) props: BTreeMap<String, String>,
    pub(crate) created_ms: i64,
    pub(crate) updated_ms: i64,
    pub(crate) archived: bool,
}

const FIRST: [&str; 12] = [
    "Ann", "Bob", "Cleo", "Dev", "Eve", "Finn", "Gia", "Hal", "Ivy", "Jon", "Kim", "Lou",
];
const LAST: [&str; 10] = [
    "Lee", "Diaz", "Okafor", "Smith", "Novak", "Tanaka", "Berg", "Rossi", "Khan", "Moreau",
];
const WORDS: [&str; 10] = [
    "acme",
    "globex",
    "initech",
    "umbrella",
    "hooli",
    "stark",
    "wayne",
    "wonka",
    "tyrell",
    "cyberdyne",
];
const STAGES: [&str; 6] = [
    "appointmentscheduled",
    "qualifiedtobuy",
    "presentationscheduled",
    "decisionmakerboughtin",
    "closedwon",
    "closedlost",
];
const TIERS: [&str; 4] = ["bronze", "silver", "gold", "platinum"];

fn mix(seed: u64, a: u64, b: u64) -> u64 {
    // SplitMix64 over the inputs: deterministic, cheap.
    let mut z =
        seed ^ a.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ b.wrapping_mul(0xC2B2_AE3D_27D4_EB4F);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The seeded data set: counts per type and the generator.
#[derive(Debug, Clone)]
pub(crate) struct Seeded {
    pub(crate) seed: u64,
    pub(crate) counts: [u64; 8],
    pub(crate) base_ms: i64,
    pub(crate) owners: u64,
}

impl Seeded {
    pub(crate) fn first_id(t: usize) -> u64 {
        (t as u64 + 1) * ID_SPAN + 1
    }

    /// The index of base object `id` of type `t`, if it is one.
    pub(crate) fn base_index(&self, t: usize, id: u64) -> Option<u64> {
        let first = Self::first_id(t);
        (id >= first && id < first + self.counts[t]).then(|| id - first)
    }

    /// The modified time of base object `i`: two objects per second, so pairs tie.
    pub(crate) fn base_ts(&self, t: usize, i: u64) -> i64 {
        self.base_ms + (i / 2) as i64 * 1000 + t as i64
    }

    /// The base indexes whose modified time may lie in `[lo, hi]`.
    pub(crate) fn base_range(&self, t: usize, lo: i64, hi: i64) -> std::ops::Range<u64> {
        let n = self.counts[t];
        let start = if lo <= self.base_ms {
            0
        } else {
            (((lo - self.base_ms - t as i64) / 1000).max(0) as u64 * 2).min(n)
        };
        let end = if hi == i64::MAX {
            n
        } else if hi < self.base_ms {
            0
        } else {
            ((((hi - self.base_ms) / 1000) as u64 + 1) * 2).min(n)
        };
        start..end.max(start)
    }

    pub(crate) fn owner_id(&self, i: u64) -> u64 {
        100 + i
    }

    /// Base object `i` of type `t`.
    pub(crate) fn base(&self, t: usize, i: u64) -> Obj {
        let id = Self::first_id(t) + i;
        let r = mix(self.seed, t as u64 + 1, i);
        let pick =
            |arr: &[&'static str], shift: u32| arr[((r >> shift) % arr.len() as u64) as usize];
        let updated = self.base_ts(t, i);
        let created = updated - 30 * 86_400_000 - (r % 86_400_000) as i64;
        let mut p: BTreeMap<String, String> = BTreeMap::new();
        let owner = if self.owners > 0 {
            Some(self.owner_id(r % self.owners).to_string())
        } else {
            None
        };
        let ot = &OBJECT_TYPES[t];
        match ot.kind {
            ObjectKind::Person => {
                let (f, l) = (pick(&FIRST, 3), pick(&LAST, 11));
                p.insert("firstname".into(), f.into());
                p.insert("lastname".into(), l.into());
                p.insert(
                    "email".into(),
                    format!(
                        "{}.{}.{id}@{}.example.com",
                        f.to_lowercase(),
                        l.to_lowercase(),
                        pick(&WORDS, 17)
                    ),
                );
                p.insert(
                    "phone".into(),
                    format!("+1 555 {:03} {:04}", r % 1000, (r >> 10) % 10_000),
                );
                p.insert(
                    "jobtitle".into(),
                    ["Buyer", "CFO", "Office manager", "Engineer"][((r >> 21) % 4) as usize].into(),
                );
                p.insert(
                    "lifecyclestage".into(),
                    ["lead", "customer", "opportunity"][((r >> 23) % 3) as usize].into(),
                );
            }
            ObjectKind::Organization => {
                let w = pick(&WORDS, 5);
                p.insert(
                    "name".into(),
                    format!("{} {}", w[..1].to_uppercase() + &w[1..], id),
                );
                p.insert("domain".into(), format!("{w}-{id}.example.com"));
                p.insert(
                    "industry".into(),
                    ["PAPER", "SOFTWARE", "RETAIL"][((r >> 9) % 3) as usize].into(),
                );
                p.insert(
                    "city".into(),
                    ["Scranton", "Stamford", "Nashua"][((r >> 13) % 3) as usize].into(),
                );
            }
            ObjectKind::Deal => {
                p.insert(
                    "dealname".into(),
                    format!("{} paper order {id}", pick(&WORDS, 5)),
                );
                p.insert(
                    "amount".into(),
                    format!("{}.{:02}", 100 + r % 50_000, (r >> 20) % 100),
                );
                p.insert("dealstage".into(), pick(&STAGES, 9).into());
                p.insert(
                    "pipeline".into(),
                    if (r >> 29).is_multiple_of(5) {
                        "enterprise".into()
                    } else {
                        "default".into()
                    },
                );
                p.insert(
                    "closedate".into(),
                    format_time_ms(updated + 14 * 86_400_000),
                );
            }
            ObjectKind::Activity => {
                let text = format!("{} about order {id}", ot.singular);
                let (title, body) = match ot.stream {
                    "notes" => (None, "hs_note_body"),
                    "emails" => (Some("hs_email_subject"), "hs_email_text"),
                    "calls" => (Some("hs_call_title"), "hs_call_body"),
                    "meetings" => (Some("hs_meeting_title"), "hs_meeting_body"),
                    _ => (Some("hs_task_subject"), "hs_task_body"),
                };
                if let Some(t) = title {
                    p.insert(t.into(), format!("Follow-up {id}"));
                }
                p.insert(body.into(), text);
                p.insert("hs_timestamp".into(), format_time_ms(updated - 3_600_000));
            }
        }
        if let Some(o) = owner {
            p.insert("hubspot_owner_id".into(), o);
        }
        p.insert(custom_property(t).into(), pick(&TIERS, 27).into());
        Obj {
            props: p,
            created_ms: created,
            updated_ms: updated,
            archived: false,
        }
    }

    /// Base associations of object `id` of type `t` to type `to`.
    pub(crate) fn associations(&self, t: usize, id: u64, to: usize) -> Vec<u64> {
        let Some(i) = self.base_index(t, id) else {
            return Vec::new();
        };
        let target = |to: usize, k: u64| -> Vec<u64> {
            if self.counts[to] == 0 {
                Vec::new()
            } else {
                vec![Self::first_id(to) + k % self.counts[to]]
            }
        };
        let from_kind = OBJECT_TYPES[t].kind;
        let to_kind = OBJECT_TYPES[to].kind;
        match (from_kind, to_kind) {
            (ObjectKind::Person, ObjectKind::Organization) => target(to, i),
            (ObjectKind::Deal, ObjectKind::Person) => target(to, i * 7),
            (ObjectKind::Deal, ObjectKind::Organization) => target(to, i),
            (ObjectKind::Activity, ObjectKind::Person) => target(to, i * 3),
            (ObjectKind::Activity, ObjectKind::Organization) => target(to, i),
            (ObjectKind::Activity, ObjectKind::Deal) => target(to, i * 5),
            _ => Vec::new(),
        }
    }

    /// Owner `i` as the API returns it.
    pub(crate) fn owner(&self, i: u64) -> Value {
        let r = mix(self.seed, 99, i);
        let (f, l) = (FIRST[(r % 12) as usize], LAST[((r >> 8) % 10) as usize]);
        json!({
            "id": self.owner_id(i).to_string(),
            "email": format!("{}.{}@dunder.example.com", f.to_lowercase(), l.to_lowercase()),
            "firstName": f, "lastName": l, "userId": 9_000 + i,
            "createdAt": format_time_ms(self.base_ms - 86_400_000),
            "updatedAt": format_time_ms(self.base_ms + i as i64 * 1000),
            "archived": false, "teams": [],
        })
    }
}

/// Mutations on top of the seeded data.
#[derive(Debug, Default)]
pub(crate) struct Overlay {
    /// Per type: id -> object (updated, created or archived).
    pub(crate) objects: Vec<BTreeMap<u64, Obj>>,
    /// Per type: (modified, id) of live overlay objects.
    pub(crate) by_modified: Vec<BTreeSet<(i64, u64)>>,
    /// Per type: the next id for created objects.
    pub(crate) next_id: Vec<u64>,
    /// Per type: objects served verbatim (hostile variants of the documented shape).
    pub(crate) raw: Vec<BTreeMap<u64, Value>>,
    /// The last modification time handed out.
    pub(crate) clock_ms: i64,
}

impl Overlay {
    pub(crate) fn new(seeded: &Seeded) -> Self {
        Overlay {
            objects: (0..8).map(|_| BTreeMap::new()).collect(),
            by_modified: (0..8).map(|_| BTreeSet::new()).collect(),
            raw: (0..8).map(|_| BTreeMap::new()).collect(),
            next_id: (0..8)
                .map(|t| Seeded::first_id(t) + seeded.counts[t])
                .collect(),
            clock_ms: 0,
        }
    }

    pub(crate) fn put(&mut self, t: usize, id: u64, obj: Obj) {
        if let Some(old) = self.objects[t].get(&id) {
            self.by_modified[t].remove(&(old.updated_ms, id));
        }
        if !obj.archived {
            self.by_modified[t].insert((obj.updated_ms, id));
        }
        self.objects[t].insert(id, obj);
    }
}
