//! Lenient field types for mapping platform JSON: a field of an unexpected type reads as
//! absent instead of failing the record.
//!
//! Only a record's envelope is strict (its id, the cursor's timestamp). Everything else a
//! connector maps goes through these types, so that a vendor-valid value the connector did not
//! expect (a negative `size`, a number where a string was documented, an object where an array
//! was) never fails a page. Each type reads in one pass without buffering (the generic
//! [`Lenient`] borrows the value's raw text, so it needs a borrowing deserializer such as
//! `serde_json::from_slice`, which [`crate::RawJson::deserialize`] is).
//!
//! ```
//! use apex_connect_core::lenient::{LenientI64, LenientStr};
//! #[derive(serde::Deserialize)]
//! struct Attachment<'a> {
//!     #[serde(borrow, default)]
//!     name: LenientStr<'a>,
//!     #[serde(default)]
//!     size: LenientI64,
//! }
//! let a: Attachment = serde_json::from_str(r#"{"name": 7, "size": "-39484462", "x": [[1]]}"#).unwrap();
//! assert_eq!(a.name.as_deref(), Some("7"));
//! assert_eq!(a.size.0, Some(-39484462));
//! let b: Attachment = serde_json::from_str(r#"{"name": {"a": 1}, "size": 1e300}"#).unwrap();
//! assert_eq!(b.name.as_deref(), None);
//! assert_eq!(b.size.0, None);
//! ```

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

/// Skips whatever remains of a sequence or map (the value is not the type we wanted).
fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

/// A string, or absent: numbers and booleans read as their text; `null`, arrays and objects
/// read as absent. Borrows from the input where it can.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LenientStr<'a>(pub Option<Cow<'a, str>>);

impl<'a> LenientStr<'a> {
    /// The string, if any.
    pub fn as_deref(&self) -> Option<&str> {
        self.0.as_deref()
    }

    /// The string, if any and not empty after trimming.
    pub fn non_empty(&self) -> Option<&str> {
        self.0.as_deref().map(str::trim).filter(|s| !s.is_empty())
    }

