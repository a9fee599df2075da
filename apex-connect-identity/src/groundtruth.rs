//! A seeded ground-truth data set for measuring identity resolution, and the measures.
//!
//! [`generate_shard`] makes people and companies that appear on several platforms, shaped as
//! the connectors map them (Front contacts and conversations; HubSpot contacts, companies and
//! deals; Salesforce contacts, accounts and opportunities), with the variation real data has:
//!
//! - emails in mixed case and with stray whitespace, `mailto:` and `Name <addr>` forms, Gmail
//!   addresses with and without dots, `+tags` and `@googlemail.com`;
//! - phones in national, international, dotted, dashed and `tel:` formats, read in each
//!   connection's region (the Salesforce connection is a UK org);
//! - company names in variants (`Acme`, `ACME Corporation`, `Acme, Inc.`) with one shared
//!   web domain written as `https://www.acme.com/`, `acme.com`, `shop.acme.com`;
//! - HubSpot's Salesforce-integration ids (18-character, sometimes lower-cased) and a
//!   Salesforce custom field naming HubSpot contacts;
//! - duplicates within a platform (a second HubSpot contact from a form).
//!
//! And look-alikes that must not merge: people with the same name and different emails,
//! `john.smith@outlook.com` and `johnsmith@outlook.com` (dots matter outside Gmail), several
//! people listed with a company's `info@` mailbox, colleagues sharing a switchboard number,
//! family members sharing a landline, small businesses whose "website" is a free-mail domain,
//! companies with the same name and different domains.
//!
//! Two kinds of true duplicates cannot be found from identities alone, and are kept in the
//! data on purpose (they cost recall, as they would in real data): a Front contact known only by
//! a personal email nobody else has, and family members with different providers behind one
//! landline (that one costs precision: the phone joins them).
//!
//! [`evaluate`] reports pairwise precision and recall of the merges, and checks that each
//! conversation -> person -> organization -> deals path resolves in both directions.

use std::collections::{BTreeMap, HashMap};

use apex_connect_core::{
    Batch, ConnectionId, Entity, EntityKind, Identity, Record, Result, SourceRef, StreamId,
};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::extract::SourceKey;
use crate::graph::EntityGraph;
use crate::normalize::{Region, salesforce_id18};
use crate::policy::{ExternalIdRule, Policy};
use crate::query::{CanonicalEntity, CanonicalId, Direction};

/// The Front connection's name.
pub const FRONT: &str = "front";
/// The HubSpot connection's name.
pub const HUBSPOT: &str = "hubspot";
/// The Salesforce connection's name (a UK org: national numbers are British).
pub const SALESFORCE: &str = "salesforce";

/// The policy the data set is meant for: phone regions per connection (US, US, GB) and the
/// Salesforce custom field `HubSpot_Contact_ID__c` naming HubSpot contacts, on top of the
/// defaults.
pub fn policy() -> Policy {
    let mut p = Policy::default()
        .with_source_priority(["salesforce", "hubspot", "frontapp"])
        .with_external_id(ExternalIdRule::new(
            "salesforce",
            Some("contact"),
            "custom_fields.HubSpot_Contact_ID__c",
            "hubspot",
            "contact",
        ));
    if let (Ok(us), Ok(gb)) = ("US".parse::<Region>(), "GB".parse::<Region>()) {
        p = p
            .with_region(FRONT, us)
            .with_region(HUBSPOT, us)
            .with_region(SALESFORCE, gb);
    }
    p
}

/// How much to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct GroundTruthConfig {
    /// The seed: the same seed gives the same data.
    pub seed: u64,
    /// People per shard.
    pub people: usize,
    /// Companies per shard.
    pub companies: usize,
    /// Records per batch.
    pub batch_size: usize,
}

impl Default for GroundTruthConfig {
    fn default() -> Self {
        GroundTruthConfig {
            seed: 17,
            people: 3000,
            companies: 600,
            batch_size: 200,
        }
    }
}

impl GroundTruthConfig {
    /// A config with `seed`, `people` and `companies` per shard.
    pub fn new(seed: u64, people: usize, companies: usize) -> Self {
        GroundTruthConfig {
            seed,
            people,
            companies,
            ..GroundTruthConfig::default()
        }
    }
}

/// One batch of records of one connection and stream, with their entities.
#[derive(Debug, Clone)]
pub struct SourceBatch {
    /// The connection.
    pub connection: ConnectionId,
    /// The stream.
    pub stream: StreamId,
    /// The records.
    pub records: Vec<Record>,
    /// Their entities (aligned).
    pub entities: Vec<Option<Entity>>,
}

impl SourceBatch {
    /// The batch as a sink receives it.
    pub fn batch(&self) -> Batch<'_> {
        Batch::new(&self.connection, &self.stream, &self.records).with_entities(&self.entities)
    }
}

/// A path that must resolve: a conversation's contact, that person's organization, its deals.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedPath {
    /// The Front conversation.
    pub conversation: SourceKey,
    /// A source entity of the person the conversation is with.
    pub person: SourceKey,
    /// A source entity of the person's organization.
    pub organization: SourceKey,
    /// A source entity of each of the organization's deals.
    pub deals: Vec<SourceKey>,
}

/// A generated shard: batches in arrival order, the truth, the paths.
#[derive(Debug, Clone, Default)]
pub struct GroundTruth {
    /// The batches, interleaved across connections and streams as concurrent syncs deliver
    /// them.
    pub batches: Vec<SourceBatch>,
    /// The real-world entity of every source entity (`person:12`, `org:3`, `deal:7`,
    /// `conversation:...`).
    pub truth: Vec<(SourceKey, String)>,
    /// Paths that must resolve.
    pub paths: Vec<ExpectedPath>,
}

impl GroundTruth {
    /// How many entities the batches hold.
    pub fn entities(&self) -> usize {
        self.batches.iter().map(|b| b.records.len()).sum()
    }
}

