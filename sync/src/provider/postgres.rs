//! The PostgreSQL provider (tokio-postgres). Reads share one pipelined
//! connection, re-opened after a failure; writes (loader, change
//! generator, tests) use their own connection so their transactions never
//! interleave with reads. A third connection LISTENs on
//! `shardcast_provider`, which a statement trigger NOTIFYs on every write.

mod admin;
mod delta;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use futures::StreamExt;
use parking_lot::Mutex;
use tokio_postgres::{AsyncMessage, Client, NoTls, Statement};

use super::{version_of, Provider, ProviderError};
use crate::model::{Batch, Row, ShardDef};
use delta::{decode, delta_sql, stream_delta, to_batch, tokio_stream_of, SELECT_COLS};

/// The NOTIFY channel writes announce themselves on.
pub const CHANNEL: &str = "shardcast_provider";

struct Conn {
    client: Client,
    /// Delta statements by number of cells.
    deltas: Mutex<HashMap<usize, Statement>>,
}

pub struct PgProvider {
    url: String,
    read: Mutex<Option<Arc<Conn>>>,
    write: tokio::sync::Mutex<Option<Client>>,
    notify: Mutex<Option<tokio::sync::watch::Receiver<u64>>>,
}

fn classify(e: tokio_postgres::Error) -> ProviderError {
    match e.as_db_error() {
        Some(db) if !e.is_closed() => {
            // Server-side shutdown and connection-class errors mean "down".
            let code = db.code().code();
            let msg = format!("postgres: {} ({code})", db.message());
            if code.starts_with("57P") || code.starts_with("08") {
                ProviderError::Unavailable(msg)
            } else {
                ProviderError::Query(msg)
            }
        }
        _ => ProviderError::Unavailable(format!("postgres: {e}")),
    }
}

async fn connect(url: &str) -> Result<Client, ProviderError> {
    let (client, conn) =
        tokio::time::timeout(Duration::from_secs(5), tokio_postgres::connect(url, NoTls))
            .await
            .map_err(|_| ProviderError::Unavailable("postgres: connect timed out after 5s".into()))?
            .map_err(|e| ProviderError::Unavailable(format!("postgres: connect: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "postgres connection ended");
        }
    });
    Ok(client)
}

impl PgProvider {
    /// A provider for `url` (`postgres://…` or `host=… port=… user=…`).
    /// Nothing connects until the first call.
    pub fn new(url: &str) -> PgProvider {
        PgProvider {
            url: url.to_string(),
            read: Mutex::new(None),
            write: tokio::sync::Mutex::new(None),
            notify: Mutex::new(None),
        }
    }

    async fn reader(&self) -> Result<Arc<Conn>, ProviderError> {
        if let Some(c) = self.read.lock().as_ref() {
            if !c.client.is_closed() {
                return Ok(c.clone());
            }
        }
        let conn = Arc::new(Conn {
            client: connect(&self.url).await?,
            deltas: Mutex::new(HashMap::new()),
        });
        *self.read.lock() = Some(conn.clone());
        Ok(conn)
    }

    /// Drop the read connection after an error so the next call reconnects.
    fn reset_reader(&self, e: &ProviderError) {
        if matches!(e, ProviderError::Unavailable(_)) {
            *self.read.lock() = None;
        }
    }

    async fn delta_stmt(&self, conn: &Conn, ncells: usize) -> Result<Statement, ProviderError> {
        if let Some(s) = conn.deltas.lock().get(&ncells) {
            return Ok(s.clone());
        }
        let sql = delta_sql(ncells, true);
        let s = conn.client.prepare(&sql).await.map_err(classify)?;
        conn.deltas.lock().insert(ncells, s.clone());
        Ok(s)
    }

    async fn writer(&self) -> Result<tokio::sync::MutexGuard<'_, Option<Client>>, ProviderError> {
        let mut g = self.write.lock().await;
        if g.as_ref().is_none_or(Client::is_closed) {
            *g = Some(connect(&self.url).await?);
        }
        Ok(g)
    }

    /// Run SQL on the write connection (tests and benches).
    pub async fn execute_sql(&self, sql: &str) -> Result<(), ProviderError> {
        let g = self.writer().await?;
        let c = g
            .as_ref()
            .ok_or_else(|| ProviderError::Unavailable("no connection".into()))?;
        c.batch_execute(sql).await.map_err(classify)
    }
}

