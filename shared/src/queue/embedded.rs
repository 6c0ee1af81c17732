//! A durable queue in the embedded SQLite file, with SQS's semantics where they matter: a received
//! message is invisible for a while, redelivered if not deleted, and moved to a dead-letter table
//! after `max_receives`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::params;
use tokio::sync::Notify;

use super::{
    Consumer, DeadLetter, Delivery, FanoutJob, Queue, QueueAdmin, QueueDepths, QueueError,
    QueueMessage,
};
use crate::store::sqlite::{add_columns, SqliteDb};
use crate::trace::Carrier;

/// `trace`: the message's trace as JSON ([`Carrier`]), or null.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS fanout_queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT, body TEXT NOT NULL,
    visible_at_ms INTEGER NOT NULL, receives INTEGER NOT NULL DEFAULT 0, trace TEXT);
CREATE INDEX IF NOT EXISTS fanout_queue_visible ON fanout_queue (visible_at_ms);
CREATE TABLE IF NOT EXISTS fanout_dead_letters (
    id INTEGER PRIMARY KEY, body TEXT NOT NULL, receives INTEGER NOT NULL, dead_at_ms INTEGER NOT NULL,
    trace TEXT);
";

/// Columns added after the queue's first release.
const ADDED_COLUMNS: [(&str, &str); 2] = [
    ("fanout_queue", "trace TEXT"),
    ("fanout_dead_letters", "trace TEXT"),
];

#[derive(Clone)]
pub struct EmbeddedQueue {
    db: SqliteDb,
    notify: Arc<Notify>,
    visibility: Duration,
    max_receives: u32,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

fn queue_error(e: crate::store::StoreError) -> QueueError {
    QueueError(format!("embedded queue: {e}"))
}

impl EmbeddedQueue {
    pub async fn new(
        db: SqliteDb,
        visibility: Duration,
        max_receives: u32,
    ) -> Result<Self, QueueError> {
        db.run(|c| {
            c.execute_batch(SCHEMA)?;
            add_columns(c, &ADDED_COLUMNS)
        })
        .await
        .map_err(queue_error)?;
        Ok(EmbeddedQueue {
            db,
            notify: Arc::new(Notify::new()),
            visibility,
            max_receives,
        })
    }

    /// Waits until a message may be visible (or `max_wait` passes).
    pub async fn wait(&self, max_wait: Duration) {
        let _ = tokio::time::timeout(max_wait, self.notify.notified()).await;
    }

    /// Takes up to `max` visible messages, hiding them for the visibility timeout. Messages received
    /// `max_receives` times already move to the dead-letter table instead.
    pub async fn receive(&self, max: usize) -> Result<Vec<QueueMessage>, QueueError> {
        let (visibility_ms, max_receives) =
            (self.visibility.as_millis() as i64, self.max_receives as i64);
        self.db
            .run(move |c| {
                let tx = c.transaction()?;
                let now = now_ms();
                tx.execute(
                    "INSERT INTO fanout_dead_letters (id, body, receives, dead_at_ms, trace)
                     SELECT id, body, receives, ?1, trace FROM fanout_queue WHERE visible_at_ms <= ?1 AND receives >= ?2",
                    params![now, max_receives],
                )?;
                tx.execute("DELETE FROM fanout_queue WHERE visible_at_ms <= ?1 AND receives >= ?2", params![now, max_receives])?;
                let messages = {
                    let mut stmt = tx.prepare_cached(
                        "UPDATE fanout_queue SET visible_at_ms = ?1, receives = receives + 1
                         WHERE id IN (SELECT id FROM fanout_queue WHERE visible_at_ms <= ?2 ORDER BY id LIMIT ?3)
                         RETURNING id, body, trace, receives",
                    )?;
                    let rows = stmt.query_map(params![now + visibility_ms, now, max as i64], |r| {
                        let trace: Option<String> = r.get(2)?;
                        Ok(QueueMessage {
                            id: r.get::<_, i64>(0)?.to_string(),
                            body: r.get(1)?,
                            // A trace that does not parse is no reason to fail the job.
                            trace: trace.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default(),
                            receives: r.get(3)?,
                        })
                    })?;
                    rows.collect::<rusqlite::Result<Vec<_>>>()?
                };
                tx.commit()?;
                Ok(messages)
            })
            .await
            .map_err(queue_error)
    }

    pub async fn delete(&self, ids: &[String]) -> Result<(), QueueError> {
        let ids: Vec<i64> = ids.iter().filter_map(|id| id.parse().ok()).collect();
        self.db
            .run(move |c| {
                let tx = c.transaction()?;
                for id in &ids {
                    tx.execute("DELETE FROM fanout_queue WHERE id = ?1", params![id])?;
                }
                tx.commit()
            })
            .await
            .map_err(queue_error)
    }

    /// Messages waiting or in flight, and messages dead-lettered.
    pub async fn depth(&self) -> Result<(u64, u64), QueueError> {
        self.db
            .run(|c| {
                let pending: i64 =
                    c.query_row("SELECT count(*) FROM fanout_queue", [], |r| r.get(0))?;
                let dead: i64 =
                    c.query_row("SELECT count(*) FROM fanout_dead_letters", [], |r| r.get(0))?;
                Ok((pending as u64, dead as u64))
            })
            .await
            .map_err(queue_error)
    }