const FIRST: &[&str] = &[
    "Ann", "Bob", "Carla", "David", "Elena", "Farid", "Grace", "Hugo", "Irene", "Jamal", "Kira",
    "Liam", "Maria", "Noah", "Olga", "Pedro", "Quinn", "Rosa", "Sam", "Tara", "Umar", "Vera",
    "Will", "Xena", "Yusuf", "Zoe", "Aiko", "Bruno", "Chloe", "Dmitri", "Emma", "Felix", "Gina",
    "Hana", "Ivan", "Julia", "Karl", "Lena", "Mateo", "Nina", "Oscar", "Priya", "Rafael", "Sofia",
    "Tom", "Uma", "Victor", "Wen", "Yara", "John", "Mary", "James", "Linda", "Robert", "Patricia",
    "Michael", "Jennifer", "Daniel", "Laura", "Kevin",
];
const LAST: &[&str] = &[
    "Smith", "Lee", "Garcia", "Müller", "Okafor", "Nguyen", "Rossi", "Kowalski", "Johnson",
    "Brown", "Silva", "Tanaka", "Kim", "Patel", "Cohen", "Dubois", "Ivanova", "Hansen", "Novak",
    "Schmidt", "Williams", "Jones", "Miller", "Davis", "Martin", "Wilson", "Anderson", "Taylor",
    "Thomas", "Moore", "Jackson", "White", "Harris", "Clark", "Lewis", "Walker", "Hall", "Young",
    "King", "Wright", "Lopez", "Hill", "Scott", "Green", "Adams", "Baker", "Nelson", "Carter",
    "Mitchell", "Perez", "Roberts", "Turner", "Phillips", "Campbell", "Parker", "Evans", "Edwards",
    "Collins", "Stewart", "Morris",
];
const WORDS: &[&str] = &[
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
    "soylent",
    "aperture",
    "vandelay",
    "dunder",
    "pied",
    "massive",
    "oscorp",
    "gringotts",
    "nakatomi",
    "monarch",
    "zorg",
    "virtucon",
    "prestige",
    "bluth",
    "sterling",
    "kramerica",
    "duff",
    "contoso",
    "fabrikam",
    "northwind",
    "tailspin",
    "litware",
    "adatum",
    "proseware",
    "wingtip",
    "fourth",
    "coho",
    "lucerne",
    "margie",
    "alpine",
    "blue",
    "city",
    "consolidated",
    "datum",
    "fincher",
    "graphic",
    "humongous",
    "liberty",
    "nod",
    "relecloud",
    "southridge",
    "trey",
    "wide",
    "woodgrove",
    "vanarsdel",
    "bellows",
    "lamna",
    "tasmanian",
    "orbit",
    "quantum",
];
const TLDS: &[&str] = &["com", "com", "com", "com", "io", "co.uk", "de", "com.au"];
const FREE_MAIL: &[&str] = &[
    "gmail.com",
    "gmail.com",
    "outlook.com",
    "yahoo.com",
    "icloud.com",
    "hotmail.co.uk",
];
const US_AREAS: &[u32] = &[
    212, 415, 312, 617, 206, 512, 303, 404, 305, 213, 646, 718, 202,
];
const TITLES: &[&str] = &[
    "CEO",
    "CTO",
    "VP Sales",
    "Head of Support",
    "Engineer",
    "Buyer",
    "Office Manager",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Country {
    Us,
    Gb,
}

#[derive(Debug, Clone)]
struct Phone {
    country: Country,
    /// National significant number (US: 10 digits; GB: 10 digits without the trunk 0).
    national: String,
}

impl Phone {
    fn random(rng: &mut StdRng, country: Country) -> Phone {
        match country {
            Country::Us => {
                let area = *US_AREAS.choose(rng).unwrap_or(&212);
                let exchange = rng.random_range(201..=989u32);
                let line = rng.random_range(0..10_000u32);
                Phone {
                    country,
                    national: format!("{area}{exchange:03}{line:04}"),
                }
            }
            Country::Gb => {
                // London (20) or a mobile (7xxx).
                let national = if rng.random_bool(0.5) {
                    format!("20{:08}", rng.random_range(30_000_000..89_999_999u32))
                } else {
                    format!("7{:09}", rng.random_range(400_000_000..999_999_999u32))
                };
                Phone { country, national }
            }
        }
    }

    /// The number as a person in `region` would type it.
    fn written(&self, rng: &mut StdRng, region: Country) -> String {
        let n = &self.national;
        match (self.country, region) {
            (Country::Us, Country::Us) => match rng.random_range(0..6) {
                0 => format!("({}) {}-{}", &n[..3], &n[3..6], &n[6..]),
                1 => format!("{}.{}.{}", &n[..3], &n[3..6], &n[6..]),
                2 => format!("{}-{}-{}", &n[..3], &n[3..6], &n[6..]),
                3 => format!("1-{}-{}-{}", &n[..3], &n[3..6], &n[6..]),
                4 => format!("+1 {} {} {}", &n[..3], &n[3..6], &n[6..]),
                _ => format!("tel:+1-{}-{}-{}", &n[..3], &n[3..6], &n[6..]),
            },
            (Country::Gb, Country::Gb) => match rng.random_range(0..4) {
                0 => format!("0{} {} {}", &n[..2], &n[2..6], &n[6..]),
                1 => format!("0{}{}", &n[..4], &n[4..]),
                2 => format!("+44 (0){} {}", &n[..4], &n[4..]),
                _ => format!("+44 {} {}", &n[..4], &n[4..]),
            },
            (Country::Us, Country::Gb) => match rng.random_range(0..2) {
                0 => format!("+1 {} {} {}", &n[..3], &n[3..6], &n[6..]),
                _ => format!("001 {}-{}-{}", &n[..3], &n[3..6], &n[6..]),
            },
            (Country::Gb, Country::Us) => match rng.random_range(0..2) {
                0 => format!("+44 {} {}", &n[..4], &n[4..]),
                _ => format!("011 44 {} {}", &n[..4], &n[4..]),
            },
        }
    }
}

#[derive(Debug, Clone)]
struct Company {
    truth: String,
    name: String,
    /// `None` for a small business listed with a free-mail domain.
    domain: Option<String>,
    website: String,
    switchboard: Phone,
    email_style: u8,
    hubspot: Option<String>,
    salesforce: Option<String>,
    hubspot_has_sf_id: bool,
}

#[derive(Debug, Clone)]
struct Person {
    truth: String,
    first: String,
    last: String,
    company: Option<usize>,
    work_email: Option<String>,
    personal_email: Option<String>,
    phone: Option<Phone>,
    twitter: Option<String>,
    title: &'static str,
}

impl Person {
    fn name(&self) -> String {
        format!("{} {}", self.first, self.last)
    }

    fn primary_email(&self) -> Option<&String> {
        self.work_email.as_ref().or(self.personal_email.as_ref())
    }
}

fn ascii_lower(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            'ü' | 'Ü' => 'u',
            c => c.to_ascii_lowercase(),
        })
        .filter(char::is_ascii_alphanumeric)
        .collect()
}

