//! The simulator's data: events generated on the fly from a seed (never materialised), and
//! small profile, cohort and funnel sets.

use std::io::Write as _;

use chrono::NaiveDate;
use chrono_tz::Tz;
use serde_json::{Value, json};

use crate::days;

pub(crate) use crate::sim_util::{day_number, mix, mix3};

const EVENTS: [&str; 8] = [
    "Page Viewed",
    "Signed Up",
    "Logged In",
    "Added to Cart",
    "Purchased",
    "Invited Teammate",
    "Opened Email",
    "Searched",
];
const BROWSERS: [&str; 4] = ["Chrome", "Safari", "Firefox", "Edge"];
const CITIES: [(&str, &str); 5] = [
    ("Paris", "FR"),
    ("Berlin", "DE"),
    ("New York", "US"),
    ("Bengaluru", "IN"),
    ("São Paulo", "BR"),
];
const PAGES: [&str; 5] = ["/", "/pricing", "/docs", "/blog/launch", "/signup"];
const PLANS: [&str; 3] = ["free", "pro", "enterprise"];

/// How events are generated.
#[derive(Debug, Clone)]
pub(crate) struct EventGen {
    pub(crate) seed: u64,
    pub(crate) first_day: NaiveDate,
    pub(crate) per_day: u64,
    pub(crate) users: u64,
    pub(crate) duplicate_per_mille: u64,
    pub(crate) late_per_mille: u64,
    /// Legacy project: days and stored times are local to this zone.
    pub(crate) local_tz: Option<Tz>,
}

/// One generated event.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GenEvent {
    pub(crate) hash: u64,
    /// The instant in UTC, Unix ms.
    pub(crate) utc_ms: i64,
    /// What the export writes in `time` (local wall-clock ms for legacy projects).
    pub(crate) stored_ms: i64,
    /// The day it becomes visible in exports (late events arrive days after their day).
    pub(crate) arrives: NaiveDate,
    /// Whether the export writes it twice.
    pub(crate) duplicated: bool,
}

impl EventGen {
    /// Event `i` of `day` (`i < per_day`).
    pub(crate) fn event(&self, day: NaiveDate, i: u64) -> GenEvent {
        let h = mix3(self.seed, day_number(day), i);
        let spacing = (86_400_000 / self.per_day.max(1)).max(1);
        let offset_ms = i.saturating_mul(spacing) + (h % spacing);
        let offset_ms = i64::try_from(offset_ms.min(86_399_999)).unwrap_or(0);
        let midnight = day
            .and_hms_opt(0, 0, 0)
            .map(|t| t.and_utc().timestamp_millis())
            .unwrap_or(0);
        // Whole seconds, as most SDKs send.
        let local_ms = (midnight + offset_ms) / 1000 * 1000;
        let (utc_ms, stored_ms) = match self.local_tz {
            None => (local_ms, local_ms),
            Some(tz) => (
                days::local_ms_to_utc_ms(tz, local_ms).unwrap_or(local_ms),
                local_ms,
            ),
        };
        let h2 = mix(h ^ 0x5151);
        let late = h2 % 1000 < self.late_per_mille;
        let arrives = if late {
            days::add_days(day, 1 + (h2 >> 20) % 4)
        } else {
            day
        };
        let duplicated = (mix(h ^ 0xD0D0) % 1000) < self.duplicate_per_mille;
        GenEvent {
            hash: h,
            utc_ms,
            stored_ms,
            arrives,
            duplicated,
        }
    }