    /// An owned copy.
    pub fn to_owned_string(&self) -> Option<String> {
        self.0.as_deref().map(str::to_string)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for LenientStr<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for V<'a> {
            type Value = LenientStr<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(LenientStr(Some(Cow::Borrowed(v))))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(LenientStr(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(LenientStr(Some(Cow::Owned(v))))
            }
            fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
                Ok(LenientStr(Some(Cow::Borrowed(if v {
                    "true"
                } else {
                    "false"
                }))))
            }
            fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
                Ok(LenientStr(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
                Ok(LenientStr(Some(Cow::Owned(v.to_string()))))
            }
            fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
                Ok(LenientStr(v.is_finite().then(|| Cow::Owned(v.to_string()))))
            }
            fn visit_unit<E>(self) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_none<E>(self) -> Result<Self::Value, E> {
                Ok(LenientStr(None))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(self)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
                drain_seq(seq)?;
                Ok(LenientStr(None))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                drain_map(map)?;
                Ok(LenientStr(None))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// A number read leniently as `f64`: JSON numbers and numeric strings; non-finite values,
/// other strings, `null`, arrays and objects read as absent.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LenientF64(pub Option<f64>);

/// An integer read leniently: JSON integers in range, floats with no fractional part... or with
/// one (truncated toward zero) when within `i64`, and numeric strings; anything else (out of
/// range, `1e300`, `NaN`, text, `null`, arrays, objects) reads as absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LenientI64(pub Option<i64>);

/// A non-negative integer read leniently (as [`LenientI64`], negatives absent).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LenientU64(pub Option<u64>);

/// A boolean read leniently: `true`/`false`, the strings `"true"`/`"false"` (any case), and
/// the numbers 0 and 1; anything else reads as absent.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LenientBool(pub Option<bool>);

/// `f` as `i64` when finite and within range (truncated toward zero).
pub fn f64_to_i64(f: f64) -> Option<i64> {
    // 2^63 is exactly representable; every f64 below it converts without overflow.
    const LIMIT: f64 = 9_223_372_036_854_775_808.0;
    (f.is_finite() && (-LIMIT..LIMIT).contains(&f)).then(|| f.trunc() as i64)
}

fn parse_num_str(s: &str) -> Option<f64> {
    let f: f64 = s.trim().parse().ok()?;
    f.is_finite().then_some(f)
}

fn parse_int_str(s: &str) -> Option<i64> {
    let t = s.trim();
    t.parse::<i64>()
        .ok()
        .or_else(|| parse_num_str(t).and_then(f64_to_i64))
}

/// The scalar read by the lenient number/boolean visitors.
enum Scalar {
    I(i64),
    U(u64),
    F(f64),
    B(bool),
    S(Option<i64>, Option<f64>, Option<bool>),
    None,
}

struct ScalarVisitor;

impl<'de> Visitor<'de> for ScalarVisitor {
    type Value = Scalar;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Scalar, E> {
        Ok(Scalar::B(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Scalar, E> {
        Ok(Scalar::I(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Scalar, E> {
        Ok(Scalar::U(v))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Scalar, E> {
        Ok(Scalar::F(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Scalar, E> {
        let b = match v.trim().to_ascii_lowercase().as_str() {
            "true" => Some(true),
            "false" => Some(false),
            _ => None,
        };
        Ok(Scalar::S(parse_int_str(v), parse_num_str(v), b))
    }
    fn visit_unit<E>(self) -> Result<Scalar, E> {
        Ok(Scalar::None)
    }
    fn visit_none<E>(self) -> Result<Scalar, E> {
        Ok(Scalar::None)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Scalar, D::Error> {
        d.deserialize_any(self)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Scalar, A::Error> {
        drain_seq(seq)?;
        Ok(Scalar::None)
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Scalar, A::Error> {
        drain_map(map)?;
        Ok(Scalar::None)
    }
}

impl<'de> Deserialize<'de> for LenientF64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(LenientF64(match d.deserialize_any(ScalarVisitor)? {
            Scalar::I(i) => Some(i as f64),
            Scalar::U(u) => Some(u as f64),
            Scalar::F(f) => f.is_finite().then_some(f),
            Scalar::S(_, f, _) => f,
            Scalar::B(_) | Scalar::None => None,
        }))
    }
}

impl<'de> Deserialize<'de> for LenientI64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(LenientI64(match d.deserialize_any(ScalarVisitor)? {
            Scalar::I(i) => Some(i),
            Scalar::U(u) => i64::try_from(u).ok(),
            Scalar::F(f) => f64_to_i64(f),
            Scalar::S(i, _, _) => i,
            Scalar::B(_) | Scalar::None => None,
        }))
    }
}

impl<'de> Deserialize<'de> for LenientU64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(LenientU64(match d.deserialize_any(ScalarVisitor)? {
            Scalar::I(i) => u64::try_from(i).ok(),
            Scalar::U(u) => Some(u),
            Scalar::F(f) => f64_to_i64(f).and_then(|i| u64::try_from(i).ok()),
            Scalar::S(i, _, _) => i.and_then(|i| u64::try_from(i).ok()),
            Scalar::B(_) | Scalar::None => None,
        }))
    }
}

impl<'de> Deserialize<'de> for LenientBool {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(LenientBool(match d.deserialize_any(ScalarVisitor)? {
            Scalar::B(b) => Some(b),
            Scalar::I(0) | Scalar::U(0) => Some(false),
            Scalar::I(1) | Scalar::U(1) => Some(true),
            Scalar::S(_, _, b) => b,
            _ => None,
        }))
    }
}

/// Any `T`, or absent when the value does not have `T`'s shape. Borrows the value's raw text
/// and parses it as `T` (so `T` may borrow too); needs a borrowing deserializer
/// (`serde_json::from_slice` / `from_str`), and reads as absent otherwise.
#[derive(Debug, Clone, PartialEq)]
pub struct Lenient<T>(pub Option<T>);

impl<T> Default for Lenient<T> {
    fn default() -> Self {
        Lenient(None)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Lenient<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match <&'de RawValue>::deserialize(d) {
            Ok(raw) => Ok(Lenient(serde_json::from_str::<T>(raw.get()).ok())),
            Err(_) => Ok(Lenient(None)),
        }
    }
}

/// A list read leniently: an array whose elements are each read as [`Lenient`] (those of the
/// wrong shape skipped); anything that is not an array reads as empty.
#[derive(Debug, Clone, PartialEq)]
pub struct LenientVec<T>(pub Vec<T>);

impl<T> Default for LenientVec<T> {
    fn default() -> Self {
        LenientVec(Vec::new())
    }
}

impl<T> LenientVec<T> {
    /// The elements read.
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }
}

/// Elements a [`LenientVec`] keeps at most; the rest are skipped (hostile input cannot make a
/// record's mapping allocate without bound beyond its own size).
pub const MAX_LENIENT_ELEMENTS: usize = 100_000;

impl<'de, T: Deserialize<'de>> Deserialize<'de> for LenientVec<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = LenientVec<T>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut out = Vec::new();
                while let Some(Lenient(item)) = seq.next_element::<Lenient<T>>()? {
                    if let Some(item) = item
                        && out.len() < MAX_LENIENT_ELEMENTS
                    {
                        out.push(item);
                    }
                }
                Ok(LenientVec(out))
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
                drain_map(map)?;
                Ok(LenientVec(Vec::new()))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(self)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
                Ok(LenientVec(Vec::new()))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
                Ok(LenientVec(Vec::new()))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
                Ok(LenientVec(Vec::new()))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
                Ok(LenientVec(Vec::new()))
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
                Ok(LenientVec(Vec::new()))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LenientVec(Vec::new()))
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(LenientVec(Vec::new()))
            }
        }
        d.deserialize_any(V(PhantomData))
    }
}

/// The value of `field` in the JSON object `raw` as a string (numbers as their text), for
/// naming an object whose envelope failed; `None` when `raw` is not an object or has no such
/// scalar field.
pub fn field_string(raw: &[u8], field: &str) -> Option<String> {
    struct Finder<'f>(&'f str);
    impl<'de> Visitor<'de> for Finder<'_> {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut found = None;
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                if key == self.0 && found.is_none() {
                    found = map.next_value::<LenientStr<'de>>()?.to_owned_string();
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(found)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Self::Value, A::Error> {
            drain_seq(seq)?;
            Ok(None)
        }
        fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    let mut de = serde_json::Deserializer::from_slice(raw);
    de.deserialize_any(Finder(field)).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(serde::Deserialize, Default)]
    struct Shape<'a> {
        #[serde(borrow, default)]
        s: LenientStr<'a>,
        #[serde(default)]
        i: LenientI64,
        #[serde(default)]
        u: LenientU64,
        #[serde(default)]
        f: LenientF64,
        #[serde(default)]
        b: LenientBool,
        #[serde(borrow, default)]
        v: LenientVec<LenientStr<'a>>,
        #[serde(default)]
        o: Lenient<std::collections::BTreeMap<String, i64>>,
    }

