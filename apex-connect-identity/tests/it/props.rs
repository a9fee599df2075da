//! Property tests: the normalizers (total, idempotent, equal up to documented variation) and
//! the union-find invariants after any sequence of adds, deletes, splits and unsplits.

use std::str::FromStr;

use apex_connect_core::{Entity, EntityKind, ErrorKind, Identity, SourceRef};
use apex_connect_identity::normalize::{
    self, Normalizer, handle, phone, registrable_domain, salesforce_id, salesforce_id18,
};
use apex_connect_identity::{CanonicalId, EntityGraph, Policy, Region, SourceKey};
use proptest::prelude::*;

use crate::{delete, put};

fn us() -> Region {
    Region::from_str("US").unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn normalizers_never_panic_and_are_idempotent(s in any::<String>(), source in "[a-zA-Z]{0,8}") {
        let n = Normalizer::default();
        if let Some(e) = n.email(&s) {
            let again = n.email(&e.address).expect("a normalized email stays an email");
            prop_assert_eq!(&again.address, &e.address);
            prop_assert_eq!(again.role, e.role);
        }
        for region in [None, Some(us())] {
            if let Some(p) = phone(&s, region) {
                prop_assert_eq!(phone(&p, region), Some(p.clone()));
                prop_assert_eq!(phone(&p, None), Some(p.clone()));
            }
        }
        if let Some(d) = registrable_domain(&s) {
            prop_assert_eq!(registrable_domain(&d), Some(d.clone()));
        }
        if let Some((src, v)) = handle(&source, &s) {
            prop_assert_eq!(handle(&src, &v), Some((src.clone(), v.clone())));
        }
        if let Some(id) = salesforce_id(&s) {
            prop_assert_eq!(salesforce_id(&id), Some(id.clone()));
        }
        let _ = normalize::platform_id("hubspot", &s);
    }

    #[test]
    fn phone_like_input_never_panics(s in "[0-9+()\\-. #;:xextl]{0,40}") {
        for region in [None, Some(us()), Some(Region::from_str("CH").unwrap())] {
            if let Some(p) = phone(&s, region) {
                prop_assert_eq!(phone(&p, region), Some(p.clone()));
            }
        }
    }

    #[test]
    fn emails_equal_up_to_case_whitespace_and_wrapping(
        local in "[a-z][a-z0-9_]{0,10}(\\.[a-z0-9]{1,6})?",
        domain in "[a-z][a-z0-9]{1,10}\\.(com|io|co\\.uk|de)",
        form in 0usize..5,
        pad in "[ \\t]{0,3}",
    ) {
        let n = Normalizer::default();
        let plain = format!("{local}@{domain}");
        let upper = plain.to_uppercase();
        let variant = match form {
            0 => upper.clone(),
            1 => format!("{pad}{plain}{pad}"),
            2 => format!("mailto:{upper}"),
            3 => format!("Some One <{plain}>"),
            _ => format!("\"{upper}\""),
        };
        let a = n.email(&plain).map(|e| e.address);
        prop_assert!(a.is_some());
        prop_assert_eq!(a, n.email(&variant).map(|e| e.address));
    }

    #[test]
    fn gmail_dots_and_tags_are_one_mailbox_elsewhere_dots_matter(
        user in "[a-z]{2,6}",
        rest in "[a-z]{2,6}",
        tag in "[a-z0-9]{1,6}",
    ) {
        let n = Normalizer::default();
        let e = |s: String| n.email(&s).map(|e| e.address);
        let canonical = e(format!("{user}{rest}@gmail.com"));
        prop_assert_eq!(&canonical, &e(format!("{user}.{rest}@gmail.com")));
        prop_assert_eq!(&canonical, &e(format!("{user}.{rest}+{tag}@GoogleMail.com")));
        prop_assert_eq!(&canonical, &e(format!("{}.{}@gmail.com", user.to_uppercase(), rest)));
        prop_assert_ne!(
            e(format!("{user}.{rest}@outlook.com")),
            e(format!("{user}{rest}@outlook.com"))
        );
        prop_assert_ne!(
            e(format!("{user}+{tag}@acme.com")),
            e(format!("{user}@acme.com"))
        );
        prop_assert_eq!(
            e(format!("{user}+{tag}@fastmail.com")),
            e(format!("{user}@fastmail.com"))
        );
    }

    #[test]
    fn us_phones_equal_in_every_format(
        area in 201u32..990,
        exchange in 200u32..1000,
        line in 0u32..10_000,
        form in 0usize..7,
    ) {
        let (a, x, l) = (area.to_string(), format!("{exchange:03}"), format!("{line:04}"));
        let written = match form {
            0 => format!("({a}) {x}-{l}"),
            1 => format!("{a}.{x}.{l}"),
            2 => format!("{a}-{x}-{l}"),
            3 => format!("1-{a}-{x}-{l}"),
            4 => format!("+1 {a} {x} {l}"),
            5 => format!("tel:+1-{a}-{x}-{l}"),
            _ => format!("{a}{x}{l}"),
        };
        let canonical = phone(&format!("+1{a}{x}{l}"), None);
        prop_assume!(canonical.is_some());
        prop_assert_eq!(phone(&written, Some(us())), canonical);
    }

    #[test]
    fn domains_equal_up_to_scheme_host_path_and_case(
        name in "[a-z][a-z0-9-]{0,10}[a-z0-9]",
        tld in "(com|io|co\\.uk|com\\.au|de)",
        sub in "(|www\\.|shop\\.|a\\.b\\.)",
        scheme in "(|http://|https://|HTTPS://)",
        path in "(|/|/about|/a/b\\?x=1|:8080/x)",
    ) {
        let bare = format!("{name}.{tld}");
        // Some generated names are public suffixes themselves (`za.com`, `us.com` are in the
        // list's private section): nothing is registrable there, so they are not inputs of
        // this property.
        prop_assume!(psl::suffix_str(&bare) != Some(bare.as_str()));
        let base = registrable_domain(&bare);
        prop_assert!(base.is_some());
        let written = format!("{scheme}{sub}{}.{tld}{path}", name.to_uppercase());
        prop_assert_eq!(registrable_domain(&written), base);
    }

    #[test]
    fn salesforce_ids_survive_case_folding(id in "[0-9a-zA-Z]{15}") {
        let long = salesforce_id18(&id).unwrap();
        prop_assert_eq!(salesforce_id(&long), Some(id.clone()));
        prop_assert_eq!(salesforce_id(&long.to_lowercase()), Some(id.clone()));
        prop_assert_eq!(salesforce_id(&long.to_uppercase()), Some(id.clone()));
    }
}