    /// Writes the export line of `e` (with `\n`) into `out`; times in ms when `in_ms`.
    pub(crate) fn write_line(&self, e: &GenEvent, in_ms: bool, out: &mut Vec<u8>) {
        let h = e.hash;
        let name = EVENTS[(h % EVENTS.len() as u64) as usize];
        let user = (h >> 8) % self.users.max(1);
        let (city, cc) = CITIES[((h >> 16) % CITIES.len() as u64) as usize];
        let browser = BROWSERS[((h >> 24) % BROWSERS.len() as u64) as usize];
        let page = PAGES[((h >> 32) % PAGES.len() as u64) as usize];
        let plan = PLANS[((h >> 40) % PLANS.len() as u64) as usize];
        let time = if in_ms {
            e.stored_ms
        } else {
            e.stored_ms / 1000
        };
        let arrival_ms = days::day_start_utc_ms(Tz::UTC, e.arrives)
            .unwrap_or(e.utc_ms)
            .max(e.utc_ms)
            + i64::try_from((h >> 44) % 3_600_000).unwrap_or(0);
        let value = (h >> 48) % 10_000;
        // Writing into a Vec cannot fail.
        let _ = writeln!(
            out,
            "{{\"event\":\"{name}\",\"properties\":{{\"time\":{time},\"distinct_id\":\"user_{user}\",\"$insert_id\":\"{:016x}\",\"mp_processing_time_ms\":{arrival_ms},\"$browser\":\"{browser}\",\"$city\":\"{city}\",\"mp_country_code\":\"{cc}\",\"$current_url\":\"https://example.com{page}\",\"$os\":\"Mac OS X\",\"plan\":\"{plan}\",\"value\":{}.{:02},\"mp_lib\":\"web\"}}}}",
            mix(h ^ 0x1D),
            value / 100,
            value % 100,
        );
    }
}

/// The documented example of an exported event (for hostile variants).
pub(crate) fn example_event() -> Value {
    json!({
        "event": "Signed up",
        "properties": {
            "time": 1_602_611_311,
            "$insert_id": "hpuDqcvpltpCjBsebtxwadtEBDnFAdycabFb",
            "mp_processing_time_ms": 1_602_625_711_874_u64,
            "distinct_id": "user_hostile",
            "$browser": "Chrome",
            "$city": "Paris",
            "mp_country_code": "FR",
            "$current_url": "https://example.com/signup",
            "plan": "pro",
            "items": [{"sku": "a", "price": 10.5}],
        }
    })
}

/// A profile (Engage result) of user `k`.
pub(crate) fn profile(seed: u64, k: u64) -> Value {
    let h = mix3(seed, 77, k);
    let first = ["Ann", "Bo", "Chen", "Dara", "Emil"][(h % 5) as usize];
    let last = ["Lee", "Okafor", "Silva", "Novak", "Ito"][((h >> 8) % 5) as usize];
    let (city, cc) = CITIES[((h >> 16) % CITIES.len() as u64) as usize];
    json!({
        "$distinct_id": format!("user_{k}"),
        "$properties": {
            "$created": format!("2023-0{}-1{}T10:00:00", 1 + h % 9, h % 10),
            "$email": format!("user{k}@example.com"),
            "$phone": format!("+1 555 01{:02}", k % 100),
            "$first_name": first,
            "$last_name": last,
            "$last_seen": "2024-05-01T12:00:00",
            "$city": city,
            "$country_code": cc,
            "plan": PLANS[((h >> 24) % 3) as usize],
            "seats": (h >> 32) % 50,
        }
    })
}

/// Whether user `k` is in cohort `c`.
pub(crate) fn in_cohort(seed: u64, c: u64, k: u64) -> bool {
    mix3(seed, 1000 + c, k).is_multiple_of(3)
}

/// The id of cohort number `c`.
pub(crate) fn cohort_id(c: u64) -> u64 {
    1000 + c
}

/// The id of funnel number `f`.
pub(crate) fn funnel_id(f: u64) -> u64 {
    7000 + f
}

/// The results of the funnel with id `funnel` on one day (the value under `data.<date>`).
pub(crate) fn funnel_day(seed: u64, funnel: u64, day: NaiveDate) -> Value {
    let h = mix3(seed, funnel, day_number(day));
    let start = 500 + h % 2000;
    let goals = ["Page Viewed", "Signed Up", "Purchased"];
    let mut count = start;
    let mut steps = Vec::new();
    for (i, g) in goals.iter().enumerate() {
        let prev = count;
        if i > 0 {
            count = count * (40 + (h >> (8 * i)) % 50) / 100;
        }
        steps.push(json!({
            "count": count,
            "avg_time": if i == 0 { Value::Null } else { json!(30 + (h >> (4 * i)) % 600) },
            "avg_time_from_start": if i == 0 { Value::Null } else { json!(60 + (h >> (5 * i)) % 900) },
            "step_conv_ratio": if i == 0 { 1.0 } else { count as f64 / prev.max(1) as f64 },
            "overall_conv_ratio": count as f64 / start as f64,
            "goal": g,
            "event": g,
        }));
    }
    json!({
        "steps": steps,
        "analysis": {
            "completion": count,
            "starting_amount": start,
            "steps": goals.len(),
            "worst": 2,
        }
    })
}
