//! Records a real API may send that a simulator never does: variants of a platform's documented
//! record shapes, for property tests of a connector's parsing and mapping.
//!
//! Start from a documented example object (from the vendor's OpenAPI spec or reference page)
//! and let [`mutate`] (or the proptest [`strategy`]) produce variants: every field present,
//! absent or `null`; numbers negative, fractional, huge or out of range; strings where numbers
//! were documented and numbers where strings were; arrays of arrays where objects were
//! expected; unknown keys of any type at any level (`_links` included). The envelope — the
//! fields the sync needs strictly, named in `keep` — is left as it is, so every variant must
//! read and either map or be quarantined, never fail its page.
//!
//! ```
//! use apex_connect_testkit::hostile;
//! let example = serde_json::json!({"id": "msg_1", "created_at": 1.5, "attachments": [{"size": 10}]});
//! let variants = hostile::variants(&example, &["id", "created_at"], 7, 20);
//! assert_eq!(variants.len(), 20);
//! assert!(variants.iter().all(|v| v["id"] == "msg_1" && v["created_at"] == 1.5));
//! ```

use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

/// Values a vendor-valid API may put in any field.
fn hostile_scalar(rng: &mut StdRng) -> Value {
    match rng.random_range(0..20) {
        0 => json!(-39_484_462),
        1 => json!(-1.5),
        2 => json!(1e300),
        3 => json!(-1e300),
        4 => json!(u64::MAX),
        5 => json!(i64::MIN),
        6 => json!(0),
        7 => json!(0.000_001),
        8 => json!("12345"),
        9 => json!("-1e400"),
        10 => json!(""),
        11 => json!("not a number"),
        12 => json!("日本語 ✓ \u{0}"),
        13 => json!(true),
        14 => json!([[1, 2], [3]]),
        15 => json!([]),
        16 => json!({}),
        17 => json!({"_links": {"self": 1}, "nested": [null]}),
        18 => json!(9_007_199_254_740_993_u64),
        _ => Value::Null,
    }
}

fn unknown_key(rng: &mut StdRng) -> String {
    const KEYS: [&str; 6] = ["_links", "_meta", "x-extra", "unknown_field", "", "🙂"];
    let k = KEYS[rng.random_range(0..KEYS.len())];
    if rng.random_bool(0.5) {
        k.to_string()
    } else {
        format!("{k}_{}", rng.random_range(0..1000))
    }
}

fn mutate_value(v: &Value, rng: &mut StdRng, depth: u32) -> Value {
    match v {
        Value::Object(map) => {
            if rng.random_bool(0.1) {
                // An array of arrays where an object was expected.
                return json!([[Value::Object(map.clone())]]);
            }
            Value::Object(mutate_object(map, &[], rng, depth + 1))
        }
        Value::Array(items) => {
            if rng.random_bool(0.15) {
                return hostile_scalar(rng);
            }
            let mut out: Vec<Value> = Vec::with_capacity(items.len() + 2);
            for i in items {
                if rng.random_bool(0.9) {
                    out.push(mutate_value(i, rng, depth + 1));
                }
            }
            if rng.random_bool(0.2) {
                out.push(hostile_scalar(rng));
            }
            if rng.random_bool(0.1) {
                out.push(json!([[{"id": null}]]));
            }
            Value::Array(out)
        }
        _ => {
            if rng.random_bool(0.5) {
                hostile_scalar(rng)
            } else {
                v.clone()
            }
        }
    }
}

fn mutate_object(
    map: &Map<String, Value>,
    keep: &[&str],
    rng: &mut StdRng,
    depth: u32,
) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in map {
        if keep.contains(&k.as_str()) {
            out.insert(k.clone(), v.clone());
            continue;
        }
        match rng.random_range(0..10) {
            0 => {} // absent
            1 => {
                out.insert(k.clone(), Value::Null); // null
            }
            2..=4 if depth < 6 => {
                out.insert(k.clone(), mutate_value(v, rng, depth));
            }
            5 => {
                out.insert(k.clone(), hostile_scalar(rng));
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    for _ in 0..rng.random_range(0..3) {
        out.insert(unknown_key(rng), hostile_scalar(rng));
    }
    out
}

/// One variant of `example` (an object), seeded: the keys in `keep` are left as they are,
/// every other field at every level may be absent, `null`, or of an unexpected type, and
/// unknown keys are added.
pub fn mutate(example: &Value, keep: &[&str], seed: u64) -> Value {
    let mut rng = StdRng::seed_from_u64(seed);
    match example {
        Value::Object(map) => Value::Object(mutate_object(map, keep, &mut rng, 0)),
        other => mutate_value(other, &mut rng, 0),
    }
}

/// `n` variants of `example` from seeds `seed..seed + n` (the first is the example itself with
/// every optional field removed, the second with every optional field `null`).
pub fn variants(example: &Value, keep: &[&str], seed: u64, n: usize) -> Vec<Value> {
    let mut out = Vec::with_capacity(n);
    if let Value::Object(map) = example {
        let only_kept: Map<String, Value> = map
            .iter()
            .filter(|(k, _)| keep.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let all_null: Map<String, Value> = map
            .iter()
            .map(|(k, v)| {
                let v = if keep.contains(&k.as_str()) {
                    v.clone()
                } else {
                    Value::Null
                };
                (k.clone(), v)
            })
            .collect();
        out.push(Value::Object(only_kept));
        out.push(Value::Object(all_null));
    }
    let mut i = 0u64;
    while out.len() < n {
        out.push(mutate(example, keep, seed.wrapping_add(i)));
        i += 1;
    }
    out.truncate(n);
    out
}

/// A proptest strategy of variants of `example` (see [`mutate`]).
pub fn strategy(example: Value, keep: &'static [&'static str]) -> BoxedStrategy<Value> {
    any::<u64>()
        .prop_map(move |seed| mutate(&example, keep, seed))
        .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_envelope_and_varies_the_rest() {
        let example = json!({
            "id": "cnv_1", "updated_at": 10, "subject": "hi", "size": 12,
            "nested": {"a": [1, 2, {"b": "c"}]}
        });
        let vs = variants(&example, &["id", "updated_at"], 1, 200);
        assert!(
            vs.iter()
                .all(|v| v["id"] == "cnv_1" && v["updated_at"] == 10)
        );
        assert_eq!(vs[0], json!({"id": "cnv_1", "updated_at": 10}));
        assert!(vs[1]["subject"].is_null());
        let distinct: std::collections::BTreeSet<String> =
            vs.iter().map(|v| v.to_string()).collect();
        assert!(
            distinct.len() > 150,
            "variants should differ: {}",
            distinct.len()
        );
        assert!(vs.iter().any(|v| v.get("subject").is_none()));
        assert!(
            vs.iter()
                .any(|v| v["size"].is_string() || v["size"].is_array())
        );
        // deterministic
        assert_eq!(mutate(&example, &["id"], 42), mutate(&example, &["id"], 42));
    }
}
