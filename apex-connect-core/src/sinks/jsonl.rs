//! `JsonlSink`: one JSON line per record, appended to a file, synced before the ack.

use std::fmt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::sync::Mutex;

use crate::error::{Error, ErrorKind, Result};
use crate::model::{ConnectionId, Entity, Op, RawJson, StreamId};
use crate::sink::{Ack, Batch, Sink};

/// One line of the file.
#[derive(Serialize)]
struct Line<'a> {
    connection: &'a ConnectionId,
    stream: &'a StreamId,
    id: &'a str,
    op: Op,
    version: Option<i64>,
    updated_at: Option<i64>,
    raw: &'a RawJson,
    #[serde(skip_serializing_if = "Option::is_none")]
    entity: Option<&'a Entity>,
}

/// A sink that appends each record as one JSON line
/// (`{"connection","stream","id","op","version","updated_at","raw","entity"}`) to a file.
///
/// # Behavior
/// - A batch is written with one `write`, then flushed and `sync_data`'d before the ack, so an
///   acknowledged batch survives a crash.
/// - The file is append-only: a replay after a crash appends the records again (all counted as
///   applied); readers keep the line with the highest `version` per (connection, stream, id).
/// - A crash in the middle of a write can leave a partial last line; readers skip a last line
///   that does not parse.
pub struct JsonlSink {
    path: PathBuf,
    file: Mutex<tokio::fs::File>,
    entities: bool,
}

impl fmt::Debug for JsonlSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JsonlSink")
            .field("path", &self.path)
            .finish()
    }
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |e| {
        Error::storage(what)
            .with_context("path", path.display())
            .set_source(e)
    }
}

impl JsonlSink {
    /// Opens `path` for appending, creating it if needed.
    ///
    /// # Errors
    /// `Storage` when the file cannot be opened.
    pub async fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await
            .map_err(io_err("cannot open the JSONL file", &path))?;
        Ok(JsonlSink {
            file: Mutex::new(file),
            entities: false,
            path,
        })
    }

    /// The file written to.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes each record's mapped entity too (an `entity` member on each line).
    pub fn with_entities(mut self) -> Self {
        self.entities = true;
        self
    }
}

#[async_trait]
impl Sink for JsonlSink {
    async fn write(&self, batch: Batch<'_>) -> Result<Ack> {
        if batch.records.is_empty() {
            return Ok(Ack::default());
        }
        let mut buf = Vec::with_capacity(batch.records.len() * 256);
        for (i, r) in batch.records.iter().enumerate() {
            let line = Line {
                connection: batch.connection,
                stream: batch.stream,
                id: &r.id,
                op: r.op,
                version: r.version,
                updated_at: r.updated_at,
                raw: &r.raw,
                entity: batch.entity(i),
            };
            serde_json::to_writer(&mut buf, &line).map_err(|e| {
                Error::new(ErrorKind::InvalidInput, "record cannot be written as JSON")
                    .with_context("id", &r.id)
                    .set_source(e)
            })?;
            buf.push(b'\n');
        }
        let mut file = self.file.lock().await;
        file.write_all(&buf)
            .await
            .map_err(io_err("cannot write the JSONL file", &self.path))?;
        file.flush()
            .await
            .map_err(io_err("cannot flush the JSONL file", &self.path))?;
        file.sync_data()
            .await
            .map_err(io_err("cannot sync the JSONL file", &self.path))?;
        Ok(Ack::new(batch.records.len() as u64, 0))
    }
    fn wants_entities(&self) -> bool {
        self.entities
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Record;

    #[tokio::test]
    async fn appends_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.jsonl");
        let sink = JsonlSink::open(&path).await.unwrap();
        let c = ConnectionId::from("c");
        let s = StreamId::from("s");
        let recs = vec![
            Record::upsert(s.clone(), "a", serde_json::json!({"x": 1})).with_version(1),
            Record::delete(s.clone(), "b").with_version(2),
        ];
        let b = Batch::new(&c, &s, &recs);
        assert_eq!(sink.write(b).await.unwrap(), Ack::new(2, 0));
        assert_eq!(sink.write(b).await.unwrap(), Ack::new(2, 0));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0]["id"], "a");
        assert_eq!(lines[0]["raw"]["x"], 1);
        assert_eq!(lines[1]["op"], "delete");
        assert_eq!(lines[1]["connection"], "c");
    }
}
