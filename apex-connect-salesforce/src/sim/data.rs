//! The simulator's org: object specs (describe), records generated on the fly from their
//! index (a million cost nothing until read), and an overlay of changed, created, deleted and
//! injected records.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use super::soql::Val;
use crate::models::{parse_datetime, sf_datetime};

/// Generated stamps start here (2024-01-01T00:00:00Z); every change made afterwards is later.
pub(crate) const BASE_MS: i64 = 1_704_067_200_000;

#[derive(Debug, Clone)]
pub(crate) struct FieldSpec {
    pub(crate) name: String,
    pub(crate) sf_type: &'static str,
    pub(crate) custom: bool,
    pub(crate) reference_to: Vec<&'static str>,
    pub(crate) compound: Option<&'static str>,
    pub(crate) cascade: bool,
    pub(crate) external_id: bool,
}

fn f(name: &str, sf_type: &'static str) -> FieldSpec {
    FieldSpec {
        name: name.to_string(),
        sf_type,
        custom: name.ends_with("__c"),
        reference_to: Vec::new(),
        compound: None,
        cascade: false,
        external_id: false,
    }
}

fn r(name: &str, to: &[&'static str]) -> FieldSpec {
    FieldSpec {
        reference_to: to.to_vec(),
        ..f(name, "reference")
    }
}

fn c(name: &str, compound: &'static str) -> FieldSpec {
    FieldSpec {
        compound: Some(compound),
        ..f(name, "string")
    }
}

#[derive(Debug, Clone)]
pub(crate) struct ObjectSpec {
    pub(crate) name: String,
    pub(crate) prefix: &'static str,
    pub(crate) fields: Vec<FieldSpec>,
    pub(crate) count: u64,
    pub(crate) custom: bool,
}

impl ObjectSpec {
    pub(crate) fn field(&self, name: &str) -> Option<&FieldSpec> {
        self.fields
            .iter()
            .find(|f| f.name.eq_ignore_ascii_case(name))
    }

    pub(crate) fn describe(&self) -> Value {
        let fields: Vec<Value> = self
            .fields
            .iter()
            .map(|f| {
                json!({
                    "name": f.name,
                    "type": f.sf_type,
                    "custom": f.custom,
                    "nillable": f.name != "Id",
                    "filterable": true,
                    "updateable": !matches!(f.name.as_str(), "Id" | "SystemModstamp" | "CreatedDate" | "LastModifiedDate" | "IsDeleted"),
                    "createable": f.name != "Id",
                    "externalId": f.external_id,
                    "compoundFieldName": f.compound,
                    "referenceTo": f.reference_to,
                    "relationshipName": if f.sf_type == "reference" {
                        Value::String(f.name.strip_suffix("Id").map(str::to_string).unwrap_or_else(|| f.name.replace("__c", "__r")))
                    } else { Value::Null },
                    "cascadeDelete": f.cascade,
                    "label": f.name,
                })
            })
            .collect();
        json!({
            "name": self.name,
            "label": self.name,
            "keyPrefix": self.prefix,
            "custom": self.custom,
            "queryable": true,
            "replicateable": true,
            "createable": true,
            "updateable": true,
            "deletable": true,
            "fields": fields,
            "childRelationships": [],
            "urls": {"sobject": format!("/services/data/v64.0/sobjects/{}", self.name)},
        })
    }
}

fn common(owner: bool, deletable: bool, modified: bool) -> Vec<FieldSpec> {
    let mut v = vec![f("Id", "id")];
    if deletable {
        v.push(f("IsDeleted", "boolean"));
    }
    v.push(f("CreatedDate", "datetime"));
    v.push(r("CreatedById", &["User"]));
    if modified {
        v.push(f("LastModifiedDate", "datetime"));
        v.push(r("LastModifiedById", &["User"]));
    }
    v.push(f("SystemModstamp", "datetime"));
    if owner {
        v.push(r("OwnerId", &["User", "Group"]));
    }
    v
}

/// The standard objects the simulator has, plus the custom `Invoice__c`.
pub(crate) fn specs(counts: &HashMap<String, u64>) -> Vec<ObjectSpec> {
    let n = |o: &str, d: u64| counts.get(o).copied().unwrap_or(d);
    let mut account = common(true, true, true);
    account.extend([
        f("Name", "string"),
        f("Type", "picklist"),
        f("Industry", "picklist"),
        f("Website", "url"),
        f("Phone", "phone"),
        f("AnnualRevenue", "currency"),
        f("NumberOfEmployees", "int"),
        f("BillingAddress", "address"),
        c("BillingStreet", "BillingAddress"),
        c("BillingCity", "BillingAddress"),
        c("BillingState", "BillingAddress"),
        c("BillingPostalCode", "BillingAddress"),
        c("BillingCountry", "BillingAddress"),
        r("ParentId", &["Account"]),
        f("Tier__c", "picklist"),
        f("Customer_Since__c", "date"),
        FieldSpec {
            external_id: true,
            ..f("External_Id__c", "string")
        },
    ]);
    let mut contact = common(true, true, true);
    contact.extend([
        f("FirstName", "string"),
        f("LastName", "string"),
        f("Name", "string"),
        f("Email", "email"),
        f("Phone", "phone"),
        f("Title", "string"),
        r("AccountId", &["Account"]),
        r("ReportsToId", &["Contact"]),
        f("MailingAddress", "address"),
        c("MailingCity", "MailingAddress"),
        c("MailingCountry", "MailingAddress"),
        f("Preferred_Channel__c", "picklist"),
    ]);
    let mut lead = common(true, true, true);
    lead.extend([
        f("FirstName", "string"),
        f("LastName", "string"),
        f("Name", "string"),
        f("Company", "string"),
        f("Email", "email"),
        f("Status", "picklist"),
        f("LeadSource", "picklist"),
        f("IsConverted", "boolean"),
        r("ConvertedAccountId", &["Account"]),
    ]);
    let mut opp = common(true, true, true);
    opp.extend([
        f("Name", "string"),
        r("AccountId", &["Account"]),
        f("StageName", "picklist"),
        f("Amount", "currency"),
        f("CloseDate", "date"),
        f("Probability", "percent"),
        f("IsClosed", "boolean"),
        f("IsWon", "boolean"),
        f("ForecastCategoryName", "picklist"),
        f("Competitor__c", "string"),
    ]);
    let mut hist = common(false, true, false);
    hist.extend([
        r("OpportunityId", &["Opportunity"]),
        f("StageName", "picklist"),
        f("Amount", "currency"),
        f("CloseDate", "date"),
        f("Probability", "percent"),
    ]);
    let mut user = common(false, false, true);
    user.extend([
        f("Username", "string"),
        f("FirstName", "string"),
        f("LastName", "string"),
        f("Name", "string"),
        f("Email", "email"),
        f("IsActive", "boolean"),
        f("Title", "string"),
    ]);
    let mut task = common(true, true, true);
    task.extend([
        f("Subject", "combobox"),
        f("Status", "picklist"),
        f("Priority", "picklist"),
        f("ActivityDate", "date"),
        r("WhoId", &["Contact", "Lead"]),
        r("WhatId", &["Account", "Opportunity", "Invoice__c"]),
        f("TaskSubtype", "picklist"),
        f("Description", "textarea"),
    ]);
    let mut event = common(true, true, true);
    event.extend([
        f("Subject", "combobox"),
        f("StartDateTime", "datetime"),
        f("EndDateTime", "datetime"),
        f("ActivityDateTime", "datetime"),
        f("DurationInMinutes", "int"),
        f("Location", "string"),
        r("WhoId", &["Contact", "Lead"]),
        r("WhatId", &["Account", "Opportunity", "Invoice__c"]),
    ]);
    let mut invoice = common(true, true, true);
    invoice.extend([
        f("Name", "string"),
        FieldSpec {
            cascade: true,
            ..r("Account__c", &["Account"])
        },
        f("Amount__c", "currency"),
        f("Status__c", "picklist"),
        f("Due_Date__c", "date"),
    ]);
    let mk = |name: &str, prefix: &'static str, fields: Vec<FieldSpec>, count: u64| ObjectSpec {
        custom: name.ends_with("__c"),
        name: name.to_string(),
        prefix,
        fields,
        count,
    };
    vec![
        mk("Account", "001", account, n("Account", 60)),
        mk("Contact", "003", contact, n("Contact", 80)),
        mk("Lead", "00Q", lead, n("Lead", 30)),
        mk("Opportunity", "006", opp, n("Opportunity", 40)),
        mk(
            "OpportunityHistory",
            "008",
            hist,
            n("OpportunityHistory", 60),
        ),
        mk("User", "005", user, n("User", 10)),
        mk("Task", "00T", task, n("Task", 50)),
        mk("Event", "00U", event, n("Event", 30)),
        mk("Invoice__c", "a0I", invoice, n("Invoice__c", 25)),
    ]
}

