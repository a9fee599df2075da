//! `EntityGraphSink`: the entity graph as a [`Sink`], resolving as batches arrive.

use async_trait::async_trait;

use apex_connect_core::{Ack, Batch, Result, Sink};

use crate::graph::EntityGraph;
use crate::policy::Policy;

/// A [`Sink`] that resolves each batch into the entity graph as it arrives (incremental, not a
/// batch job). It [wants entities](Sink::wants_entities): the engine and the webhook workers
/// map every record with the connector before writing.
///
/// # Behavior
/// - One transaction per batch: the batch is resolved whole or not at all; when `write`
///   returns `Ok` it is durable.
/// - Replays change nothing (`Ack::unchanged`); a delete takes the source entity out of its
///   canonical entity (see [`EntityGraph::apply`]).
/// - Entities the graph cannot index (empty or over-long ids) are acknowledged as unchanged
///   and logged, never failing the batch: the records are kept by whatever other sink stores
///   them.
#[derive(Debug, Clone)]
pub struct EntityGraphSink {
    graph: EntityGraph,
}

impl EntityGraphSink {
    /// A sink resolving into `graph` with `policy` (which the graph then carries: query
    /// through [`EntityGraphSink::graph`] to see fields resolved by the same policy).
    pub fn new(graph: EntityGraph, policy: Policy) -> Self {
        EntityGraphSink {
            graph: graph.with_policy(policy),
        }
    }

    /// A sink resolving into `graph` with the policy it already has.
    pub fn for_graph(graph: EntityGraph) -> Self {
        EntityGraphSink { graph }
    }

    /// The graph (for queries).
    pub fn graph(&self) -> &EntityGraph {
        &self.graph
    }
}

#[async_trait]
impl Sink for EntityGraphSink {
    async fn write(&self, batch: Batch<'_>) -> Result<Ack> {
        let r = self.graph.apply(batch).await?;
        Ok(Ack::new(r.applied, r.unchanged.saturating_add(r.skipped)))
    }

    fn wants_entities(&self) -> bool {
        true
    }
}
