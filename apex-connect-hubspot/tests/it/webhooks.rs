//! Webhook signatures: HubSpot's published examples through the verifier, and our own cases.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use apex_connect_core::webhook::{WebhookRequest, WebhookSecrets};
use apex_connect_core::{WebhookError, WebhookVerifier};
use apex_connect_hubspot::webhook::{
    SIGNATURE_HEADER, SIGNATURE_V3_HEADER, SIGNATURE_VERSION_HEADER, TIMESTAMP_HEADER, v3_base64,
};
use apex_connect_hubspot::{HubSpotWebhookVerifier, SignatureVersion};
use http::{HeaderMap, HeaderValue, Method, Uri};

const SECRET: &str = "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy";
const URI: &str = "https://www.example.com/webhook_uri";

fn verifier() -> HubSpotWebhookVerifier {
    HubSpotWebhookVerifier::new(WebhookSecrets::single(SECRET))
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

fn at(ms: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis(ms)
}

fn check(
    v: &HubSpotWebhookVerifier,
    m: Method,
    uri: &str,
    h: &HeaderMap,
    body: &[u8],
    now: SystemTime,
) -> Result<(), WebhookError> {
    let uri: Uri = uri.parse().unwrap();
    v.verify(&WebhookRequest::new(&m, &uri, h, body), now)
        .map(|_| ())
}

#[test]
fn published_examples_verify() {
    let v = verifier();
    let now = SystemTime::now();
    let body = r#"[{"eventId":1,"subscriptionId":12345,"portalId":62515,"occurredAt":1564113600000,"subscriptionType":"contact.creation","attemptNumber":0,"objectId":123,"changeSource":"CRM","changeFlag":"NEW","appId":54321}]"#;
    let h = headers(&[
        (
            SIGNATURE_HEADER,
            "232db2615f3d666fe21a8ec971ac7b5402d33b9a925784df3ca654d05f4817de",
        ),
        (SIGNATURE_VERSION_HEADER, "v1"),
    ]);
    check(&v, Method::POST, URI, &h, body.as_bytes(), now).unwrap();
    let h = headers(&[
        (
            SIGNATURE_HEADER,
            "eee2dddcc73c94d699f5e395f4b9d454a069a6855fbfa152e91e88823087200e",
        ),
        (SIGNATURE_VERSION_HEADER, "v2"),
    ]);
    check(&v, Method::GET, URI, &h, b"", now).unwrap();
    let h = headers(&[
        (
            SIGNATURE_HEADER,
            "9569219f8ba981ffa6f6f16aa0f48637d35d728c7e4d93d0d52efaa512af7900",
        ),
        (SIGNATURE_VERSION_HEADER, "v2"),
    ]);
    check(
        &v,
        Method::POST,
        URI,
        &h,
        br#"{"example_field":"example_value"}"#,
        now,
    )
    .unwrap();
    let h = headers(&[
        (
            SIGNATURE_V3_HEADER,
            "K36dawei4A+QBNolUOqo7s91KQDWQ5MXZ/QufNYuk/Y=",
        ),
        (TIMESTAMP_HEADER, "1693657560000"),
    ]);
    check(
        &v,
        Method::POST,
        URI,
        &h,
        b"{'example_field':'example_value'}",
        at(1_693_657_560_000 + 299_000),
    )
    .unwrap();
}

#[test]
fn tampered_and_wrong_secret_are_bad_signatures() {
    let good = verifier();
    let other = HubSpotWebhookVerifier::new(WebhookSecrets::single("zzzz-other-secret"));
    let now = SystemTime::now();
    let uri: Uri = URI.parse().unwrap();
    let body = br#"[{"eventId":7,"objectId":1}]"#;
    for version in [
        SignatureVersion::V1,
        SignatureVersion::V2,
        SignatureVersion::V3,
    ] {
        let h = good
            .sign_with(
                version,
                &WebhookRequest::new(&Method::POST, &uri, &HeaderMap::new(), body),
                now,
            )
            .unwrap();
        check(&good, Method::POST, URI, &h, body, now).unwrap();
        assert_eq!(
            check(
                &good,
                Method::POST,
                URI,
                &h,
                br#"[{"eventId":8,"objectId":1}]"#,
                now
            ),
            Err(WebhookError::BadSignature),
            "{version:?}"
        );
        assert_eq!(
            check(&other, Method::POST, URI, &h, body, now),
            Err(WebhookError::BadSignature),
            "{version:?}"
        );
        if version != SignatureVersion::V1 {
            // v2 and v3 cover the method and URI.
            assert_eq!(
                check(&good, Method::PUT, URI, &h, body, now),
                Err(WebhookError::BadSignature)
            );
            assert_eq!(
                check(
                    &good,
                    Method::POST,
                    "https://evil.example.com/webhook_uri",
                    &h,
                    body,
                    now
                ),
                Err(WebhookError::BadSignature)
            );
        }
    }
    // A signature that cannot even be decoded is a bad signature too (401), like every other:
    // empty, not hex, too short or too long, not base64.
    for (version, sig) in [
        ("v1", ""),
        ("v1", " "),
        ("v1", "not-hex"),
        (
            "v1",
            "232db2615f3d666fe21a8ec971ac7b5402d33b9a925784df3ca654d05f4817",
        ),
        ("v2", ""),
        ("v2", &"ab".repeat(33)),
    ] {
        let h = headers(&[(SIGNATURE_HEADER, sig), (SIGNATURE_VERSION_HEADER, version)]);
        assert_eq!(
            check(&good, Method::POST, URI, &h, body, now),
            Err(WebhookError::BadSignature),
            "{version} {sig:?}"
        );
    }
    let ts = apex_connect_core::webhook::unix_ms(now).to_string();
    for sig in ["", "%%%", "K36dawei4A+QBNolUOqo7s91KQDWQ5MXZ/QufNYuk/Y"] {
        let h = headers(&[(SIGNATURE_V3_HEADER, sig), (TIMESTAMP_HEADER, &ts)]);
        assert_eq!(
            check(&good, Method::POST, URI, &h, body, now),
            Err(WebhookError::BadSignature),
            "v3 {sig:?}"
        );
    }
}

#[test]
fn v3_timestamps_outside_five_minutes_are_refused_both_ways() {
    let v = verifier();
    let body = b"[]";
    let ts: u64 = 1_700_000_000_000;
    let sig = v3_base64(SECRET.as_bytes(), "POST", URI, body, &ts.to_string());
    let h = headers(&[
        (SIGNATURE_V3_HEADER, &sig),
        (TIMESTAMP_HEADER, &ts.to_string()),
    ]);
    check(&v, Method::POST, URI, &h, body, at(ts + 300_000)).unwrap();
    check(&v, Method::POST, URI, &h, body, at(ts - 300_000)).unwrap();
    assert!(matches!(
        check(&v, Method::POST, URI, &h, body, at(ts + 300_001)),
        Err(WebhookError::OutsideTolerance { .. })
    ));
    assert!(
        matches!(
            check(&v, Method::POST, URI, &h, body, at(ts - 300_001)),
            Err(WebhookError::OutsideTolerance { .. })
        ),
        "future"
    );
    // A timestamp that is not a number: unsigned it is a bad signature (401), signed it is
    // malformed (400).
    let h = headers(&[(SIGNATURE_V3_HEADER, &sig), (TIMESTAMP_HEADER, "soon")]);
    assert_eq!(
        check(&v, Method::POST, URI, &h, body, at(ts)),
        Err(WebhookError::BadSignature)
    );
    let signed_soon = v3_base64(SECRET.as_bytes(), "POST", URI, body, "soon");
    let h = headers(&[
        (SIGNATURE_V3_HEADER, &signed_soon),
        (TIMESTAMP_HEADER, "soon"),
    ]);
    assert!(matches!(
        check(&v, Method::POST, URI, &h, body, at(ts)),
        Err(WebhookError::Malformed(_))
    ));
    // Timestamps at the extremes: refused, no overflow.
    for extreme in [i64::MIN, -1, 0, i64::MAX] {
        let text = extreme.to_string();
        let sig = v3_base64(SECRET.as_bytes(), "POST", URI, body, &text);
        let h = headers(&[(SIGNATURE_V3_HEADER, &sig), (TIMESTAMP_HEADER, &text)]);
        assert!(
            matches!(
                check(&v, Method::POST, URI, &h, body, at(ts)),
                Err(WebhookError::OutsideTolerance { .. })
            ),
            "{extreme}"
        );
    }
}

#[test]
fn missing_headers_are_reported() {
    let v = verifier();
    let now = SystemTime::now();
    assert!(matches!(
        check(&v, Method::POST, URI, &HeaderMap::new(), b"[]", now),
        Err(WebhookError::MissingHeader(_))
    ));
    let h = headers(&[(
        SIGNATURE_V3_HEADER,
        "K36dawei4A+QBNolUOqo7s91KQDWQ5MXZ/QufNYuk/Y=",
    )]);
    assert_eq!(
        check(&v, Method::POST, URI, &h, b"[]", now),
        Err(WebhookError::MissingHeader(TIMESTAMP_HEADER))
    );
    let h = headers(&[(SIGNATURE_VERSION_HEADER, "v2")]);
    assert_eq!(
        check(&v, Method::POST, URI, &h, b"[]", now),
        Err(WebhookError::MissingHeader(SIGNATURE_HEADER))
    );
    let none = HubSpotWebhookVerifier::new(WebhookSecrets::new(Vec::<Vec<u8>>::new()));
    assert_eq!(
        check(&none, Method::POST, URI, &h, b"[]", now),
        Err(WebhookError::NoSecret)
    );
}

#[test]
fn v3_uri_is_percent_decoded_as_documented() {
    let v = verifier();
    let ts = "1700000000000";
    let now = at(1_700_000_000_000);
    let body = b"[]";
    // HubSpot signs the URL with the listed escapes decoded.
    let called = "https://hooks.example.com/hs%3Ahook/a%2Fb?user=me%40x.com&list=%28a%2Cb%29%3B%21%24%27%2a&q=%20";
    let decoded = "https://hooks.example.com/hs:hook/a/b?user=me@x.com&list=(a,b);!$'*&q=%20";
    let sig = v3_base64(SECRET.as_bytes(), "POST", decoded, body, ts);
    let h = headers(&[(SIGNATURE_V3_HEADER, &sig), (TIMESTAMP_HEADER, ts)]);
    check(&v, Method::POST, called, &h, body, now).unwrap();
    check(&v, Method::POST, decoded, &h, body, now).unwrap();
    // `%20` is not in the table: decoding it would change the string signed.
    let wrong = v3_base64(
        SECRET.as_bytes(),
        "POST",
        &decoded.replace("%20", " "),
        body,
        ts,
    );
    let h = headers(&[(SIGNATURE_V3_HEADER, &wrong), (TIMESTAMP_HEADER, ts)]);
    assert_eq!(
        check(&v, Method::POST, called, &h, body, now),
        Err(WebhookError::BadSignature)
    );
    // With a configured target URL, the request's (proxy-rewritten) URI is ignored.
    let pinned = verifier().with_target_url(called);
    let h = headers(&[(SIGNATURE_V3_HEADER, &sig), (TIMESTAMP_HEADER, ts)]);
    check(
        &pinned,
        Method::POST,
        "http://10.0.0.5:8080/internal",
        &h,
        body,
        now,
    )
    .unwrap();
}

#[test]
fn rotation_accepts_the_previous_secret_and_versions_can_be_restricted() {
    let old = HubSpotWebhookVerifier::new(WebhookSecrets::single("old-secret-0001"));
    let rotated =
        HubSpotWebhookVerifier::new(WebhookSecrets::new(["new-secret-0002", "old-secret-0001"]));
    let now = SystemTime::now();
    let uri: Uri = URI.parse().unwrap();
    let h = old
        .sign(
            &WebhookRequest::new(&Method::POST, &uri, &HeaderMap::new(), b"[]"),
            now,
        )
        .unwrap();
    let ok = rotated
        .verify(&WebhookRequest::new(&Method::POST, &uri, &h, b"[]"), now)
        .unwrap();
    assert_eq!(ok.secret_index, 1);
    let v3_only = verifier().with_versions([SignatureVersion::V3]);
    let h = verifier()
        .sign_with(
            SignatureVersion::V1,
            &WebhookRequest::new(&Method::POST, &uri, &HeaderMap::new(), b"[]"),
            now,
        )
        .unwrap();
    // Signed only with a version this verifier refuses: what it needs is missing (401).
    assert_eq!(
        check(&v3_only, Method::POST, URI, &h, b"[]", now),
        Err(WebhookError::MissingHeader(SIGNATURE_V3_HEADER))
    );
    let v1_only = verifier().with_versions([SignatureVersion::V1]);
    let mut h2 = h.clone();
    h2.insert(SIGNATURE_VERSION_HEADER, HeaderValue::from_static("v2"));
    assert_eq!(
        check(&v1_only, Method::POST, URI, &h2, b"[]", now),
        Err(WebhookError::BadSignature)
    );
    let dbg = format!("{rotated:?}");
    assert!(
        !dbg.contains("old-secret") && !dbg.contains("new-secret"),
        "{dbg}"
    );
}

#[test]
fn a_configured_target_url_keeps_the_request_query_string() {
    // HubSpot's documented v3 construction, `method + URI + body + timestamp`, over the full
    // URL it called, query string included (`%3A` decoded as the table says). Vectors computed
    // with Python's hmac/hashlib:
    //   v3: base64(HMAC-SHA256(secret, "POST" +
    //       "https://www.example.com/webhook_uri?portalId=62515&name=a:b" + body + ts))
    //   v2: hex(SHA-256(secret + "POST" +
    //       "https://www.example.com/webhook_uri?portalId=62515&name=a%3Ab" + body))
    let body = b"{'example_field':'example_value'}";
    let ts = "1693657560000";
    let now = at(1_693_657_560_000);
    let pinned = verifier().with_target_url(URI);
    // Behind a proxy the request arrives with another scheme, host and path, and its query.
    let internal = "http://10.0.0.5:8080/internal/hubspot?portalId=62515&name=a%3Ab";
    let h = headers(&[
        (
            SIGNATURE_V3_HEADER,
            "E0BBDVpmHRf32mxQn4uCyPPuLC8oiZwQ8ZAaPDgW/0k=",
        ),
        (TIMESTAMP_HEADER, ts),
    ]);
    check(&pinned, Method::POST, internal, &h, body, now).unwrap();
    // The path-only form a server sees works too.
    check(
        &pinned,
        Method::POST,
        "/webhooks/hubspot/acme?portalId=62515&name=a%3Ab",
        &h,
        body,
        now,
    )
    .unwrap();
    // Another query (or none) is another URL: refused.
    assert_eq!(
        check(
            &pinned,
            Method::POST,
            "http://10.0.0.5:8080/internal/hubspot?portalId=62516&name=a%3Ab",
            &h,
            body,
            now
        ),
        Err(WebhookError::BadSignature)
    );
    assert_eq!(
        check(
            &pinned,
            Method::POST,
            "http://10.0.0.5:8080/internal/hubspot",
            &h,
            body,
            now
        ),
        Err(WebhookError::BadSignature)
    );
    // A query in the configured URL is replaced by the request's.
    let pinned_with_query = verifier().with_target_url(format!("{URI}?stale=1"));
    check(&pinned_with_query, Method::POST, internal, &h, body, now).unwrap();
    let h = headers(&[
        (
            SIGNATURE_HEADER,
            "744fe76832ae4164c7e683ecd9f10ef149bece81f626541068a278adc804bc38",
        ),
        (SIGNATURE_VERSION_HEADER, "v2"),
    ]);
    check(&pinned, Method::POST, internal, &h, body, now).unwrap();
    // sign() builds the same URI, so a simulator and the verifier agree.
    let uri: Uri = internal.parse().unwrap();
    for version in [SignatureVersion::V2, SignatureVersion::V3] {
        let signed = pinned
            .sign_with(
                version,
                &WebhookRequest::new(&Method::POST, &uri, &HeaderMap::new(), body),
                now,
            )
            .unwrap();
        check(&pinned, Method::POST, internal, &signed, body, now).unwrap();
        check(
            &verifier(),
            Method::POST,
            &format!("{URI}?portalId=62515&name=a%3Ab"),
            &signed,
            body,
            now,
        )
        .unwrap();
    }
}