const B62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// A Salesforce id: 3-character key prefix and 12 base-62 characters (mixed case), in its
/// 18-character form.
fn sf_id(prefix: &str, n: u64) -> String {
    let mut digits = [b'0'; 12];
    let mut v = n;
    for d in digits.iter_mut().rev() {
        *d = B62[(v % 62) as usize];
        v /= 62;
    }
    let id15 = format!("{prefix}{}", String::from_utf8_lossy(&digits));
    salesforce_id18(&id15).unwrap_or(id15)
}

/// Variation of an email as a source may hold it.
fn email_variant(rng: &mut StdRng, email: &str, platform: &str) -> String {
    let (local, domain) = email.rsplit_once('@').unwrap_or((email, ""));
    let gmail = domain == "gmail.com";
    let base = match rng.random_range(0..10) {
        0 => email.to_ascii_uppercase(),
        1 => format!("  {email} "),
        2 => {
            let mut c = local.chars();
            let cap: String = c
                .next()
                .map(|f| f.to_uppercase().chain(c).collect())
                .unwrap_or_default();
            format!("{cap}@{}", domain.to_ascii_uppercase())
        }
        3 if platform == "frontapp" => format!("mailto:{email}"),
        4 if platform == "frontapp" => format!("\"{local}\" <{email}>"),
        _ => email.to_string(),
    };
    if gmail {
        match rng.random_range(0..6) {
            0 => return format!("{}+{}@gmail.com", local, platform),
            1 => return format!("{}@googlemail.com", local.replace('.', "")),
            2 => return format!("{}@gmail.com", local.replace('.', "")),
            _ => {}
        }
    }
    base
}

/// The records of one (connection, stream) and their entities.
type StreamData = (Vec<Record>, Vec<Option<Entity>>);

struct Builder<'a> {
    rng: StdRng,
    shard: u64,
    config: &'a GroundTruthConfig,
    counter: u64,
    base_ms: i64,
    /// (connection, stream) -> records and entities.
    streams: BTreeMap<(String, String), StreamData>,
    truth: Vec<(SourceKey, String)>,
}

impl Builder<'_> {
    fn next_id(&mut self) -> u64 {
        self.counter += 1;
        self.shard * 10_000_000 + self.counter
    }

    fn push(&mut self, connection: &str, stream: &str, id: &str, entity: Entity, truth: String) {
        let ms = self.base_ms + self.rng.random_range(0..86_400_000i64);
        let record = Record::upsert(StreamId::new(stream.to_string()), id, json!({ "id": id }))
            .with_modified(ms);
        self.truth.push((
            SourceKey::new(
                connection,
                entity.source.platform.to_string(),
                entity.source.object_type.to_string(),
                entity.source.id.clone(),
            ),
            truth,
        ));
        let e = self
            .streams
            .entry((connection.to_string(), stream.to_string()))
            .or_default();
        e.0.push(record);
        e.1.push(Some(entity));
    }
}

