//! Ground truth through the real connectors: the same people and companies seeded into the
//! Front, HubSpot and Salesforce simulators in each platform's own record shapes, synced by
//! each connector with the `SyncEngine` into an `EntityGraphSink`, so the mapping
//! (`map_entity`), the identity extraction and the resolution all run end to end. Then
//! pairwise precision and recall of the merges against the truth, and every known
//! person -> organization relation resolved to the right canonical organization.
//!
//! Variation: emails in mixed case, with stray whitespace, `mailto:` and `Name <addr>` (Front
//! handles), Gmail dots, `+tags` and `@googlemail.com`; phones in US national formats on
//! HubSpot and Front and international ones on the (UK) Salesforce org; company names in
//! variants (`Acme`, `ACME Corporation`, `Acme, Inc.`) with one web domain written as
//! `https://www.acme.com/`, `acme.com`, `shop.acme.com`; HubSpot's Salesforce-integration ids
//! (18 characters, sometimes lower-cased) on some contacts and companies; a duplicate HubSpot
//! contact from a form. Look-alikes that must not merge: people of the same name with other
//! emails (ten John Smiths), `john.smith@outlook.com` and `johnsmith@outlook.com`, colleagues
//! listed with the company's `info@` mailbox, colleagues behind one switchboard number, small
//! businesses whose website is `gmail.com`, companies of the same name with other domains.

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use apex_connect_core::{
    ConnectionId, Connector, MemoryStore, MemoryTokenStore, StateStore, StreamId, SyncEngine,
    SyncOptions,
};
use apex_connect_frontapp::{FrontConnector, FrontSim, FrontSimConfig};
use apex_connect_hubspot::{HubSpotConnector, HubSpotSim, HubSpotSimConfig};
use apex_connect_identity::groundtruth::{self, FRONT, HUBSPOT, MergeQuality, SALESFORCE};
use apex_connect_identity::{CanonicalId, Direction, EntityGraph, EntityGraphSink, SourceKey};
use apex_connect_salesforce::{SalesforceSim, SalesforceSimConfig};
use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde_json::json;

const SEED: u64 = 23;
const PEOPLE: usize = 400;
const COMPANIES: usize = 48;
/// Companies `LOOKALIKE..` share the name of company `i - LOOKALIKE` (another domain).
const LOOKALIKE: usize = 40;

const FIRST: &[&str] = &[
    "Ann", "Bob", "Carla", "David", "Elena", "Farid", "Grace", "Hugo", "Irene", "Jamal", "Kira",
    "Liam", "Maria", "Noah", "Olga", "Pedro", "Quinn", "Rosa", "Sam", "Tara", "Umar", "Vera",
    "Will", "Yusuf", "Zoe", "Aiko", "Bruno", "Chloe", "Emma", "Felix",
];
const LAST: &[&str] = &[
    "Lee", "Garcia", "Okafor", "Nguyen", "Rossi", "Kowalski", "Johnson", "Brown", "Silva",
    "Tanaka", "Kim", "Patel", "Cohen", "Dubois", "Hansen", "Novak", "Schmidt", "Jones", "Miller",
    "Davis",
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
    "oscorp",
    "gringotts",
    "nakatomi",
    "monarch",
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
    "coho",
    "lucerne",
    "alpine",
    "relecloud",
    "southridge",
    "woodgrove",
    "lamna",
];
const FREE_MAIL: &[&str] = &[
    "gmail.com",
    "gmail.com",
    "outlook.com",
    "yahoo.com",
    "icloud.com",
];
const AREAS: &[u32] = &[212, 415, 312, 617, 206, 512, 303, 404, 305, 646, 718, 202];

struct Company {
    truth: String,
    word: String,
    /// `None`: a small business whose "website" is `gmail.com`.
    domain: Option<String>,
    switchboard: String,
    on_hs: bool,
    on_sf: bool,
}

struct Person {
    truth: String,
    first: String,
    last: String,
    company: Option<usize>,
    email: String,
    /// National significant number (US, 10 digits).
    phone: Option<String>,
    /// Listed in HubSpot with the company switchboard instead of a direct line.
    switchboard: bool,
    /// Listed in HubSpot with the company's `info@` mailbox as an additional email.
    shared_mailbox: bool,
}