#[async_trait]
impl Provider for PgProvider {
    async fn delta(
        &self,
        shard: &ShardDef,
        cursor: u64,
        limit: usize,
    ) -> Result<Batch, ProviderError> {
        let run = async {
            let conn = self.reader().await?;
            let stmt = self.delta_stmt(&conn, shard.cells.len()).await?;
            let cursor_i = i64::try_from(cursor)
                .map_err(|_| ProviderError::Invalid("cursor too large".into()))?;
            let lim = limit.max(1) as i64 + 1;
            let mut args: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&cursor_i, &lim];
            for (c, r) in &shard.cells {
                args.push(c);
                args.push(r);
            }
            let rows = conn.client.query(&stmt, &args).await.map_err(classify)?;
            Ok(to_batch(&shard.id, &rows, cursor, limit))
        };
        let res = run.await;
        if let Err(e) = &res {
            self.reset_reader(e);
        }
        res
    }

    async fn get(&self, sku: &str, region: &str) -> Result<Option<Row>, ProviderError> {
        let res = async {
            let conn = self.reader().await?;
            let sql = format!("SELECT {SELECT_COLS} FROM inventory WHERE sku = $1 AND region = $2");
            let r = conn
                .client
                .query_opt(&sql, &[&sku, &region])
                .await
                .map_err(classify)?;
            Ok(r.as_ref().and_then(decode))
        }
        .await;
        if let Err(e) = &res {
            self.reset_reader(e);
        }
        res
    }

    async fn catalog(&self) -> Result<Vec<(String, String)>, ProviderError> {
        let conn = self.reader().await?;
        let rows = conn
            .client
            .query("SELECT sku, category FROM products", &[])
            .await
            .map_err(classify)?;
        Ok(rows
            .iter()
            .filter_map(|r| Some((r.try_get(0).ok()?, r.try_get(1).ok()?)))
            .collect())
    }

    async fn head(&self) -> Result<u64, ProviderError> {
        let conn = self.reader().await?;
        let r = conn
            .client
            .query_one(
                "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM provider_version",
                &[],
            )
            .await
            .map_err(classify)?;
        Ok(version_of(r.get::<_, i64>(0)).unwrap_or(0))
    }

    fn subscribe(&self) -> Option<tokio::sync::watch::Receiver<u64>> {
        let mut g = self.notify.lock();
        if let Some(rx) = g.as_ref() {
            return Some(rx.clone());
        }
        let (tx, rx) = tokio::sync::watch::channel(0u64);
        let url = self.url.clone();
        tokio::spawn(listen_loop(url, tx));
        *g = Some(rx.clone());
        Some(rx)
    }

    fn delta_stream(
        self: Arc<Self>,
        shard: ShardDef,
        cursor: u64,
        limit: usize,
    ) -> BoxStream<'static, Result<Batch, ProviderError>> {
        // One batch read ahead of the consumer.
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(stream_delta(self.url.clone(), shard, cursor, limit, tx));
        tokio_stream_of(rx)
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }
}

/// Hold a LISTEN connection; tick `tx` on every notification and after
/// every reconnect (changes may have been missed meanwhile). Ends when
/// every receiver is gone.
async fn listen_loop(url: String, tx: tokio::sync::watch::Sender<u64>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if tx.is_closed() {
            return;
        }
        let attempt = async {
            let (client, mut conn) = tokio_postgres::connect(&url, NoTls).await?;
            let mut stream = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
            let (done_tx, mut done_rx) = tokio::sync::oneshot::channel::<()>();
            let tx2 = tx.clone();
            let pump = tokio::spawn(async move {
                while let Some(m) = stream.next().await {
                    match m {
                        Ok(AsyncMessage::Notification(_)) => tx2.send_modify(|v| *v += 1),
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
                let _ = done_tx.send(());
            });
            client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
            tx.send_modify(|v| *v += 1);
            tracing::debug!("listening for provider changes");
            tokio::select! {
                _ = &mut done_rx => {}
                _ = tx.closed() => {}
            }
            pump.abort();
            Ok::<_, tokio_postgres::Error>(())
        };
        match attempt.await {
            Ok(()) => backoff = Duration::from_millis(100),
            Err(e) => {
                tracing::warn!(error = %e, retry_in_ms = backoff.as_millis() as u64,
                    "provider LISTEN connection failed; polling meanwhile, retrying");
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