/// Generates shard `shard` of the data set: `config.people` people and `config.companies`
/// companies, their source entities on Front, HubSpot and Salesforce, and the truth. Shards
/// are disjoint universes (their ids and domains differ), so a large data set is generated
/// shard by shard without holding it all.
pub fn generate_shard(config: &GroundTruthConfig, shard: u64) -> GroundTruth {
    let mut b = Builder {
        rng: StdRng::seed_from_u64(config.seed ^ shard.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
        shard,
        config,
        counter: 0,
        base_ms: 1_700_000_000_000,
        streams: BTreeMap::new(),
        truth: Vec::new(),
    };
    let companies = make_companies(&mut b);
    let people = make_people(&mut b, &companies);
    let mut paths = Vec::new();
    let deals = emit_companies(&mut b, &companies);
    emit_people(&mut b, &companies, &people, &deals, &mut paths);
    // Interleave batches round-robin across streams, as concurrent syncs deliver them.
    let mut queues: Vec<std::collections::VecDeque<SourceBatch>> = Vec::new();
    let size = b.config.batch_size.max(1);
    for ((conn, stream), (records, entities)) in std::mem::take(&mut b.streams) {
        let mut q = std::collections::VecDeque::new();
        let mut entities = entities.into_iter();
        for chunk in records.chunks(size) {
            q.push_back(SourceBatch {
                connection: ConnectionId::new(conn.clone()),
                stream: StreamId::new(stream.clone()),
                records: chunk.to_vec(),
                entities: entities.by_ref().take(chunk.len()).collect(),
            });
        }
        queues.push(q);
    }
    let mut batches = Vec::new();
    loop {
        let mut any = false;
        for q in &mut queues {
            if let Some(batch) = q.pop_front() {
                batches.push(batch);
                any = true;
            }
        }
        if !any {
            break;
        }
    }
    GroundTruth {
        batches,
        truth: b.truth,
        paths,
    }
}

/// Generates `shards` shards into one data set (for tests; the benchmark streams shards).
pub fn generate(config: &GroundTruthConfig, shards: u64) -> GroundTruth {
    let mut out = GroundTruth::default();
    for s in 0..shards {
        let g = generate_shard(config, s);
        out.batches.extend(g.batches);
        out.truth.extend(g.truth);
        out.paths.extend(g.paths);
    }
    out
}

fn make_companies(b: &mut Builder<'_>) -> Vec<Company> {
    let mut out = Vec::with_capacity(b.config.companies);
    let mut i = 0usize;
    while out.len() < b.config.companies {
        let n = b.shard as usize * b.config.companies + i;
        i += 1;
        let word = WORDS[n % WORDS.len()];
        let serial = n / WORDS.len();
        let tld = *TLDS.choose(&mut b.rng).unwrap_or(&"com");
        let generic = b.rng.random_bool(0.03);
        let domain = (!generic).then(|| format!("{word}{serial}.{tld}"));
        let cap = {
            let mut c = word.chars();
            c.next()
                .map(|f| f.to_uppercase().chain(c).collect::<String>())
                .unwrap_or_default()
        };
        let name = if serial == 0 {
            cap.clone()
        } else {
            format!("{cap} {serial}")
        };
        let website = match &domain {
            Some(d) => d.clone(),
            None => FREE_MAIL
                .choose(&mut b.rng)
                .unwrap_or(&"gmail.com")
                .to_string(),
        };
        let on_hs = b.rng.random_bool(0.85);
        let on_sf = b.rng.random_bool(0.65) || !on_hs;
        let hubspot = on_hs.then(|| b.next_id().to_string());
        let salesforce = on_sf.then(|| {
            let n = b.next_id();
            sf_id("001", n)
        });
        // Small businesses with a free-mail domain can only be joined by the integration's id.
        let hubspot_has_sf_id = on_hs && on_sf && (generic || b.rng.random_bool(0.5));
        let country = if tld == "co.uk" {
            Country::Gb
        } else {
            Country::Us
        };
        let switchboard = Phone::random(&mut b.rng, country);
        out.push(Company {
            truth: format!("org:{shard}:{n}", shard = b.shard),
            name,
            domain,
            website,
            switchboard,
            email_style: b.rng.random_range(0..3),
            hubspot,
            salesforce,
            hubspot_has_sf_id,
        });
        // A look-alike: the same name, another domain, another company.
        if b.rng.random_bool(0.05) && out.len() < b.config.companies {
            let Some(prev) = out.last().cloned() else {
                continue;
            };
            let Some(d) = &prev.domain else {
                continue;
            };
            let n2 = b.shard as usize * b.config.companies + 1_000_000 + i;
            let other = format!("{}-group.{}", d.split('.').next().unwrap_or("x"), "net");
            let hubspot = Some(b.next_id().to_string());
            let salesforce = b.rng.random_bool(0.5).then(|| {
                let n = b.next_id();
                sf_id("001", n)
            });
            out.push(Company {
                truth: format!("org:{}:{n2}", b.shard),
                domain: Some(other.clone()),
                website: other,
                hubspot,
                salesforce,
                hubspot_has_sf_id: false,
                switchboard: Phone::random(&mut b.rng, Country::Us),
                ..prev
            });
        }
    }
    out
}

fn make_people(b: &mut Builder<'_>, companies: &[Company]) -> Vec<Person> {
    let mut out: Vec<Person> = Vec::with_capacity(b.config.people);
    let employers: Vec<usize> = (0..companies.len())
        .filter(|&i| companies[i].domain.is_some())
        .collect();
    while out.len() < b.config.people {
        let idx = out.len();
        let first = FIRST.choose(&mut b.rng).unwrap_or(&"Ann").to_string();
        let last = LAST.choose(&mut b.rng).unwrap_or(&"Lee").to_string();
        let (f, l) = (ascii_lower(&first), ascii_lower(&last));
        let tag = format!("{}{}", b.shard, idx);
        let company = (b.rng.random_bool(0.8) && !employers.is_empty())
            .then(|| employers[b.rng.random_range(0..employers.len())]);
        let work_email = company.and_then(|c| {
            let d = companies[c].domain.as_ref()?;
            Some(match companies[c].email_style {
                0 => format!("{f}.{l}{tag}@{d}"),
                1 => format!("{}{l}{tag}@{d}", &f[..1]),
                _ => format!("{f}{tag}@{d}"),
            })
        });
        let personal_email = (work_email.is_none() || b.rng.random_bool(0.6)).then(|| {
            let provider = *FREE_MAIL.choose(&mut b.rng).unwrap_or(&"gmail.com");
            match b.rng.random_range(0..3) {
                0 => format!("{f}.{l}.{tag}@{provider}"),
                1 => format!("{f}{l}{tag}@{provider}"),
                _ => format!("{f}.{l}{tag}@{provider}"),
            }
        });
        let country = if b.rng.random_bool(0.75) {
            Country::Us
        } else {
            Country::Gb
        };
        let phone = b
            .rng
            .random_bool(0.7)
            .then(|| Phone::random(&mut b.rng, country));
        let twitter = b.rng.random_bool(0.15).then(|| format!("{f}_{l}{tag}"));
        let title = *TITLES.choose(&mut b.rng).unwrap_or(&"Engineer");
        let p = Person {
            truth: format!("person:{}:{idx}", b.shard),
            first,
            last,
            company,
            work_email,
            personal_email,
            phone,
            twitter,
            title,
        };
        out.push(p);
    }
    out
}

/// HubSpot and Salesforce companies and their deals; returns each company's deal source
/// keys.
fn emit_companies(b: &mut Builder<'_>, companies: &[Company]) -> Vec<Vec<SourceKey>> {
    let mut deals = Vec::with_capacity(companies.len());
    for c in companies {
        let variants = [
            c.name.clone(),
            format!("{} Inc.", c.name),
            format!("{} Corporation", c.name.to_uppercase()),
            format!("{}, Inc", c.name),
            format!("{} Ltd", c.name),
        ];
        if let Some(id) = &c.hubspot {
            let site = match b.rng.random_range(0..4) {
                0 => format!("https://www.{}/", c.website),
                1 => c.website.to_uppercase(),
                2 => format!("www.{}", c.website),
                _ => c.website.clone(),
            };
            let mut e = Entity::new(
                EntityKind::Organization,
                SourceRef::new("hubspot", "company", id.clone()),
            )
            .with_name(variants.choose(&mut b.rng).cloned().unwrap_or_default())
            .with_identity(Identity::Domain(site))
            .with_attr("industry", json!("Software"));
            if let (true, Some(sf)) = (c.hubspot_has_sf_id, &c.salesforce) {
                e.custom_fields
                    .insert("salesforceaccountid".into(), json!(sf));
            }
            b.push(HUBSPOT, "companies", id, e, c.truth.clone());
        }
        if let Some(id) = &c.salesforce {
            let site = match b.rng.random_range(0..4) {
                0 => format!("http://www.{}", c.website),
                1 => format!("{}/contact-us", c.website),
                2 if c.domain.is_some() => format!("https://shop.{}", c.website),
                _ => c.website.clone(),
            };
            let e = Entity::new(
                EntityKind::Organization,
                SourceRef::new("salesforce", "account", id.clone()),
            )
            .with_name(variants.choose(&mut b.rng).cloned().unwrap_or_default())
            .with_identity(Identity::Domain(site))
            .with_attr("industry", json!("Technology"));
            b.push(SALESFORCE, "Account", id, e, c.truth.clone());
        }
        // Deals: on HubSpot, on Salesforce, or on both when the integration syncs them.
        let mut keys = Vec::new();
        for _ in 0..b.rng.random_range(0..=3) {
            let n = b.next_id();
            let truth = format!("deal:{}:{n}", b.shard);
            let synced = c.hubspot.is_some() && c.salesforce.is_some() && b.rng.random_bool(0.6);
            let on_hs = c.hubspot.is_some() && (synced || b.rng.random_bool(0.6));
            let on_sf = c.salesforce.is_some() && (synced || !on_hs);
            let opp = on_sf.then(|| sf_id("006", n));
            if let (true, Some(company)) = (on_hs, &c.hubspot) {
                let id = n.to_string();
                let mut e = Entity::new(
                    EntityKind::Deal,
                    SourceRef::new("hubspot", "deal", id.clone()),
                )
                .with_name(format!("{} renewal {n}", c.name))
                .with_attr("amount", json!(b.rng.random_range(1_000..100_000)))
                .with_relation(
                    "deal_company",
                    SourceRef::new("hubspot", "company", company.clone()),
                );
                if let (true, Some(o)) = (synced, &opp) {
                    let v = if b.rng.random_bool(0.3) {
                        o.to_ascii_lowercase()
                    } else {
                        o.clone()
                    };
                    e.custom_fields
                        .insert("salesforceopportunityid".into(), json!(v));
                }
                keys.push(SourceKey::new(HUBSPOT, "hubspot", "deal", id.clone()));
                b.push(HUBSPOT, "deals", &id, e, truth.clone());
            }
            if let (Some(o), Some(account)) = (&opp, &c.salesforce) {
                let e = Entity::new(
                    EntityKind::Deal,
                    SourceRef::new("salesforce", "opportunity", o.clone()),
                )
                .with_name(format!("{} - Renewal", c.name))
                .with_attr("amount", json!(b.rng.random_range(1_000..100_000)))
                .with_relation(
                    "account",
                    SourceRef::new("salesforce", "account", account.clone()),
                );
                keys.push(SourceKey::new(
                    SALESFORCE,
                    "salesforce",
                    "opportunity",
                    o.clone(),
                ));
                b.push(SALESFORCE, "Opportunity", o, e, truth.clone());
            }
        }
        deals.push(keys);
    }
    deals
}

fn emit_people(
    b: &mut Builder<'_>,
    companies: &[Company],
    people: &[Person],
    deals: &[Vec<SourceKey>],
    paths: &mut Vec<ExpectedPath>,
) {
    let mut people: Vec<Person> = people.to_vec();
    // Look-alikes that must stay apart, added as people of their own.
    let mut extra = Vec::new();
    for (i, p) in people.iter_mut().enumerate() {
        let roll = b.rng.random_range(0..1000);
        if roll < 10 {
            // john.smith@outlook.com vs johnsmith@outlook.com: different mailboxes.
            let local = format!(
                "{}.{}{}x{}",
                ascii_lower(&p.first),
                ascii_lower(&p.last),
                b.shard,
                i
            );
            p.personal_email = Some(format!("{local}@outlook.com"));
            p.work_email = None;
            p.company = None;
            let mut twin = p.clone();
            twin.truth = format!("{}:twin", p.truth);
            twin.personal_email = Some(format!("{}@outlook.com", local.replace('.', "")));
            twin.phone = Some(Phone::random(&mut b.rng, Country::Us));
            twin.twitter = None;
            extra.push(twin);
        } else if roll < 20 {
            // Colleagues behind one switchboard: the company's number on both.
            if let Some(c) = p.company {
                p.phone = Some(companies[c].switchboard.clone());
                let mut colleague = p.clone();
                colleague.truth = format!("{}:colleague", p.truth);
                colleague.first = FIRST[(i + 7) % FIRST.len()].to_string();
                colleague.work_email = companies[c]
                    .domain
                    .as_ref()
                    .map(|d| format!("{}{}c{}@{d}", ascii_lower(&colleague.first), b.shard, i));
                colleague.personal_email = None;
                colleague.twitter = None;
                extra.push(colleague);
            }
        } else if roll < 28 {
            // A family landline, same provider: kept apart by the phone guard.
            // (Different providers below, at a lower rate: joined by the phone, a false merge.)
            let provider = if roll < 26 { "gmail.com" } else { "yahoo.com" };
            let home = Phone::random(&mut b.rng, Country::Us);
            p.phone = Some(home.clone());
            p.personal_email = Some(format!(
                "{}{}{}h{i}@gmail.com",
                ascii_lower(&p.first),
                ascii_lower(&p.last),
                b.shard
            ));
            p.work_email = None;
            p.company = None;
            let mut partner = p.clone();
            partner.truth = format!("{}:family", p.truth);
            partner.first = FIRST[(i + 13) % FIRST.len()].to_string();
            partner.personal_email = Some(format!(
                "{}{}{}f{i}@{provider}",
                ascii_lower(&partner.first),
                ascii_lower(&p.last),
                b.shard
            ));
            partner.twitter = None;
            extra.push(partner);
        }
    }
    people.extend(extra);

    // Several people listed with the company's info@ mailbox only (HubSpot form fills).
    for (ci, c) in companies.iter().enumerate() {
        let (Some(d), Some(_)) = (&c.domain, &c.hubspot) else {
            continue;
        };
        if !b.rng.random_bool(0.01) {
            continue;
        }
        for k in 0..3 {
            let id = b.next_id().to_string();
            let e = Entity::new(
                EntityKind::Person,
                SourceRef::new("hubspot", "contact", id.clone()),
            )
            .with_name(format!(
                "{} {}",
                FIRST[(ci + k) % FIRST.len()],
                LAST[k % LAST.len()]
            ))
            .with_identity(Identity::Email(format!("Info@{d}")))
            .with_identity(Identity::Phone(
                Phone::random(&mut b.rng, Country::Us).written(&mut b.rng, Country::Us),
            ));
            b.push(
                HUBSPOT,
                "contacts",
                &id,
                e,
                format!("person:{}:info{ci}-{k}", b.shard),
            );
        }
    }

    for p in &people {
        let on_front = b.rng.random_bool(0.7);
        let on_hs = b.rng.random_bool(0.75);
        let on_sf = b.rng.random_bool(0.5) || (!on_front && !on_hs);
        let company = p.company.map(|c| &companies[c]);
        let hs_id = on_hs.then(|| b.next_id().to_string());
        let sf_contact = on_sf.then(|| {
            let n = b.next_id();
            sf_id("003", n)
        });
        let Some(primary) = p.primary_email().cloned() else {
            continue;
        };

        if let Some(id) = &hs_id {
            let mut e = Entity::new(
                EntityKind::Person,
                SourceRef::new("hubspot", "contact", id.clone()),
            )
            .with_name(p.name())
            .with_identity(Identity::Email(email_variant(
                &mut b.rng, &primary, "hubspot",
            )))
            .with_attr("title", json!(p.title));
            if let (Some(personal), true) = (&p.personal_email, p.work_email.is_some())
                && b.rng.random_bool(0.4)
            {
                e = e.with_identity(Identity::Email(email_variant(
                    &mut b.rng, personal, "hubspot",
                )));
            }
            // A duplicate within HubSpot (a form fill) is joined by the phone: the main
            // contact then carries it.
            let duplicate = b.rng.random_bool(0.03);
            if let Some(ph) = &p.phone
                && (duplicate || b.rng.random_bool(0.6))
            {
                e = e.with_identity(Identity::Phone(ph.written(&mut b.rng, Country::Us)));
            }
            if let (Some(sf), true) = (&sf_contact, b.rng.random_bool(0.5)) {
                let v = if b.rng.random_bool(0.3) {
                    sf.to_ascii_lowercase()
                } else {
                    sf.clone()
                };
                e.custom_fields
                    .insert("salesforcecontactid".into(), json!(v));
            }
            if let Some(hs_company) = company.and_then(|c| c.hubspot.as_ref()) {
                e = e.with_relation(
                    "works_at",
                    SourceRef::new("hubspot", "company", hs_company.clone()),
                );
            }
            b.push(HUBSPOT, "contacts", id, e, p.truth.clone());
            // The duplicate: the personal email and the phone.
            if duplicate {
                let dup = b.next_id().to_string();
                let mut e = Entity::new(
                    EntityKind::Person,
                    SourceRef::new("hubspot", "contact", dup.clone()),
                )
                .with_name(p.first.clone());
                let email = p.personal_email.as_ref().unwrap_or(&primary).clone();
                e = e.with_identity(Identity::Email(email_variant(
                    &mut b.rng, &email, "hubspot",
                )));
                if let Some(ph) = &p.phone {
                    e = e.with_identity(Identity::Phone(ph.written(&mut b.rng, Country::Us)));
                } else if email != primary {
                    e = e.with_identity(Identity::Email(primary.to_ascii_uppercase()));
                }
                b.push(HUBSPOT, "contacts", &dup, e, p.truth.clone());
            }
        }
        if let Some(id) = &sf_contact {
            let mut e = Entity::new(
                EntityKind::Person,
                SourceRef::new("salesforce", "contact", id.clone()),
            )
            .with_name(if b.rng.random_bool(0.3) {
                format!("{} {}", p.first, p.last.to_uppercase())
            } else {
                p.name()
            })
            .with_identity(Identity::Email(email_variant(
                &mut b.rng,
                &primary,
                "salesforce",
            )))
            .with_attr("title", json!(p.title.to_uppercase()));
            if let Some(ph) = &p.phone
                && b.rng.random_bool(0.7)
            {
                e = e.with_identity(Identity::Phone(ph.written(&mut b.rng, Country::Gb)));
            }
            if let (Some(hs), true) = (&hs_id, b.rng.random_bool(0.2)) {
                e.custom_fields
                    .insert("HubSpot_Contact_ID__c".into(), json!(hs));
            }
            if let Some(acct) = company.and_then(|c| c.salesforce.as_ref()) {
                e = e.with_relation(
                    "works_at",
                    SourceRef::new("salesforce", "account", acct.clone()),
                );
            }
            b.push(SALESFORCE, "Contact", id, e, p.truth.clone());
        }
        if on_front {
            let n = b.next_id();
            let id = format!("crd_{n:x}");
            let mut e = Entity::new(
                EntityKind::Person,
                SourceRef::new("frontapp", "contact", id.clone()),
            )
            .with_name(p.name())
            .with_attr(
                "description",
                json!(format!(
                    "{} at {}",
                    p.title,
                    company.map_or("home", |c| c.name.as_str())
                )),
            );
            let hard = b.rng.random_bool(0.005) && (on_hs || on_sf);
            if hard {
                // Known to Front only by an address nobody else has: cannot be joined.
                e = e.with_identity(Identity::Email(format!(
                    "{}.{}.{}z{n}@icloud.com",
                    ascii_lower(&p.first),
                    ascii_lower(&p.last),
                    b.shard
                )));
            } else {
                if b.rng.random_bool(0.5) {
                    e = e.with_identity(Identity::Email(email_variant(
                        &mut b.rng, &primary, "frontapp",
                    )));
                } else {
                    e = e.with_identity(Identity::Handle {
                        source: "email".into(),
                        value: email_variant(&mut b.rng, &primary, "frontapp"),
                    });
                }
                if let Some(ph) = &p.phone
                    && b.rng.random_bool(0.4)
                {
                    e = e.with_identity(Identity::Handle {
                        source: "phone".into(),
                        value: ph.written(&mut b.rng, Country::Us),
                    });
                }
            }
            if let Some(t) = &p.twitter {
                e = e.with_identity(Identity::Handle {
                    source: "twitter".into(),
                    value: if b.rng.random_bool(0.5) {
                        format!("@{t}")
                    } else {
                        t.to_uppercase()
                    },
                });
            }
            let contact_key = SourceKey::new(FRONT, "frontapp", "contact", id.clone());
            b.push(FRONT, "contacts", &id, e, p.truth.clone());
            // Conversations with the contact.
            for _ in 0..b.rng.random_range(0..=2) {
                let n = b.next_id();
                let cid = format!("cnv_{n:x}");
                let e = Entity::new(
                    EntityKind::Conversation,
                    SourceRef::new("frontapp", "conversation", cid.clone()),
                )
                .with_name(format!("Question from {}", p.first))
                .with_relation(
                    "recipient",
                    SourceRef::new("frontapp", "contact", id.clone()),
                );
                b.push(
                    FRONT,
                    "conversations",
                    &cid,
                    e,
                    format!("conversation:{}:{n}", b.shard),
                );
                // A path to check when the person works at a company with deals and the
                // contact carries the work email.
                if let (Some(ci), false) = (p.company, hard)
                    && !deals[ci].is_empty()
                    && p.work_email.is_some()
                {
                    let c = &companies[ci];
                    let organization = match (&c.hubspot, &c.salesforce) {
                        (Some(h), _) => SourceKey::new(HUBSPOT, "hubspot", "company", h.clone()),
                        (None, Some(s)) => {
                            SourceKey::new(SALESFORCE, "salesforce", "account", s.clone())
                        }
                        (None, None) => continue,
                    };
                    paths.push(ExpectedPath {
                        conversation: SourceKey::new(
                            FRONT,
                            "frontapp",
                            "conversation",
                            cid.clone(),
                        ),
                        person: contact_key.clone(),
                        organization,
                        deals: deals[ci].clone(),
                    });
                }
            }
        }
    }
}

/// Pairwise merge quality: of the pairs of source entities put in one canonical entity, how
/// many are truly one (precision); of the pairs truly one, how many were put together
/// (recall).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct MergeQuality {
    /// Source entities counted.
    pub sources: u64,
    /// Pairs that are truly the same entity.
    pub true_pairs: u64,
    /// Pairs resolved into one canonical entity.
    pub predicted_pairs: u64,
    /// Pairs both.
    pub correct_pairs: u64,
    /// `correct / predicted` (1 when nothing was merged).
    pub precision: f64,
    /// `correct / true` (1 when nothing should be merged).
    pub recall: f64,
}