    #[test]
    fn extremes() {
        let cases = [
            (r#"{"i": -9223372036854775808}"#, Some(i64::MIN)),
            (r#"{"i": 9223372036854775807}"#, Some(i64::MAX)),
            (r#"{"i": 18446744073709551615}"#, None),
            (r#"{"i": 1e300}"#, None),
            (r#"{"i": -1.5}"#, Some(-1)),
            (r#"{"i": "42"}"#, Some(42)),
            (r#"{"i": " 2e3 "}"#, Some(2000)),
            (r#"{"i": "NaN"}"#, None),
            (r#"{"i": "inf"}"#, None),
            (r#"{"i": [1]}"#, None),
            (r#"{"i": {"a": 1}}"#, None),
            (r#"{"i": null}"#, None),
            (r#"{"i": true}"#, None),
        ];
        for (json, want) in cases {
            let s: Shape = serde_json::from_str(json).unwrap();
            assert_eq!(s.i.0, want, "{json}");
        }
        let s: Shape = serde_json::from_str(r#"{"u": -39484462, "f": -39484462}"#).unwrap();
        assert_eq!(s.u.0, None);
        assert_eq!(s.f.0, Some(-39484462.0));
        let s: Shape = serde_json::from_str(r#"{"b": "TRUE", "s": false}"#).unwrap();
        assert_eq!(s.b.0, Some(true));
        assert_eq!(s.s.as_deref(), Some("false"));
        let s: Shape =
            serde_json::from_str(r#"{"v": ["a", [["b"]], 3, null, {"x":1}], "o": {"a": "x"}}"#)
                .unwrap();
        assert_eq!(
            s.v.iter().map(|x| x.as_deref()).collect::<Vec<_>>(),
            vec![Some("a"), None, Some("3"), None, None]
        );
        assert_eq!(s.o.0, None);
        let s: Shape = serde_json::from_str(r#"{"v": {"a": 1}, "o": {"a": 1}}"#).unwrap();
        assert!(s.v.0.is_empty());
        assert_eq!(s.o.0.unwrap()["a"], 1);
    }

    #[test]
    fn field_string_reads_ids() {
        assert_eq!(
            field_string(br#"{"id": 12, "x": [1]}"#, "id").as_deref(),
            Some("12")
        );
        assert_eq!(
            field_string(br#"{"x": {"id": "no"}, "id": "cnv_1"}"#, "id").as_deref(),
            Some("cnv_1")
        );
        assert_eq!(field_string(br#"[1, 2]"#, "id"), None);
        assert_eq!(field_string(br#"{"id": {"a": 1}}"#, "id"), None);
        assert_eq!(field_string(b"not json", "id"), None);
    }

    fn json_value() -> impl Strategy<Value = serde_json::Value> {
        let leaf = prop_oneof![
            Just(serde_json::Value::Null),
            any::<bool>().prop_map(serde_json::Value::Bool),
            any::<i64>().prop_map(|i| serde_json::json!(i)),
            any::<u64>().prop_map(|i| serde_json::json!(i)),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| serde_json::json!(f)),
            ".*".prop_map(serde_json::Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
                prop::collection::btree_map("[a-z]{1,3}", inner, 0..6)
                    .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_value_in_any_field_never_fails(v in json_value()) {
            for field in ["s", "i", "u", "f", "b", "v", "o"] {
                let doc = serde_json::json!({ field: v.clone(), "unknown": v.clone() });
                let text = serde_json::to_string(&doc).unwrap();
                let parsed: Result<Shape, _> = serde_json::from_str(&text);
                prop_assert!(parsed.is_ok(), "{}: {:?}", text, parsed.err());
            }
        }
    }
}
