//! Property tests: parsers and checks never panic on hostile input; documented record shapes
//! with hostile variations always read (envelope) and map (leniently).

use apex_connect_core::{RawJson, StreamId};
use apex_connect_salesforce::SalesforceApiError;
use apex_connect_salesforce::api::{parse_limit_info, signature_matches};
use apex_connect_salesforce::models::{MapContext, map_entity, record};
use apex_connect_salesforce::webhook::parse_outbound;
use apex_connect_testkit::hostile;
use proptest::prelude::*;
use serde_json::json;

fn documented_contact() -> serde_json::Value {
    json!({
        "attributes": {"type": "Contact", "url": "/services/data/v64.0/sobjects/Contact/003D000000QV9n2IAD"},
        "Id": "003D000000QV9n2IAD",
        "SystemModstamp": "2024-05-01T10:00:00.000+0000",
        "FirstName": "Rose", "LastName": "Gonzalez", "Name": "Rose Gonzalez",
        "Email": "rose@edge.com", "Phone": "(512) 757-6000", "Title": "SVP, Procurement",
        "AccountId": "001D000000IRFmaIAH", "OwnerId": "005D0000001KyEIIA0",
        "MailingCity": "Austin", "Preferred_Channel__c": "Email", "ReportsToId": null
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn soap_parser_never_panics_on_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = parse_outbound(&bytes);
    }

    #[test]
    fn soap_parser_never_panics_on_mutated_envelopes(cut in 0usize..2000, flip in 0usize..2000, byte in any::<u8>()) {
        let mut b = crate::fixture("outbound_message.xml").into_bytes();
        if !b.is_empty() {
            let i = flip % b.len();
            b[i] = byte;
            b.truncate(cut.max(1).min(b.len()));
        }
        if let Ok(m) = parse_outbound(&b) {
            prop_assert!(!m.notifications.is_empty() && m.notifications.len() <= 100);
        }
    }

    #[test]
    fn signature_checks_never_panic(id in ".{0,80}", iat in ".{0,20}", sig in ".{0,60}", secret in ".{0,40}") {
        let _ = signature_matches(&id, &iat, &sig, &secret);
    }

    #[test]
    fn limit_info_never_panics(v in ".{0,80}", used in any::<u64>(), max in 1u64..) {
        let _ = parse_limit_info(&v);
        prop_assert_eq!(parse_limit_info(&format!("api-usage={used}/{max}")), Some((used, max)));
    }

    #[test]
    fn error_arrays_never_panic(body in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = SalesforceApiError::parse(400, &body);
    }

    #[test]
    fn hostile_contacts_read_and_map(v in hostile::strategy(documented_contact(), &["Id", "SystemModstamp"])) {
        let raw = RawJson::from(v);
        let r = record(&StreamId::from("Contact"), raw, "SystemModstamp");
        prop_assert!(r.is_ok(), "{r:?}");
        let r = r.unwrap();
        prop_assert_eq!(r.id.as_str(), "003D000000QV9n2IAD");
        let e = map_entity("Contact", &r, &MapContext::default());
        prop_assert!(e.is_ok(), "{e:?}");
    }
}