fn pairs(n: u64) -> u64 {
    n.saturating_mul(n.saturating_sub(1)) / 2
}

impl MergeQuality {
    /// Computes the measures from `(truth, canonical id)` of each source entity.
    pub fn compute<'a>(items: impl IntoIterator<Item = (&'a str, CanonicalId)>) -> Self {
        let mut by_truth: HashMap<&str, u64> = HashMap::new();
        let mut by_pred: HashMap<CanonicalId, u64> = HashMap::new();
        let mut by_both: HashMap<(&str, CanonicalId), u64> = HashMap::new();
        let mut sources = 0;
        for (t, p) in items {
            sources += 1;
            *by_truth.entry(t).or_default() += 1;
            *by_pred.entry(p).or_default() += 1;
            *by_both.entry((t, p)).or_default() += 1;
        }
        let true_pairs: u64 = by_truth.values().map(|n| pairs(*n)).sum();
        let predicted_pairs: u64 = by_pred.values().map(|n| pairs(*n)).sum();
        let correct_pairs: u64 = by_both.values().map(|n| pairs(*n)).sum();
        let ratio = |a: u64, b: u64| if b == 0 { 1.0 } else { a as f64 / b as f64 };
        MergeQuality {
            sources,
            true_pairs,
            predicted_pairs,
            correct_pairs,
            precision: ratio(correct_pairs, predicted_pairs),
            recall: ratio(correct_pairs, true_pairs),
        }
    }
}

