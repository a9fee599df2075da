#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![warn(missing_debug_implementations, unreachable_pub)]

pub mod audit;
pub mod extract;
pub mod graph;
pub mod groundtruth;
pub mod key;
pub mod normalize;
pub mod policy;
pub mod query;
mod resolve;
pub mod sink;
pub mod store;

pub use audit::AuditReport;
pub use extract::{SourceKey, kind_name};
pub use graph::EntityGraph;
pub use key::{IdentityKey, KeyKind, KeyRole};
pub use normalize::{Normalizer, Region};
pub use policy::{ExternalIdRule, MergeOn, Policy};
pub use query::{
    CanonicalEntity, CanonicalId, Direction, EntitySummary, EventKind, FieldValue,
    IdentityEvidence, IdentityView, MergeEvent, Provenance, RelationEvidence, RelationView,
    ResolvedField, SourceEntity, SplitInfo, SplitOutcome,
};
pub use resolve::ApplyReport;
pub use sink::EntityGraphSink;
#[cfg(feature = "postgres")]
pub use store::PgGraphStore;
pub use store::{GraphStats, GraphStore, GraphTx, SqliteGraphStore};