fn cap(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

fn us_phone(rng: &mut StdRng) -> String {
    let area = *AREAS.choose(rng).unwrap();
    format!(
        "{area}{:03}{:04}",
        rng.random_range(201..=989u32),
        rng.random_range(0..10_000u32)
    )
}

/// A US number as typed in the US (HubSpot, Front).
fn us_written(rng: &mut StdRng, n: &str) -> String {
    let (a, b, c) = (&n[..3], &n[3..6], &n[6..]);
    match rng.random_range(0..6) {
        0 => format!("({a}) {b}-{c}"),
        1 => format!("{a}.{b}.{c}"),
        2 => format!("{a}-{b}-{c}"),
        3 => format!("1-{a}-{b}-{c}"),
        4 => format!("+1 {a} {b} {c}"),
        _ => format!("tel:+1-{a}-{b}-{c}"),
    }
}

/// A US number as typed in the UK Salesforce org (international).
fn gb_written(rng: &mut StdRng, n: &str) -> String {
    let (a, b, c) = (&n[..3], &n[3..6], &n[6..]);
    if rng.random_bool(0.5) {
        format!("+1 {a} {b} {c}")
    } else {
        format!("001 {a}-{b}-{c}")
    }
}

/// The email as a source may hold it.
fn email_variant(rng: &mut StdRng, email: &str, front: bool) -> String {
    let (local, domain) = email.rsplit_once('@').unwrap();
    if domain == "gmail.com" {
        match rng.random_range(0..6) {
            0 => return format!("{local}+crm@gmail.com"),
            1 => return format!("{}@googlemail.com", local.replace('.', "")),
            2 => return format!("{}@Gmail.com", local.replace('.', "")),
            _ => {}
        }
    }
    match rng.random_range(0..8) {
        0 => email.to_ascii_uppercase(),
        1 => format!("  {email} "),
        2 => format!("{}@{}", cap(local), domain.to_ascii_uppercase()),
        3 if front => format!("mailto:{email}"),
        4 if front => format!("\"{local}\" <{email}>"),
        _ => email.to_string(),
    }
}

fn company_name(rng: &mut StdRng, word: &str, small: bool) -> String {
    if small {
        return format!("{} Bakery", cap(word));
    }
    match rng.random_range(0..4) {
        0 => cap(word),
        1 => format!("{} Corporation", word.to_ascii_uppercase()),
        2 => format!("{}, Inc.", cap(word)),
        _ => format!("{} Ltd", cap(word)),
    }
}

fn website(rng: &mut StdRng, domain: &str) -> String {
    match rng.random_range(0..5) {
        0 => format!("https://www.{domain}/"),
        1 => domain.to_string(),
        2 => format!("http://shop.{domain}"),
        3 => format!("www.{}", domain.to_ascii_uppercase()),
        _ => format!("https://{domain}/about"),
    }
}

/// Salesforce's 18-character id as the HubSpot integration stores it (sometimes lower-cased).
fn hs_copy_of_sf_id(rng: &mut StdRng, id: &str) -> String {
    if rng.random_bool(0.3) {
        id.to_ascii_lowercase()
    } else {
        id.to_string()
    }
}

fn generate(rng: &mut StdRng) -> (Vec<Company>, Vec<Person>) {
    let mut companies = Vec::new();
    for c in 0..COMPANIES {
        let (word, tld) = if c < LOOKALIKE {
            (
                WORDS[c],
                *["com", "com", "io", "co.uk"].choose(rng).unwrap(),
            )
        } else {
            (WORDS[c - LOOKALIKE], "de")
        };
        let small = c < LOOKALIKE && c % 8 == 7;
        let mut on_hs = rng.random_bool(0.8);
        let on_sf = rng.random_bool(0.7);
        if !on_sf {
            on_hs = true;
        }
        companies.push(Company {
            truth: format!("org:{c}"),
            word: word.to_string(),
            domain: (!small).then(|| format!("{word}.{tld}")),
            switchboard: us_phone(rng),
            on_hs,
            on_sf,
        });
    }
    let mut people = Vec::new();
    let mut emails = HashSet::new();
    let mut phones: HashSet<String> = companies.iter().map(|c| c.switchboard.clone()).collect();
    let mut mailbox_users: HashMap<usize, usize> = HashMap::new();
    for p in 0..PEOPLE {
        let (first, last) = if p < 10 {
            ("John", "Smith")
        } else {
            (*FIRST.choose(rng).unwrap(), *LAST.choose(rng).unwrap())
        };
        let company = (rng.random_bool(0.8)).then(|| rng.random_range(0..COMPANIES));
        let (f, l) = (first.to_ascii_lowercase(), last.to_ascii_lowercase());
        let email = match (p, company.and_then(|c| companies[c].domain.clone())) {
            // Dots matter outside Gmail: two people.
            (10, _) => "john.smith@outlook.com".to_string(),
            (11, _) => "johnsmith@outlook.com".to_string(),
            (_, Some(d)) => {
                let mut n = 0;
                loop {
                    let e = if n == 0 {
                        format!("{f}.{l}@{d}")
                    } else {
                        format!("{f}.{l}{n}@{d}")
                    };
                    if emails.insert(e.clone()) {
                        break e;
                    }
                    n += 1;
                }
            }
            // Unique after Gmail's dot removal too (the number is unique).
            (_, None) => format!("{f}.{l}{p}@{}", FREE_MAIL.choose(rng).unwrap()),
        };
        emails.insert(email.clone());
        let phone = rng.random_bool(0.6).then(|| {
            loop {
                let n = us_phone(rng);
                if phones.insert(n.clone()) {
                    break n;
                }
            }
        });
        let at_real = company.filter(|c| companies[*c].domain.is_some());
        let switchboard = at_real.is_some() && rng.random_bool(0.15);
        let shared_mailbox = at_real.is_some_and(|c| {
            let n = mailbox_users.entry(c).or_default();
            (c % 5 == 0 && *n < 3).then(|| *n += 1).is_some()
        });
        people.push(Person {
            truth: format!("person:{p}"),
            first: first.to_string(),
            last: last.to_string(),
            company,
            email,
            phone,
            switchboard,
            shared_mailbox,
        });
    }
    (companies, people)
}

/// What was seeded: the truth of every source record, and the relations the platforms assert.
#[derive(Default)]
struct Seeded {
    truth: Vec<(SourceKey, String)>,
    /// (person source, organization truth index) asserted by a CRM record.
    asserted: Vec<(SourceKey, usize)>,
    /// Person truth index -> its source records.
    person_sources: BTreeMap<usize, Vec<SourceKey>>,
    /// Organization truth index -> its source records.
    org_sources: BTreeMap<usize, Vec<SourceKey>>,
    counts: BTreeMap<&'static str, usize>,
}

fn hs_key(t: &str, id: &str) -> SourceKey {
    SourceKey::new(HUBSPOT, "hubspot", t, id)
}
fn sf_key(t: &str, id: &str) -> SourceKey {
    SourceKey::new(SALESFORCE, "salesforce", t, id)
}

fn seed(
    rng: &mut StdRng,
    companies: &[Company],
    people: &[Person],
    front: &apex_connect_frontapp::FrontSimHandle,
    hs: &HubSpotSim,
    sf: &SalesforceSim,
) -> Seeded {
    let mut s = Seeded::default();
    let mut sf_accounts = HashMap::new();
    let mut hs_companies = HashMap::new();
    for (i, c) in companies.iter().enumerate() {
        let small = c.domain.is_none();
        let domain = c.domain.as_deref().unwrap_or("gmail.com");
        if c.on_sf {
            let id = sf
                .insert(
                    "Account",
                    json!({
                        "Name": company_name(rng, &c.word, small),
                        "Website": if small { domain.to_string() } else { website(rng, domain) },
                        "Phone": gb_written(rng, &c.switchboard),
                        "Industry": "Technology",
                    }),
                )
                .unwrap();
            let k = sf_key("Account", &id);
            s.truth.push((k.clone(), c.truth.clone()));
            s.org_sources.entry(i).or_default().push(k);
            sf_accounts.insert(i, id);
            *s.counts.entry("salesforce Account").or_default() += 1;
        }
        if c.on_hs {
            let mut props = serde_json::Map::new();
            props.insert("name".into(), json!(company_name(rng, &c.word, small)));
            props.insert(
                "domain".into(),
                json!(match rng.random_range(0..3) {
                    0 if !small => format!("www.{domain}"),
                    1 => domain.to_ascii_uppercase(),
                    _ => domain.to_string(),
                }),
            );
            props.insert("phone".into(), json!(us_written(rng, &c.switchboard)));
            // The Salesforce integration's link: always on the small businesses (nothing
            // else can join them), on some others.
            if let Some(sf_id) = sf_accounts.get(&i)
                && (small || rng.random_bool(0.4))
            {
                props.insert(
                    "salesforceaccountid".into(),
                    json!(hs_copy_of_sf_id(rng, sf_id)),
                );
            }
            let id = hs
                .add_raw("companies", vec![json!({ "properties": props })])
                .unwrap()
                .remove(0);
            let k = hs_key("company", &id);
            s.truth.push((k.clone(), c.truth.clone()));
            s.org_sources.entry(i).or_default().push(k);
            hs_companies.insert(i, id);
            *s.counts.entry("hubspot companies").or_default() += 1;
        }
    }
    for (i, p) in people.iter().enumerate() {
        let company = p.company.map(|c| &companies[c]);
        let mut on_sf =
            p.company.is_some_and(|c| sf_accounts.contains_key(&c)) && rng.random_bool(0.7);
        on_sf |= p.company.is_none() && rng.random_bool(0.15);
        let mut on_hs = rng.random_bool(0.75);
        let mut on_front = rng.random_bool(0.6);
        if !(on_sf || on_hs || on_front) {
            on_hs = true;
            on_front = true;
        }
        let push = |s: &mut Seeded, k: SourceKey, what: &'static str| {
            s.truth.push((k.clone(), p.truth.clone()));
            s.person_sources.entry(i).or_default().push(k);
            *s.counts.entry(what).or_default() += 1;
        };
        let mut sf_id = None;
        if on_sf {
            let mut f = json!({
                "FirstName": p.first,
                "LastName": if rng.random_bool(0.3) { p.last.to_uppercase() } else { p.last.clone() },
                "Email": email_variant(rng, &p.email, false),
                "Title": "Buyer",
            });
            if let Some(ph) = &p.phone
                && rng.random_bool(0.7)
            {
                f["Phone"] = json!(gb_written(rng, ph));
            }
            let account = p.company.and_then(|c| sf_accounts.get(&c));
            if let Some(a) = account {
                f["AccountId"] = json!(a);
            }
            let id = sf.insert("Contact", f).unwrap();
            let k = sf_key("Contact", &id);
            if let (Some(c), Some(_)) = (p.company, account) {
                s.asserted.push((k.clone(), c));
            }
            push(&mut s, k, "salesforce Contact");
            sf_id = Some(id);
        }
        if on_hs {
            let mut props = serde_json::Map::new();
            props.insert("firstname".into(), json!(p.first));
            props.insert("lastname".into(), json!(p.last));
            props.insert("email".into(), json!(email_variant(rng, &p.email, false)));
            let phone = if p.switchboard {
                company.map(|c| c.switchboard.clone())
            } else {
                p.phone.clone()
            };
            if let Some(ph) = phone {
                props.insert("phone".into(), json!(us_written(rng, &ph)));
            }
            if p.shared_mailbox
                && let Some(d) = company.and_then(|c| c.domain.as_ref())
            {
                props.insert("hs_additional_emails".into(), json!(format!("info@{d}")));
            }
            if let Some(id) = &sf_id
                && rng.random_bool(0.3)
            {
                props.insert(
                    "salesforcecontactid".into(),
                    json!(hs_copy_of_sf_id(rng, id)),
                );
            }
            let hs_company = p.company.and_then(|c| hs_companies.get(&c));
            let mut obj = json!({ "properties": props });
            if let Some(hc) = hs_company {
                obj["associations"] = json!({"companies": {"results": [
                    {"id": hc, "type": "contact_to_company"}
                ]}});
            }
            let id = hs.add_raw("contacts", vec![obj]).unwrap().remove(0);
            let k = hs_key("contact", &id);
            if let (Some(c), Some(_)) = (p.company, hs_company) {
                s.asserted.push((k.clone(), c));
            }
            push(&mut s, k, "hubspot contacts");
            // A duplicate from a form: the same address in capitals, the first name only.
            if rng.random_bool(0.05) {
                let obj = json!({"properties": {
                    "firstname": p.first,
                    "email": p.email.to_ascii_uppercase(),
                }});
                let id = hs.add_raw("contacts", vec![obj]).unwrap().remove(0);
                push(&mut s, hs_key("contact", &id), "hubspot contacts");
            }
        }
        if on_front {
            let mut handles = vec![json!({
                "handle": email_variant(rng, &p.email, true),
                "source": "email",
            })];
            if let Some(ph) = &p.phone
                && rng.random_bool(0.4)
            {
                handles.push(json!({"handle": us_written(rng, ph), "source": "phone"}));
            }
            let obj = json!({
                "name": format!("{} {}", p.first, p.last),
                "description": company.map_or("Customer".to_string(), |c| format!("Works at {}", c.word)),
                "avatar_url": null,
                "links": [],
                "groups": [],
                "lists": [],
                "handles": handles,
                "custom_fields": {},
                "is_private": false,
            });
            let id = front.add_raw("contacts", vec![obj]).unwrap().remove(0);
            push(
                &mut s,
                SourceKey::new(FRONT, "frontapp", "contact", id),
                "frontapp contacts",
            );
        }
    }
    s
}