/// What [`evaluate`] measured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Evaluation {
    /// Every source entity.
    pub overall: MergeQuality,
    /// Per kind (`person`, `organization`, `deal`).
    pub by_kind: BTreeMap<String, MergeQuality>,
    /// Source entities not found in the graph.
    pub missing: u64,
    /// Paths checked.
    pub paths_checked: u64,
    /// Paths that did not resolve, with why (at most 20 listed).
    pub path_failures: Vec<String>,
    /// How many paths failed.
    pub paths_failed: u64,
}

/// Measures `graph` against the truth: pairwise precision and recall, and the paths
/// (conversation -> person -> organization -> deals, and back).
///
/// # Errors
/// `Storage` on database failures.
pub async fn evaluate(graph: &EntityGraph, truth: &GroundTruth) -> Result<Evaluation> {
    let keys: Vec<SourceKey> = truth.truth.iter().map(|(k, _)| k.clone()).collect();
    let found = graph.find_sources(&keys).await?;
    let mut eval = Evaluation::default();
    let mut all = Vec::new();
    let mut by_kind: BTreeMap<String, Vec<(&str, CanonicalId)>> = BTreeMap::new();
    let mut cluster_of: HashMap<&SourceKey, CanonicalId> = HashMap::new();
    for ((key, t), c) in truth.truth.iter().zip(found) {
        let Some(c) = c else {
            eval.missing += 1;
            continue;
        };
        cluster_of.insert(key, c);
        all.push((t.as_str(), c));
        let kind = t.split(':').next().unwrap_or("").to_string();
        by_kind.entry(kind).or_default().push((t.as_str(), c));
    }
    eval.overall = MergeQuality::compute(all);
    eval.by_kind = by_kind
        .into_iter()
        .map(|(k, v)| (k, MergeQuality::compute(v)))
        .collect();

    let mut cache = HashMap::new();
    for path in &truth.paths {
        eval.paths_checked += 1;
        if let Err(why) = check_path(graph, path, &cluster_of, &mut cache).await? {
            eval.paths_failed += 1;
            if eval.path_failures.len() < 20 {
                eval.path_failures.push(why);
            }
        }
    }
    Ok(eval)
}

