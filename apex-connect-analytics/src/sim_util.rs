//! What both simulators share: a seeded mix function and day numbers.

use chrono::{Datelike, NaiveDate};

/// A 64-bit mix (splitmix64's finaliser): the simulators' only source of "randomness".
pub(crate) fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// `mix` of a seed and two values.
pub(crate) fn mix3(seed: u64, a: u64, b: u64) -> u64 {
    mix(seed ^ mix(a ^ mix(b)))
}

/// Days since the common era (a seed part).
pub(crate) fn day_number(d: NaiveDate) -> u64 {
    u64::try_from(d.num_days_from_ce()).unwrap_or(0)
}
