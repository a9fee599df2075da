//! The GA4 simulator's data: dimension values, metric values, and what `getMetadata` says.

use serde_json::{Value, json};

pub(crate) use crate::sim_util::{day_number, mix, mix3};

const SOURCES: [&str; 6] = [
    "google",
    "(direct)",
    "newsletter",
    "bing",
    "facebook.com",
    "partner.example",
];
const MEDIUMS: [&str; 5] = ["organic", "(none)", "email", "cpc", "referral"];
const PAGES: [&str; 6] = [
    "/",
    "/pricing",
    "/docs/start",
    "/blog/launch",
    "/signup",
    "/contact",
];
const TITLES: [&str; 6] = [
    "Home",
    "Pricing",
    "Getting started",
    "We launched",
    "Sign up",
    "Contact us",
];
const EVENTS: [&str; 6] = [
    "page_view",
    "session_start",
    "first_visit",
    "sign_up",
    "purchase",
    "scroll",
];
const CHANNELS: [&str; 6] = [
    "Organic Search",
    "Direct",
    "Email",
    "Paid Search",
    "Organic Social",
    "Referral",
];
const COUNTRIES: [&str; 6] = [
    "France",
    "Germany",
    "United States",
    "India",
    "Brazil",
    "Japan",
];
const DEVICES: [&str; 3] = ["desktop", "mobile", "tablet"];

fn list(dim: &str) -> Option<&'static [&'static str]> {
    Some(match dim {
        "sessionSource" | "source" => &SOURCES,
        "sessionMedium" | "medium" => &MEDIUMS,
        "pagePath" => &PAGES,
        "pageTitle" => &TITLES,
        "eventName" => &EVENTS,
        "sessionDefaultChannelGroup" | "defaultChannelGroup" => &CHANNELS,
        "country" => &COUNTRIES,
        "deviceCategory" => &DEVICES,
        _ => return None,
    })
}

/// The value of `dim` in combination `k` (not unique across `k`).
pub(crate) fn dimension_value(dim: &str, k: u64) -> String {
    match dim {
        "hostName" => "www.example.com".to_string(),
        "city" => format!("City {}", k % 7),
        _ => match list(dim) {
            Some(l) => l[(k as usize).wrapping_mul(7) % l.len()].to_string(),
            None => format!("{}-{}", dim.rsplit(':').next().unwrap_or(dim), k % 5),
        },
    }
}

/// The value of `dim` in combination `k`, unique across `k` (the first dimension after
/// `date` makes each row of a day unique).
pub(crate) fn unique_value(dim: &str, k: u64) -> String {
    match list(dim) {
        Some(l) => {
            let i = (k as usize) % l.len();
            let round = (k as usize) / l.len();
            if round == 0 {
                l[i].to_string()
            } else {
                format!("{} #{round}", l[i])
            }
        }
        None => format!("{}-{k}", dim.rsplit(':').next().unwrap_or(dim)),
    }
}

/// A metric's type, as `metricHeaders` say.
pub(crate) fn metric_type(m: &str) -> &'static str {
    match m {
        "bounceRate" | "engagementRate" | "funnelStepCompletionRate" => "TYPE_FLOAT",
        "averageSessionDuration" | "userEngagementDuration" => "TYPE_SECONDS",
        "totalRevenue" | "eventValue" | "customEvent:order_value" => "TYPE_CURRENCY",
        _ => "TYPE_INTEGER",
    }
}

/// The value of metric `m` for combination `k` of the day `day`; `epoch` changes the numbers
/// of days GA4 is still processing.
pub(crate) fn metric_value(seed: u64, m: &str, day: u64, k: u64, epoch: u64) -> String {
    let mut h = mix3(seed ^ epoch.wrapping_mul(0x9E37), day, k);
    for b in m.bytes() {
        h = mix(h ^ u64::from(b));
    }
    match metric_type(m) {
        "TYPE_FLOAT" => format!("{:.4}", (h % 10_000) as f64 / 10_000.0),
        "TYPE_SECONDS" => format!("{:.2}", (h % 100_000) as f64 / 100.0),
        "TYPE_CURRENCY" => format!("{:.2}", (h % 50_000) as f64 / 100.0),
        _ => (1 + h % 5_000).to_string(),
    }
}

