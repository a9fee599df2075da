//! Measured: precision and recall of the merges on the seeded ground truth, every known
//! relation path resolvable, and consistency through replays, deletes and re-syncs.

use apex_connect_core::{Batch, Record, Sink};
use apex_connect_identity::groundtruth::{self, GroundTruthConfig, evaluate};
use apex_connect_identity::{EntityGraph, EntityGraphSink};

fn report(label: &str, e: &groundtruth::Evaluation) {
    eprintln!(
        "{label}: sources {} | precision {:.5} recall {:.5} (pairs: true {}, predicted {}, correct {}) | paths {}/{} | missing {}",
        e.overall.sources,
        e.overall.precision,
        e.overall.recall,
        e.overall.true_pairs,
        e.overall.predicted_pairs,
        e.overall.correct_pairs,
        e.paths_checked - e.paths_failed,
        e.paths_checked,
        e.missing,
    );
    for (kind, q) in &e.by_kind {
        eprintln!(
            "  {kind:<13} sources {:>6} precision {:.5} recall {:.5} (true {}, predicted {}, correct {})",
            q.sources, q.precision, q.recall, q.true_pairs, q.predicted_pairs, q.correct_pairs
        );
    }
}

fn assert_quality(e: &groundtruth::Evaluation) {
    assert_eq!(e.missing, 0);
    assert!(
        e.overall.precision >= 0.995,
        "precision {} below 99.5%",
        e.overall.precision
    );
    assert!(
        e.overall.recall >= 0.99,
        "recall {} below 99%",
        e.overall.recall
    );
    for kind in ["person", "org"] {
        let q = &e.by_kind[kind];
        assert!(q.precision >= 0.995, "{kind} precision {}", q.precision);
        assert!(q.recall >= 0.99, "{kind} recall {}", q.recall);
    }
    assert!(e.paths_checked >= 100, "only {} paths", e.paths_checked);
    assert_eq!(e.paths_failed, 0, "{:#?}", e.path_failures);
}

#[tokio::test]
async fn ground_truth_precision_recall_relations_and_resyncs() {
    let config = GroundTruthConfig::default();
    let gt = groundtruth::generate(&config, 1);
    let dir = tempfile::tempdir().unwrap();
    let graph = EntityGraph::open_sqlite(dir.path().join("graph.db"))
        .await
        .unwrap();
    let sink = EntityGraphSink::new(graph, groundtruth::policy());
    let graph = sink.graph().clone();
    let t = std::time::Instant::now();
    for b in &gt.batches {
        sink.write(b.batch()).await.unwrap();
    }
    eprintln!("resolved {} entities in {:?}", gt.entities(), t.elapsed());
    let t = std::time::Instant::now();
    let first = evaluate(&graph, &gt).await.unwrap();
    eprintln!("evaluated in {:?}", t.elapsed());
    let t = std::time::Instant::now();
    report("ground truth", &first);
    assert_quality(&first);
    let audit = graph.audit().await.unwrap();
    assert!(audit.is_consistent(), "{:#?}", audit.violations);
    assert_eq!(audit.sources as usize, gt.entities());
    eprintln!("audited in {:?}", t.elapsed());

    // A full re-sync of the same data changes nothing.
    let stats = graph.stats().await.unwrap();
    for b in &gt.batches {
        let r = graph.apply(b.batch()).await.unwrap();
        assert_eq!(r.applied, 0);
    }
    assert_eq!(graph.stats().await.unwrap(), stats);

    // Every 7th record is deleted at the source...
    for b in &gt.batches {
        let deletes: Vec<Record> = b
            .records
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 7 == 3)
            .map(|(_, r)| Record::delete(r.stream.clone(), r.id.clone()).with_version(i64::MAX - 1))
            .collect();
        graph
            .apply(Batch::new(&b.connection, &b.stream, &deletes))
            .await
            .unwrap();
    }
    let audit = graph.audit().await.unwrap();
    assert!(audit.is_consistent(), "{:#?}", audit.violations);
    let after_deletes = evaluate(&graph, &gt).await.unwrap();
    assert!(after_deletes.missing > 0);
    assert!(after_deletes.overall.precision >= 0.995);

    // ...and comes back (recreated with a newer version): the graph is as good as before.
    for b in &gt.batches {
        let records: Vec<Record> = b
            .records
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 7 == 3)
            .map(|(_, r)| r.clone().with_version(i64::MAX))
            .collect();
        let entities: Vec<_> = b
            .entities
            .iter()
            .enumerate()
            .filter(|(i, _)| i % 7 == 3)
            .map(|(_, e)| e.clone())
            .collect();
        graph
            .apply(Batch::new(&b.connection, &b.stream, &records).with_entities(&entities))
            .await
            .unwrap();
    }
    let again = evaluate(&graph, &gt).await.unwrap();
    report("after deletes and re-adds", &again);
    assert_quality(&again);
    let audit = graph.audit().await.unwrap();
    assert!(audit.is_consistent(), "{:#?}", audit.violations);
}