async fn sync(
    engine: &SyncEngine,
    connector: &dyn Connector,
    connection: &str,
    streams: &[&str],
    sink: &EntityGraphSink,
) -> u64 {
    let conn = ConnectionId::new(connection.to_string());
    let mut read = 0;
    for stream in streams {
        let r = engine
            .run(
                connector,
                &conn,
                &StreamId::new(stream.to_string()),
                sink,
                SyncOptions::new().full(true),
            )
            .await
            .unwrap_or_else(|e| panic!("sync {connection}/{stream}: {e}"));
        eprintln!(
            "  synced {connection}/{stream}: read {} applied {} rejected {} pages {} in {:?}",
            r.records_read, r.applied, r.rejected, r.pages, r.elapsed
        );
        assert_eq!(r.rejected, 0, "{connection}/{stream} rejected records");
        read += r.records_read;
    }
    read
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ground_truth_through_the_connectors() {
    let t0 = Instant::now();
    let mut rng = StdRng::seed_from_u64(SEED);
    let (companies, people) = generate(&mut rng);

    // Simulators holding only the seeded data.
    let front = FrontSim::start(FrontSimConfig::default().size(0, 0).contacts(0))
        .await
        .unwrap();
    let hs = HubSpotSim::start(
        HubSpotSimConfig::default()
            .size(0, 0, 0)
            .engagements(0)
            .rate_limits(None, None),
    )
    .await
    .unwrap();
    let sf = SalesforceSim::start(
        SalesforceSimConfig::default()
            .count("Account", 0)
            .count("Contact", 0),
    )
    .await
    .unwrap();
    let seeded = seed(&mut rng, &companies, &people, &front, &hs, &sf);
    eprintln!("seeded {:?} in {:?}", seeded.counts, t0.elapsed());

    // The real connectors, through the engine, into the graph.
    let t = Instant::now();
    let graph = EntityGraph::open_in_memory().await.unwrap();
    let sink = EntityGraphSink::new(graph, groundtruth::policy());
    let graph = sink.graph().clone();
    let engine = SyncEngine::new(Arc::new(MemoryStore::new()) as Arc<dyn StateStore>);
    let front_c = FrontConnector::builder()
        .base_url(front.base_url())
        .api_token(front.api_token())
        .build()
        .unwrap();
    let hs_c = HubSpotConnector::builder()
        .base_url(hs.base_url())
        .private_app_token(hs.private_app_token())
        .build()
        .unwrap();
    let sf_c = sf
        .connector(
            &ConnectionId::from(SALESFORCE),
            Arc::new(MemoryTokenStore::new()),
            json!({"objects": ["Account", "Contact"]}),
        )
        .await
        .unwrap();
    let mut read = 0;
    read += sync(&engine, &hs_c, HUBSPOT, &["companies", "contacts"], &sink).await;
    read += sync(
        &engine,
        sf_c.as_ref(),
        SALESFORCE,
        &["Account", "Contact"],
        &sink,
    )
    .await;
    read += sync(&engine, &front_c, FRONT, &["contacts"], &sink).await;
    eprintln!("synced {read} records in {:?}", t.elapsed());
    assert_eq!(read as usize, seeded.truth.len());

    // Pairwise precision and recall.
    let keys: Vec<SourceKey> = seeded.truth.iter().map(|(k, _)| k.clone()).collect();
    let found = graph.find_sources(&keys).await.unwrap();
    let mut cluster: HashMap<SourceKey, CanonicalId> = HashMap::new();
    let mut all = Vec::new();
    let mut by_kind: BTreeMap<&str, Vec<(&str, CanonicalId)>> = BTreeMap::new();
    let mut missing = Vec::new();
    for ((k, t), c) in seeded.truth.iter().zip(found) {
        let Some(c) = c else {
            missing.push(k.clone());
            continue;
        };
        cluster.insert(k.clone(), c);
        all.push((t.as_str(), c));
        by_kind
            .entry(t.split(':').next().unwrap())
            .or_default()
            .push((t.as_str(), c));
    }
    assert!(missing.is_empty(), "not in the graph: {missing:?}");
    let overall = MergeQuality::compute(all);
    let line = |label: &str, q: &MergeQuality| {
        eprintln!(
            "{label:<8} sources {:>4} precision {:.5} recall {:.5} (pairs: true {}, predicted {}, correct {})",
            q.sources, q.precision, q.recall, q.true_pairs, q.predicted_pairs, q.correct_pairs
        );
    };
    line("overall", &overall);
    let kinds: BTreeMap<&str, MergeQuality> = by_kind
        .into_iter()
        .map(|(k, v)| (k, MergeQuality::compute(v)))
        .collect();
    for (k, q) in &kinds {
        line(k, q);
    }

    // Relations: every (person -> organization) a CRM record asserts resolves to the right
    // canonical organization, and every employee with a work email (or an asserted
    // relation) reaches their organization from their canonical entity.
    let mut cache = HashMap::new();
    let org_of = |i: usize| cluster[&seeded.org_sources[&i][0]];
    let mut asserted_ok = 0;
    let mut failures = Vec::new();
    for (k, c) in &seeded.asserted {
        let id = cluster[k];
        if let Entry::Vacant(v) = cache.entry(id) {
            v.insert(graph.canonical(id).await.unwrap().expect("live"));
        }
        if cache[&id]
            .related("works_at", Direction::Outgoing)
            .contains(&org_of(*c))
        {
            asserted_ok += 1;
        } else {
            failures.push(format!("{k:?} does not work at org:{c}"));
        }
    }
    let mut known = 0;
    let mut resolved = 0;
    let mut wrong = 0;
    let asserted_people: HashSet<&SourceKey> = seeded.asserted.iter().map(|(k, _)| k).collect();
    for (i, p) in people.iter().enumerate() {
        let Some(c) = p.company else { continue };
        let srcs = &seeded.person_sources[&i];
        let has_work_email = companies[c].domain.is_some();
        if !has_work_email && !srcs.iter().any(|k| asserted_people.contains(k)) {
            continue; // Nothing on any platform says where this person works.
        }
        known += 1;
        let id = cluster[&srcs[0]];
        if let Entry::Vacant(v) = cache.entry(id) {
            v.insert(graph.canonical(id).await.unwrap().expect("live"));
        }
        let e = &cache[&id];
        let orgs: HashSet<CanonicalId> = [
            e.related("works_at", Direction::Outgoing),
            e.related("email_domain", Direction::Outgoing),
        ]
        .concat()
        .into_iter()
        .collect();
        if orgs.contains(&org_of(c)) {
            resolved += 1;
        } else {
            failures.push(format!("person:{i} does not reach org:{c} ({orgs:?})"));
        }
        wrong += orgs.iter().filter(|o| **o != org_of(c)).count();
    }
    eprintln!(
        "relations: asserted {asserted_ok}/{} resolved | people with a known organization {resolved}/{known} resolved | relations to another organization {wrong}",
        seeded.asserted.len()
    );
    eprintln!("total {:?}", t0.elapsed());

    assert!(
        overall.precision >= 0.995,
        "precision {}",
        overall.precision
    );
    assert!(overall.recall >= 0.99, "recall {}", overall.recall);
    for kind in ["person", "org"] {
        let q = &kinds[kind];
        assert!(q.precision >= 0.995, "{kind} precision {}", q.precision);
        assert!(q.recall >= 0.99, "{kind} recall {}", q.recall);
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(
        wrong, 0,
        "people related to organizations they do not work at"
    );
    let audit = graph.audit().await.unwrap();
    assert!(audit.is_consistent(), "{:#?}", audit.violations);
}