// ----- merge / split invariants

const EMAILS: &[&str] = &[
    "a@x.com",
    "b@x.com",
    "c@y.com",
    "d@gmail.com",
    "e@gmail.com",
    "f@yahoo.com",
];
const PHONES: &[&str] = &["+14155550101", "+14155550102", "+14155550103"];
const DOMAINS: &[&str] = &["x.com", "y.com", "gmail.com"];

#[derive(Debug, Clone)]
enum Op {
    /// Upsert node `n` with the identities picked by the masks.
    Upsert {
        n: usize,
        emails: u8,
        phones: u8,
        domains: u8,
    },
    Delete {
        n: usize,
    },
    /// Split the entity of node `n`: the members picked by `mask` (in source order).
    Split {
        n: usize,
        mask: u16,
    },
    /// Undo the `k`-th split (modulo their number).
    Unsplit {
        k: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        5 => (0usize..10, any::<u8>(), any::<u8>(), any::<u8>())
            .prop_map(|(n, emails, phones, domains)| Op::Upsert { n, emails, phones, domains }),
        2 => (0usize..10).prop_map(|n| Op::Delete { n }),
        2 => (0usize..10, any::<u16>()).prop_map(|(n, mask)| Op::Split { n, mask }),
        1 => (0usize..4).prop_map(|k| Op::Unsplit { k }),
    ]
}

/// Nodes 0..7 are HubSpot contacts (people), 7..10 HubSpot companies.
fn entity(n: usize, emails: u8, phones: u8, domains: u8) -> Entity {
    let person = n < 7;
    let (kind, object) = if person {
        (EntityKind::Person, "contact")
    } else {
        (EntityKind::Organization, "company")
    };
    let mut e = Entity::new(kind, SourceRef::new("hubspot", object, n.to_string()));
    // Sparse picks: at most two identities of each kind.
    for (i, v) in EMAILS.iter().enumerate() {
        if person && emails & (1 << i) != 0 && (emails.count_ones() <= 2 || i % 2 == 0) {
            e = e.with_identity(Identity::Email(v.to_string()));
        }
    }
    for (i, v) in PHONES.iter().enumerate() {
        if person && phones & (1 << i) != 0 {
            e = e.with_identity(Identity::Phone(v.to_string()));
        }
    }
    for (i, v) in DOMAINS.iter().enumerate() {
        if !person && domains & (1 << i) != 0 {
            e = e.with_identity(Identity::Domain(v.to_string()));
        }
    }
    e
}