/// The id of generated record `i` of an object with `prefix`: fixed width, so string order is
/// index order.
pub(crate) fn gen_id(prefix: &str, i: u64) -> String {
    format!("{prefix}{:012}AAA", i % 1_000_000_000_000)
}

/// The index of a generated id.
pub(crate) fn parse_gen_id(prefix: &str, id: &str) -> Option<u64> {
    let rest = id.strip_prefix(prefix)?;
    let digits = rest.get(..12)?;
    if id.len() != 18 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

const INDUSTRIES: &[&str] = &[
    "Technology",
    "Finance",
    "Retail",
    "Healthcare",
    "Energy",
    "Media",
];
const STAGES: &[(&str, u8, bool, bool)] = &[
    ("Prospecting", 10, false, false),
    ("Qualification", 20, false, false),
    ("Needs Analysis", 40, false, false),
    ("Proposal/Price Quote", 75, false, false),
    ("Closed Won", 100, true, true),
    ("Closed Lost", 0, true, false),
];

/// How a generated value is written.
pub(crate) enum Out {
    Null,
    Str,
    Raw,
}

/// The data-generation parameters.
#[derive(Debug, Clone)]
pub(crate) struct Gen {
    pub(crate) seed: u64,
    pub(crate) per_second: u64,
    pub(crate) counts: HashMap<String, u64>,
}

impl Gen {
    fn count(&self, o: &str) -> u64 {
        self.counts.get(o).copied().unwrap_or(1).max(1)
    }

    pub(crate) fn stamp(&self, i: u64) -> i64 {
        let sec = i / self.per_second.max(1);
        BASE_MS.saturating_add(i64::try_from(sec.saturating_mul(1000)).unwrap_or(i64::MAX / 2))
    }

    fn user(&self, i: u64) -> String {
        gen_id("005", (i.wrapping_add(self.seed)) % self.count("User"))
    }

    /// Writes generated field `field` of record `i` of `obj` into `out` (as text).
    pub(crate) fn write(&self, obj: &ObjectSpec, i: u64, field: &str, out: &mut String) -> Out {
        let s = self.stamp(i);
        macro_rules! put {
            ($($t:tt)*) => {{ let _ = write!(out, $($t)*); Out::Str }};
        }
        macro_rules! raw {
            ($($t:tt)*) => {{ let _ = write!(out, $($t)*); Out::Raw }};
        }
        let acc = |k: u64| gen_id("001", k % self.count("Account"));
        match (obj.name.as_str(), field) {
            (_, "Id") => put!("{}", gen_id(obj.prefix, i)),
            (_, "IsDeleted") => raw!("false"),
            (_, "SystemModstamp") | (_, "LastModifiedDate") => put!("{}", sf_datetime(s)),
            (_, "CreatedDate") => put!("{}", sf_datetime(s - 86_400_000)),
            (_, "CreatedById") | (_, "LastModifiedById") | (_, "OwnerId") => {
                put!("{}", self.user(i))
            }
            ("Account", "Name") => put!("Acme {i}, Inc."),
            ("Opportunity", "Name") => put!("Deal {i}"),
            ("Invoice__c", "Name") => put!("INV-{i:06}"),
            (_, "Name") => put!("First{i} Last{i}"),
            (_, "FirstName") => put!("First{i}"),
            (_, "LastName") => put!("Last{i}"),
            (_, "Email") => put!("first{i}.last{i}@example{}.com", i % 50),
            (_, "Phone") => put!("+1 555 {:04}", i % 10_000),
            (_, "Website") => put!("www.acme{i}.example.com"),
            (_, "Type") => put!(
                "{}",
                if i.is_multiple_of(3) {
                    "Customer"
                } else {
                    "Prospect"
                }
            ),
            (_, "Industry") => put!("{}", INDUSTRIES[(i % 6) as usize]),
            (_, "AnnualRevenue") => raw!("{}.0", (i * 1000) % 10_000_000),
            (_, "NumberOfEmployees") => raw!("{}", (i * 7) % 5000),
            (_, "BillingStreet") => put!("{i} Main Street"),
            (_, "BillingCity") | (_, "MailingCity") => put!("City {}", i % 20),
            (_, "BillingState") => put!("CA"),
            (_, "BillingPostalCode") => put!("{:05}", i % 100_000),
            (_, "BillingCountry") | (_, "MailingCountry") => put!("US"),
            (_, "ParentId") if i % 10 == 5 && i > 10 => put!("{}", acc(i / 10)),
            (_, "Tier__c") => put!("{}", ["Gold", "Silver", "Bronze"][(i % 3) as usize]),
            (_, "Customer_Since__c") => put!("2020-01-{:02}", i % 28 + 1),
            (_, "External_Id__c") => put!("EXT-{i}"),
            (_, "Title") => put!("Manager {}", i % 7),
            ("Contact", "AccountId") | ("Opportunity", "AccountId") => put!("{}", acc(i)),
            (_, "ReportsToId") if !i.is_multiple_of(5) => put!("{}", gen_id("003", i - i % 5)),
            (_, "Preferred_Channel__c") => put!(
                "{}",
                if i.is_multiple_of(2) {
                    "Email"
                } else {
                    "Phone"
                }
            ),
            (_, "Company") => put!("Prospect Co {i}"),
            ("Lead", "Status") => put!("Open - Not Contacted"),
            (_, "LeadSource") => put!("Web"),
            (_, "IsConverted") => raw!("false"),
            (_, "StageName") => put!("{}", STAGES[(i % 6) as usize].0),
            (_, "Amount") => raw!("{}.0", 1000 + (i % 97) * 250),
            (_, "CloseDate") => put!("2024-{:02}-15", i % 12 + 1),
            (_, "Probability") => raw!("{}.0", STAGES[(i % 6) as usize].1),
            (_, "IsClosed") => raw!("{}", STAGES[(i % 6) as usize].2),
            (_, "IsWon") => raw!("{}", STAGES[(i % 6) as usize].3),
            (_, "ForecastCategoryName") => put!("Pipeline"),
            (_, "Competitor__c") if i.is_multiple_of(4) => put!("Globex"),
            (_, "OpportunityId") => put!("{}", gen_id("006", i % self.count("Opportunity"))),
            (_, "Username") => put!("user{i}@acme.example"),
            (_, "IsActive") => raw!("true"),
            (_, "Subject") => put!(
                "{} {i}",
                if obj.name == "Task" {
                    "Call"
                } else {
                    "Meeting"
                }
            ),
            ("Task", "Status") => put!(
                "{}",
                if i.is_multiple_of(2) {
                    "Completed"
                } else {
                    "Not Started"
                }
            ),
            (_, "Priority") => put!("Normal"),
            (_, "ActivityDate") => put!("2024-02-{:02}", i % 28 + 1),
            (_, "WhoId") => {
                if i.is_multiple_of(2) {
                    put!("{}", gen_id("003", i % self.count("Contact")))
                } else {
                    put!("{}", gen_id("00Q", i % self.count("Lead")))
                }
            }
            (_, "WhatId") => {
                if i.is_multiple_of(3) {
                    put!("{}", gen_id("006", i % self.count("Opportunity")))
                } else {
                    put!("{}", acc(i))
                }
            }
            (_, "TaskSubtype") => put!("Call"),
            (_, "Description") => put!("Discussed renewal \"Q{}\"\nwith the team", i % 4 + 1),
            (_, "StartDateTime") | (_, "ActivityDateTime") => {
                put!("{}", sf_datetime(s + 3_600_000))
            }
            (_, "EndDateTime") => put!("{}", sf_datetime(s + 7_200_000)),
            (_, "DurationInMinutes") => raw!("60"),
            (_, "Location") => put!("Room {}", i % 9),
            (_, "Account__c") => put!("{}", acc(i)),
            (_, "Amount__c") => raw!("{}.5", 100 + i % 900),
            (_, "Status__c") => put!("{}", if i.is_multiple_of(2) { "Paid" } else { "Open" }),
            (_, "Due_Date__c") => put!("2024-03-{:02}", i % 28 + 1),
            _ => Out::Null,
        }
    }

    /// A generated field as a JSON value.
    pub(crate) fn value(&self, obj: &ObjectSpec, i: u64, field: &str) -> Value {
        let mut s = String::new();
        match self.write(obj, i, field, &mut s) {
            Out::Null => Value::Null,
            Out::Str => Value::String(s),
            Out::Raw => serde_json::from_str(&s).unwrap_or(Value::Null),
        }
    }

    /// A generated field as a comparable value.
    pub(crate) fn val(&self, obj: &ObjectSpec, i: u64, field: &str) -> Val {
        match field {
            "SystemModstamp" | "LastModifiedDate" => Val::Ms(self.stamp(i)),
            "CreatedDate" => Val::Ms(self.stamp(i) - 86_400_000),
            "Id" => Val::Str(gen_id(obj.prefix, i)),
            "IsDeleted" => Val::Bool(false),
            _ => to_val(obj, field, &self.value(obj, i, field)),
        }
    }
}

/// A JSON value as a comparable value (datetime fields by their spec).
pub(crate) fn to_val(obj: &ObjectSpec, field: &str, v: &Value) -> Val {
    match v {
        Value::String(s) => {
            if obj.field(field).is_some_and(|f| f.sf_type == "datetime") {
                parse_datetime(s).map_or(Val::Null, Val::Ms)
            } else {
                Val::Str(s.clone())
            }
        }
        Value::Bool(b) => Val::Bool(*b),
        Value::Number(n) => n.as_f64().map_or(Val::Null, Val::Num),
        _ => Val::Null,
    }
}

/// A changed, created, deleted or injected record.
#[derive(Debug, Clone)]
pub(crate) struct ORec {
    pub(crate) stamp: i64,
    pub(crate) deleted: bool,
    pub(crate) fields: Map<String, Value>,
    /// An injected record's JSON, served verbatim.
    pub(crate) raw: Option<String>,
}

/// The overlay of one object.
#[derive(Debug, Default)]
pub(crate) struct Overlay {
    pub(crate) recs: HashMap<String, ORec>,
    pub(crate) order: BTreeSet<(i64, String)>,
    pub(crate) shadowed: HashSet<u64>,
}

impl Overlay {
    pub(crate) fn put(&mut self, prefix: &str, id: String, rec: ORec) {
        if let Some(old) = self.recs.get(&id) {
            self.order.remove(&(old.stamp, id.clone()));
        }
        if let Some(i) = parse_gen_id(prefix, &id) {
            self.shadowed.insert(i);
        }
        self.order.insert((rec.stamp, id.clone()));
        self.recs.insert(id, rec);
    }

    pub(crate) fn remove(&mut self, id: &str) {
        if let Some(old) = self.recs.remove(id) {
            self.order.remove(&(old.stamp, id.to_string()));
        }
    }
}