const DIMENSIONS: [(&str, &str, &str); 13] = [
    (
        "date",
        "Date",
        "The date of the event, formatted as YYYYMMDD.",
    ),
    (
        "sessionSource",
        "Session source",
        "The source that initiated a session.",
    ),
    (
        "sessionMedium",
        "Session medium",
        "The medium that initiated a session.",
    ),
    (
        "hostName",
        "Hostname",
        "The subdomain and domain names of a URL.",
    ),
    (
        "pagePath",
        "Page path",
        "The portion of the URL between the hostname and query string.",
    ),
    (
        "pageTitle",
        "Page title",
        "The web page titles used on your site.",
    ),
    ("eventName", "Event name", "The name of the event."),
    (
        "sessionDefaultChannelGroup",
        "Session default channel group",
        "The session's default channel group.",
    ),
    (
        "country",
        "Country",
        "The country from which the user activity originated.",
    ),
    (
        "city",
        "City",
        "The city from which the user activity originated.",
    ),
    (
        "deviceCategory",
        "Device category",
        "The type of device: Desktop, Tablet, or Mobile.",
    ),
    ("cohort", "Cohort", "The cohort's name in the request."),
    (
        "cohortNthWeek",
        "Cohort nth week",
        "Week offset relative to the firstSessionDate.",
    ),
];

const METRICS: [(&str, &str); 17] = [
    ("sessions", "Sessions"),
    ("totalUsers", "Total users"),
    ("newUsers", "New users"),
    ("activeUsers", "Active users"),
    ("engagedSessions", "Engaged sessions"),
    ("screenPageViews", "Views"),
    ("userEngagementDuration", "User engagement"),
    ("eventCount", "Event count"),
    ("eventValue", "Event value"),
    ("averageSessionDuration", "Average session duration"),
    ("bounceRate", "Bounce rate"),
    ("keyEvents", "Key events"),
    ("conversions", "Conversions"),
    ("totalRevenue", "Total revenue"),
    ("cohortActiveUsers", "Cohort active users"),
    ("cohortTotalUsers", "Cohort total users"),
    ("engagementRate", "Engagement rate"),
];

/// Whether `runReport` knows the dimension (custom ones included).
pub(crate) fn known_dimension(d: &str) -> bool {
    DIMENSIONS.iter().any(|(n, _, _)| *n == d)
        || d.starts_with("customEvent:")
        || d.starts_with("customUser:")
}

/// Whether `runReport` knows the metric (custom ones included).
pub(crate) fn known_metric(m: &str) -> bool {
    METRICS.iter().any(|(n, _)| *n == m) || m.starts_with("customEvent:")
}

/// `getMetadata`'s dimensions (two custom ones included).
pub(crate) fn metadata_dimensions() -> Vec<Value> {
    let mut out: Vec<Value> = DIMENSIONS
        .iter()
        .map(|(n, ui, d)| json!({"apiName": n, "uiName": ui, "description": d, "category": "General"}))
        .collect();
    out.push(json!({"apiName": "customEvent:plan", "uiName": "Plan", "description": "An event-scoped custom dimension.", "customDefinition": true, "category": "Custom"}));
    out.push(json!({"apiName": "customUser:tier", "uiName": "Tier", "description": "A user-scoped custom dimension.", "customDefinition": true, "category": "Custom"}));
    out
}

/// `getMetadata`'s metrics (one custom one included).
pub(crate) fn metadata_metrics() -> Vec<Value> {
    let mut out: Vec<Value> = METRICS
        .iter()
        .map(|(n, ui)| json!({"apiName": n, "uiName": ui, "type": metric_type(n), "category": "General"}))
        .collect();
    out.push(json!({"apiName": "customEvent:order_value", "uiName": "Order value", "type": "TYPE_CURRENCY", "customDefinition": true, "category": "Custom"}));
    out
}