fn source(n: usize) -> SourceKey {
    let object = if n < 7 { "contact" } else { "company" };
    SourceKey::new("hs", "hubspot", object, n.to_string())
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let g = EntityGraph::open_in_memory()
        .await
        .unwrap()
        .with_policy(Policy::default().with_default_region(us()));
    let mut version = 1i64;
    let mut splits: Vec<i64> = Vec::new();
    let mut last: std::collections::BTreeMap<usize, (u8, u8, u8, i64)> = Default::default();
    for op in ops {
        version += 1;
        match op {
            Op::Upsert {
                n,
                emails,
                phones,
                domains,
            } => {
                let stream = if n < 7 { "contacts" } else { "companies" };
                put(
                    &g,
                    "hs",
                    stream,
                    vec![(
                        n.to_string().as_str(),
                        version,
                        entity(n, emails, phones, domains),
                    )],
                )
                .await;
                last.insert(n, (emails, phones, domains, version));
            }
            Op::Delete { n } => {
                let stream = if n < 7 { "contacts" } else { "companies" };
                delete(&g, "hs", stream, &n.to_string(), version).await;
                last.remove(&n);
            }
            Op::Split { n, mask } => {
                let Some(id) = g.find_source(&source(n)).await.unwrap() else {
                    continue;
                };
                let entity = g.canonical(id).await.unwrap().unwrap();
                let members: Vec<SourceKey> = entity
                    .sources
                    .iter()
                    .map(|s| s.provenance.source.clone())
                    .collect();
                let picked: Vec<SourceKey> = members
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| mask & (1 << i) != 0)
                    .map(|(_, s)| s.clone())
                    .collect();
                match g.split(id, &picked, None).await {
                    Ok(out) => {
                        prop_assert!(!picked.is_empty() && picked.len() < members.len());
                        // The picked sources and the others are in different entities now.
                        let picked_ids = g.find_sources(&picked).await.unwrap();
                        let others: Vec<SourceKey> = members
                            .iter()
                            .filter(|m| !picked.contains(m))
                            .cloned()
                            .collect();
                        let other_ids = g.find_sources(&others).await.unwrap();
                        for p in &picked_ids {
                            prop_assert!(!other_ids.contains(p));
                        }
                        splits.push(out.split);
                    }
                    Err(e) => {
                        prop_assert_eq!(e.kind(), ErrorKind::InvalidInput);
                        prop_assert!(picked.is_empty() || picked.len() == members.len());
                    }
                }
            }
            Op::Unsplit { k } => {
                if splits.is_empty() {
                    continue;
                }
                let s = splits[k % splits.len()];
                g.unsplit(s).await.unwrap();
            }
        }
        let audit = g.audit().await.unwrap();
        prop_assert!(audit.is_consistent(), "{:#?}", audit.violations);
        prop_assert_eq!(audit.sources as usize, last.len());
    }
    // Replaying the current state changes nothing.
    let before = g.stats().await.unwrap();
    for (n, (e, p, d, v)) in &last {
        let stream = if *n < 7 { "contacts" } else { "companies" };
        let r = put(
            &g,
            "hs",
            stream,
            vec![(n.to_string().as_str(), *v, entity(*n, *e, *p, *d))],
        )
        .await;
        prop_assert_eq!(r.applied, 0);
    }
    prop_assert_eq!(g.stats().await.unwrap(), before);
    // Ids that were merged away still resolve.
    for ev in g.recent_events(1000).await.unwrap() {
        if let Some(other) = ev.other {
            let _ = g.canonical(CanonicalId(other.0)).await.unwrap();
        }
    }
    Ok(())
}

/// Cases of the union-find property: 96, or `PROPTEST_CASES` for a longer run.
fn uf_cases() -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(96)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: uf_cases(), ..ProptestConfig::default() })]

    #[test]
    fn union_find_stays_consistent(ops in prop::collection::vec(op(), 1..30)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(run(ops))?;
    }
}