    /// Sends raw bodies (tests use it to inject messages that do not parse), with no trace.
    pub async fn send_raw(&self, bodies: Vec<String>) -> Result<(), QueueError> {
        self.send_traced(bodies, None).await
    }

    async fn send_traced(
        &self,
        bodies: Vec<String>,
        trace: Option<Carrier>,
    ) -> Result<(), QueueError> {
        let trace = trace.map(|t| serde_json::to_string(&t).expect("a trace serialises"));
        self.db
            .run(move |c| {
                let tx = c.transaction()?;
                let now = now_ms();
                for body in &bodies {
                    tx.execute(
                        "INSERT INTO fanout_queue (body, visible_at_ms, trace) VALUES (?1, ?2, ?3)",
                        params![body, now, trace],
                    )?;
                }
                tx.commit()
            })
            .await
            .map_err(queue_error)?;
        self.notify.notify_one();
        Ok(())
    }
}

#[async_trait]
impl Queue for EmbeddedQueue {
    async fn send(&self, jobs: &[FanoutJob]) -> Result<(), QueueError> {
        let trace = crate::trace::current().map(|t| t.carrier());
        self.send_traced(jobs.iter().map(FanoutJob::encode).collect(), trace)
            .await
    }

    async fn health(&self) -> Result<(), QueueError> {
        self.depth().await.map(drop)
    }
}

/// How long a receive waits for a message before answering none.
const RECEIVE_WAIT: Duration = Duration::from_millis(500);

#[async_trait]
impl Consumer for EmbeddedQueue {
    async fn receive(&self, max: usize) -> Result<Vec<Delivery>, QueueError> {
        let mut messages = EmbeddedQueue::receive(self, max).await?;
        if messages.is_empty() {
            self.wait(RECEIVE_WAIT).await;
            messages = EmbeddedQueue::receive(self, max).await?;
        }
        Ok(messages
            .into_iter()
            .map(|message| Delivery {
                receipt: message.id.clone(),
                message,
            })
            .collect())
    }

    async fn acknowledge(&self, handled: &[Delivery]) -> Result<(), QueueError> {
        let ids: Vec<String> = handled.iter().map(|d| d.receipt.clone()).collect();
        self.delete(&ids).await
    }
}

#[async_trait]
impl QueueAdmin for EmbeddedQueue {
    async fn depths(&self) -> Result<QueueDepths, QueueError> {
        self.db
            .run(|c| {
                let now = now_ms();
                let count = |sql: &str| c.query_row(sql, params![now], |r| r.get::<_, i64>(0));
                let waiting = count("SELECT count(*) FROM fanout_queue WHERE visible_at_ms <= ?1")?;
                let in_flight =
                    count("SELECT count(*) FROM fanout_queue WHERE visible_at_ms > ?1")?;
                let dead: i64 =
                    c.query_row("SELECT count(*) FROM fanout_dead_letters", [], |r| r.get(0))?;
                Ok(QueueDepths {
                    waiting: waiting as u64,
                    in_flight: in_flight as u64,
                    dead: Some(dead as u64),
                })
            })
            .await
            .map_err(queue_error)
    }

    async fn dead_letters(&self, max: usize) -> Result<Vec<DeadLetter>, QueueError> {
        self.db
            .run(move |c| read_dead_letters(c, max))
            .await
            .map_err(queue_error)
    }

    /// One transaction: every message moved is on the queue and off the table, or none is.
    async fn redrive(&self, max: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let moved = self
            .db
            .run(move |c| {
                let tx = c.transaction()?;
                let letters = read_dead_letters(&tx, max)?;
                let now = now_ms();
                for letter in &letters {
                    // The body and its trace move back together, as SQS's redrive keeps a
                    // message's attributes.
                    tx.execute(
                        "INSERT INTO fanout_queue (body, visible_at_ms, trace)
                         SELECT body, ?2, trace FROM fanout_dead_letters WHERE id = ?1",
                        params![letter.id, now],
                    )?;
                    tx.execute(
                        "DELETE FROM fanout_dead_letters WHERE id = ?1",
                        params![letter.id],
                    )?;
                }
                tx.commit()?;
                Ok(letters)
            })
            .await
            .map_err(queue_error)?;
        self.notify.notify_one();
        Ok(moved)
    }
}

fn read_dead_letters(c: &rusqlite::Connection, max: usize) -> rusqlite::Result<Vec<DeadLetter>> {
    let mut stmt = c.prepare_cached(
        "SELECT id, body, receives FROM fanout_dead_letters ORDER BY id LIMIT ?1",
    )?;
    let rows = stmt.query_map(params![max as i64], |r| {
        Ok(DeadLetter {
            id: r.get::<_, i64>(0)?.to_string(),
            body: r.get(1)?,
            receives: Some(r.get::<_, i64>(2)?.max(0) as u64),
        })
    })?;
    rows.collect()
}
