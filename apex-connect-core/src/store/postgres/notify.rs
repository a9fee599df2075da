//! Inbox wake-ups over `LISTEN/NOTIFY`: [`InboxWakeups`].

use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgListener, PgPoolOptions};
use tokio::sync::watch;

use crate::error::{Error, Result};

/// The channel every insert into the inbox notifies at commit (a trigger of the schema does
/// it, so appends from any process and any code path wake the workers).
pub const INBOX_CHANNEL: &str = "apex_connect_inbox";

/// The longest pause between two attempts to re-establish a lost listener connection.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Wake-ups for inbox workers: fires after events were appended to the inbox by any process
/// sharing the database, and after the listening connection was re-established (events may
/// have arrived while it was down). Made by [`super::PgStore::subscribe_inbox`].
///
/// # Behavior
/// - A wake-up is a hint to claim, never a promise that an event is there (another worker may
///   have taken it first). Workers keep polling at a slow interval as well: a notification
///   can be lost with the connection that carried it.
/// - A notification that arrives while nobody waits is not lost: the next
///   [`InboxWakeups::notified`] returns at once. Several notifications in a row fold into one
///   wake-up.
/// - Clones share the listening connection; each clone keeps its own "seen" mark, so give
///   each worker its own clone. The connection closes when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct InboxWakeups {
    rx: watch::Receiver<u64>,
}

impl InboxWakeups {
    /// Waits for the next wake-up (returns at once when one came since the last call).
    ///
    /// # Errors
    /// `Storage` when the listening task has stopped (the runtime is shutting down): fall
    /// back to polling.
    pub async fn notified(&mut self) -> Result<()> {
        self.rx
            .changed()
            .await
            .map_err(|_| Error::storage("the inbox listener has stopped"))
    }

    /// Whether a wake-up came since the last [`InboxWakeups::notified`], without waiting.
    pub fn pending(&self) -> bool {
        self.rx.has_changed().unwrap_or(false)
    }

    /// Wake-ups so far (notifications received plus reconnections): for metrics and tests.
    pub fn count(&self) -> u64 {
        *self.rx.borrow()
    }
}

/// Connects a listener on its own one-connection pool, listens, and spawns the task that
/// turns notifications into wake-ups. Returns once `LISTEN` is in effect: every append
/// committed after this returns is seen.
pub(super) async fn subscribe(options: PgConnectOptions) -> Result<InboxWakeups> {
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .idle_timeout(None)
        .max_lifetime(None)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(options);
    let listener = listen(&pool)
        .await
        .map_err(|e| Error::storage("cannot listen for inbox notifications").set_source(e))?;
    let (tx, rx) = watch::channel(0u64);
    tokio::spawn(run(pool, listener, tx));
    Ok(InboxWakeups { rx })
}

async fn listen(pool: &sqlx::PgPool) -> std::result::Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(INBOX_CHANNEL).await?;
    Ok(listener)
}

fn wake(tx: &watch::Sender<u64>) {
    tx.send_modify(|n| *n = n.wrapping_add(1));
}

async fn run(pool: sqlx::PgPool, listener: PgListener, tx: watch::Sender<u64>) {
    let mut listener = Some(listener);
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut current = match listener.take() {
            Some(l) => l,
            None => {
                tokio::select! {
                    _ = tx.closed() => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                match listen(&pool).await {
                    Ok(l) => {
                        backoff = Duration::from_millis(100);
                        // Events may have been appended while nobody listened: poll once.
                        wake(&tx);
                        l
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot re-establish the inbox listener");
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                        continue;
                    }
                }
            }
        };
        loop {
            tokio::select! {
                _ = tx.closed() => {
                    pool.close().await;
                    return;
                }
                got = current.try_recv() => match got {
                    Ok(Some(_)) => wake(&tx),
                    // The connection was lost and sqlx re-established it (listening again):
                    // notifications sent meanwhile are gone, so wake everyone to poll.
                    Ok(None) => wake(&tx),
                    Err(e) => {
                        tracing::warn!(error = %e, "inbox listener failed; reconnecting");
                        wake(&tx);
                        break;
                    }
                },
            }
        }
    }
    pool.close().await;
}