/// Loads canonical entities once per evaluation.
async fn load(
    graph: &EntityGraph,
    cache: &mut HashMap<CanonicalId, Option<CanonicalEntity>>,
    id: CanonicalId,
) -> Result<Option<CanonicalEntity>> {
    if let Some(e) = cache.get(&id) {
        return Ok(e.clone());
    }
    let e = graph.canonical(id).await?;
    cache.insert(id, e.clone());
    Ok(e)
}

async fn check_path(
    graph: &EntityGraph,
    path: &ExpectedPath,
    cluster_of: &HashMap<&SourceKey, CanonicalId>,
    cache: &mut HashMap<CanonicalId, Option<CanonicalEntity>>,
) -> Result<std::result::Result<(), String>> {
    let get = |k: &SourceKey| cluster_of.get(k).copied();
    let (Some(conv), Some(person), Some(org)) = (
        get(&path.conversation),
        get(&path.person),
        get(&path.organization),
    ) else {
        return Ok(Err(format!("{path:?}: a source is not resolved")));
    };
    let Some(c) = load(graph, cache, conv).await? else {
        return Ok(Err(format!("conversation {conv} not found")));
    };
    if !c.neighbors().contains(&person) {
        return Ok(Err(format!(
            "conversation {conv} does not lead to person {person}"
        )));
    }
    let Some(p) = load(graph, cache, person).await? else {
        return Ok(Err(format!("person {person} not found")));
    };
    if !p.neighbors().contains(&org) {
        return Ok(Err(format!(
            "person {person} does not lead to organization {org}"
        )));
    }
    if !p
        .relations
        .iter()
        .any(|r| r.direction == Direction::Incoming && r.other == Some(conv))
    {
        return Ok(Err(format!(
            "person {person} does not lead back to conversation {conv}"
        )));
    }
    let Some(o) = load(graph, cache, org).await? else {
        return Ok(Err(format!("organization {org} not found")));
    };
    if !o.neighbors().contains(&person) {
        return Ok(Err(format!(
            "organization {org} does not lead back to person {person}"
        )));
    }
    for d in &path.deals {
        let Some(deal) = get(d) else {
            return Ok(Err(format!("deal {d:?} not resolved")));
        };
        if !o.neighbors().contains(&deal) {
            return Ok(Err(format!(
                "organization {org} does not lead to deal {deal}"
            )));
        }
        let Some(dv) = load(graph, cache, deal).await? else {
            return Ok(Err(format!("deal {deal} not found")));
        };
        if !dv.neighbors().contains(&org) {
            return Ok(Err(format!(
                "deal {deal} does not lead back to organization {org}"
            )));
        }
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quality_counts_pairs() {
        let q = MergeQuality::compute([
            ("a", CanonicalId(1)),
            ("a", CanonicalId(1)),
            ("a", CanonicalId(2)),
            ("b", CanonicalId(2)),
        ]);
        assert_eq!(
            (q.true_pairs, q.predicted_pairs, q.correct_pairs),
            (3, 2, 1)
        );
        assert!((q.precision - 0.5).abs() < 1e-9);
        assert!((q.recall - 1.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn generation_is_seeded() {
        let c = GroundTruthConfig::new(5, 200, 40);
        let a = generate_shard(&c, 0);
        let b = generate_shard(&c, 0);
        assert_eq!(a.truth, b.truth);
        assert_eq!(a.entities(), b.entities());
        let other = generate_shard(&c, 1);
        assert!(
            a.truth
                .iter()
                .all(|(k, _)| !other.truth.iter().any(|(o, _)| o == k))
        );
        assert!(sf_id("003", 1).len() == 18);
    }
}
