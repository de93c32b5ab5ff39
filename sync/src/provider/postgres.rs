//! The PostgreSQL provider (tokio-postgres). Reads share one pipelined
//! connection, re-opened after a failure; writes (loader, change
//! generator, tests) use their own connection so their transactions never
//! interleave with reads. A third connection LISTENs on
//! `shardcast_provider`, which a statement trigger NOTIFYs on every write.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{BufMut, BytesMut};
use futures::stream::BoxStream;
use futures::{SinkExt, StreamExt};
use parking_lot::Mutex;
use tokio_postgres::{AsyncMessage, Client, NoTls, Statement};

use super::{version_of, Change, LoadRow, Provider, ProviderAdmin, ProviderError};
use crate::model::{Batch, Item, Row, ShardDef};

/// The NOTIFY channel writes announce themselves on.
pub const CHANNEL: &str = "shardcast_provider";

/// Schema migrations, applied in order, each once (recorded in
/// `shardcast_migrations`).
const MIGRATIONS: &[(i32, &str)] = &[(
    1,
    r#"
CREATE SEQUENCE IF NOT EXISTS provider_version;
CREATE TABLE IF NOT EXISTS products (
  sku text PRIMARY KEY,
  category text NOT NULL,
  attributes jsonb NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS inventory (
  sku text NOT NULL REFERENCES products(sku),
  region text NOT NULL,
  category text NOT NULL,
  stock bigint NOT NULL,
  price_cents bigint NOT NULL,
  version bigint NOT NULL DEFAULT 0,
  deleted boolean NOT NULL DEFAULT false,
  -- A copy of the product's attributes (JSON text), kept by the triggers
  -- below, so a delta is one index range scan per cell with no join.
  attributes text,
  PRIMARY KEY (sku, region)
);
-- The delta index: one range per (category, region) cell, in version order.
CREATE INDEX IF NOT EXISTS inventory_cell_version ON inventory (category, region, version);

-- Versions are stamped under a transaction-scoped lock, so a transaction
-- that took version V commits before any other transaction takes V+1: a
-- reader that sees V sees every version below it, and a cursor never
-- skips a row committed late.
CREATE OR REPLACE FUNCTION shardcast_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_advisory_xact_lock(7245001);
  NEW.version := nextval('provider_version');
  IF TG_OP = 'INSERT' OR NEW.attributes IS NULL THEN
    SELECT p.attributes::text INTO NEW.attributes FROM products p WHERE p.sku = NEW.sku;
  END IF;
  RETURN NEW;
END $$;
CREATE OR REPLACE TRIGGER inventory_stamp BEFORE INSERT OR UPDATE ON inventory
  FOR EACH ROW EXECUTE FUNCTION shardcast_stamp();

-- A delete becomes a tombstone (a versioned update), so deltas carry it.
CREATE OR REPLACE FUNCTION shardcast_tombstone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  UPDATE inventory SET deleted = true WHERE sku = OLD.sku AND region = OLD.region;
  RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER inventory_tombstone BEFORE DELETE ON inventory
  FOR EACH ROW EXECUTE FUNCTION shardcast_tombstone();

-- Attribute changes re-stamp the product's rows; categories never change
-- (a row would silently move between shards).
CREATE OR REPLACE FUNCTION shardcast_product_touch() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF NEW.category <> OLD.category THEN
    RAISE EXCEPTION 'a product''s category is immutable (sku %)', NEW.sku;
  END IF;
  IF NEW.attributes IS DISTINCT FROM OLD.attributes THEN
    UPDATE inventory SET attributes = NEW.attributes::text WHERE sku = NEW.sku;
  END IF;
  RETURN NEW;
END $$;
CREATE OR REPLACE TRIGGER products_touch BEFORE UPDATE ON products
  FOR EACH ROW EXECUTE FUNCTION shardcast_product_touch();

CREATE OR REPLACE FUNCTION shardcast_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('shardcast_provider', '');
  RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER inventory_notify AFTER INSERT OR UPDATE ON inventory
  FOR EACH STATEMENT EXECUTE FUNCTION shardcast_notify();
"#,
)];

const SELECT_COLS: &str = "sku, region, category, stock, price_cents, attributes, version, deleted";

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

/// Rows read from `cursor` as a batch of at most `limit` (one more row read
/// says there are more).
fn to_batch(shard: &str, rows: &[tokio_postgres::Row], cursor: u64, limit: usize) -> Batch {
    let mut b = Batch {
        from: cursor,
        to: cursor,
        rows: Vec::with_capacity(rows.len().min(limit.max(1))),
        ..Batch::default()
    };
    for r in rows {
        if b.rows.len() + b.malformed as usize == limit.max(1) {
            b.more = true;
            break;
        }
        match decode(r) {
            Some(row) => {
                b.to = row.version;
                b.rows.push(row);
            }
            None => {
                b.malformed += 1;
                if let Some(v) = r.try_get::<_, i64>(6).ok().and_then(version_of) {
                    b.to = b.to.max(v);
                }
                tracing::warn!(shard, "provider row unreadable; skipped and counted");
            }
        }
    }
    b
}

/// The SQL of a delta over `ncells` cells: one index range scan per cell
/// (`inventory_cell_version`), merged in version order (Merge Append);
/// `$1` the cursor, `$2` the limit (`None`: unlimited, for a portal that
/// is read batch by batch), then each cell's category and region.
fn delta_sql(ncells: usize, limited: bool) -> String {
    let limit = if limited { " LIMIT $2" } else { "" };
    let first = if limited { 3 } else { 2 };
    let parts: Vec<String> = (0..ncells)
        .map(|k| {
            format!(
                "(SELECT {SELECT_COLS} FROM inventory
                  WHERE category = ${} AND region = ${} AND version > $1 AND ($1 > 0 OR NOT deleted)
                  ORDER BY version{limit})",
                first + 2 * k,
                first + 1 + 2 * k
            )
        })
        .collect();
    let merged = if parts.len() == 1 {
        parts[0].clone()
    } else {
        format!("{} ORDER BY version{limit}", parts.join(" UNION ALL "))
    };
    format!("SELECT {SELECT_COLS} FROM ({merged}) i ORDER BY version")
}

/// One delta read through one portal on a connection of its own, batch by
/// batch into `tx`, the next batch asked for as soon as one is handed on,
/// so the database produces rows while the cache writes. The snapshot is
/// the portal's (taken when it opens): rows committed later come with the
/// next delta. Ends at the last batch, or when the receiver is gone.
async fn stream_delta(
    url: String,
    shard: ShardDef,
    cursor: u64,
    limit: usize,
    tx: tokio::sync::mpsc::Sender<Result<Batch, ProviderError>>,
) {
    let run = async {
        let mut client = connect(&url).await?;
        let t = client
            .build_transaction()
            .read_only(true)
            .start()
            .await
            .map_err(classify)?;
        // With no LIMIT the planner expects every row to be fetched and
        // sorts bitmap scans of every cell up front (in parallel, JIT
        // compiled); a portal read batch by batch wants the ordered index
        // scans merged in version order, as the per-batch query gets.
        t.batch_execute(
            "SET LOCAL enable_sort = off; SET LOCAL enable_bitmapscan = off;
             SET LOCAL max_parallel_workers_per_gather = 0; SET LOCAL jit = off",
        )
        .await
        .map_err(classify)?;
        let stmt = t
            .prepare(&delta_sql(shard.cells.len(), false))
            .await
            .map_err(classify)?;
        let cursor_i =
            i64::try_from(cursor).map_err(|_| ProviderError::Invalid("cursor too large".into()))?;
        let mut args: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&cursor_i];
        for (c, r) in &shard.cells {
            args.push(c);
            args.push(r);
        }
        let portal = t.bind(&stmt, &args).await.map_err(classify)?;
        let limit = limit.max(1);
        let fetch = i32::try_from(limit).unwrap_or(i32::MAX);
        let mut from = cursor;
        loop {
            let rows = t.query_portal(&portal, fetch).await.map_err(classify)?;
            let mut b = to_batch(&shard.id, &rows, from, limit);
            // A full fetch may have more behind it; a short one is the end.
            b.more = rows.len() == limit;
            from = b.to;
            let more = b.more;
            if tx.send(Ok(b)).await.is_err() || !more {
                return Ok(());
            }
        }
    };
    if let Err(e) = run.await {
        let _ = tx.send(Err(e)).await;
    }
}

fn decode(r: &tokio_postgres::Row) -> Option<Row> {
    let sku: String = r.try_get(0).ok()?;
    let region: String = r.try_get(1).ok()?;
    let category: String = r.try_get(2).ok()?;
    let version = version_of(r.try_get::<_, i64>(6).ok()?)?;
    let deleted: bool = r.try_get(7).unwrap_or(false);
    let item = if deleted {
        None
    } else {
        match (
            r.try_get::<_, i64>(3),
            r.try_get::<_, i64>(4),
            r.try_get::<_, String>(5),
        ) {
            (Ok(stock), Ok(price_cents), Ok(attributes)) => Some(Item {
                stock,
                price_cents,
                attributes,
            }),
            _ => Some(Item {
                stock: 0,
                price_cents: 0,
                attributes: String::new(),
            }),
        }
    };
    Some(Row {
        sku,
        region,
        category,
        version,
        item,
    })
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

/// A receiver as a stream.
fn tokio_stream_of<T: Send + 'static>(rx: tokio::sync::mpsc::Receiver<T>) -> BoxStream<'static, T> {
    futures::stream::unfold(rx, |mut rx| async move {
        let v = rx.recv().await?;
        Some((v, rx))
    })
    .boxed()
}

fn copy_escape(out: &mut BytesMut, s: &str) {
    for b in s.bytes() {
        match b {
            b'\\' => out.put_slice(b"\\\\"),
            b'\t' => out.put_slice(b"\\t"),
            b'\n' => out.put_slice(b"\\n"),
            b'\r' => out.put_slice(b"\\r"),
            _ => out.put_u8(b),
        }
    }
}

#[async_trait]
impl ProviderAdmin for PgProvider {
    async fn migrate(&self) -> Result<(), ProviderError> {
        let mut g = self.writer().await?;
        let c = g
            .as_mut()
            .ok_or_else(|| ProviderError::Unavailable("no connection".into()))?;
        c.batch_execute(
            "CREATE TABLE IF NOT EXISTS shardcast_migrations (version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())",
        )
        .await
        .map_err(classify)?;
        for (v, sql) in MIGRATIONS {
            let tx = c.transaction().await.map_err(classify)?;
            // Serialise concurrent migrators (several processes starting at once).
            tx.batch_execute("SELECT pg_advisory_xact_lock(7245000)")
                .await
                .map_err(classify)?;
            let done = tx
                .query_opt(
                    "SELECT 1 FROM shardcast_migrations WHERE version = $1",
                    &[v],
                )
                .await
                .map_err(classify)?;
            if done.is_none() {
                tx.batch_execute(sql).await.map_err(classify)?;
                tx.execute(
                    "INSERT INTO shardcast_migrations (version) VALUES ($1)",
                    &[v],
                )
                .await
                .map_err(classify)?;
                tracing::info!(version = v, "provider schema migrated");
            }
            tx.commit().await.map_err(classify)?;
        }
        Ok(())
    }

    async fn apply(&self, changes: &[Change]) -> Result<(), ProviderError> {
        let mut g = self.writer().await?;
        let c = g
            .as_mut()
            .ok_or_else(|| ProviderError::Unavailable("no connection".into()))?;
        let tx = c.transaction().await.map_err(classify)?;
        for ch in changes {
            match ch {
                Change::Upsert {
                    sku,
                    region,
                    category,
                    stock,
                    price_cents,
                    attributes,
                } => {
                    let existing = tx
                        .query_opt("SELECT category FROM products WHERE sku = $1", &[sku])
                        .await
                        .map_err(classify)?;
                    if let Some(r) = existing {
                        let cat: String = r.get(0);
                        if &cat != category {
                            return Err(ProviderError::Invalid(format!(
                                "sku `{sku}` is in category `{cat}`; a product's category is immutable"
                            )));
                        }
                    }
                    tx.execute(
                        "INSERT INTO products (sku, category, attributes) VALUES ($1, $2, $3::text::jsonb)
                         ON CONFLICT (sku) DO UPDATE SET attributes = EXCLUDED.attributes
                         WHERE products.attributes IS DISTINCT FROM EXCLUDED.attributes",
                        &[sku, category, attributes],
                    )
                    .await
                    .map_err(classify)?;
                    tx.execute(
                        "INSERT INTO inventory (sku, region, category, stock, price_cents, deleted) VALUES ($1, $2, $3, $4, $5, false)
                         ON CONFLICT (sku, region) DO UPDATE SET stock = EXCLUDED.stock, price_cents = EXCLUDED.price_cents, deleted = false",
                        &[sku, region, category, stock, price_cents],
                    )
                    .await
                    .map_err(classify)?;
                }
                Change::Stock { sku, region, stock } => {
                    tx.execute(
                        "UPDATE inventory SET stock = $3 WHERE sku = $1 AND region = $2 AND NOT deleted",
                        &[sku, region, stock],
                    )
                    .await
                    .map_err(classify)?;
                }
                Change::StockDelta { sku, region, delta } => {
                    tx.execute(
                        "UPDATE inventory SET stock = GREATEST(0, stock + $3) WHERE sku = $1 AND region = $2 AND NOT deleted",
                        &[sku, region, delta],
                    )
                    .await
                    .map_err(classify)?;
                }
                Change::Price {
                    sku,
                    region,
                    price_cents,
                } => {
                    tx.execute(
                        "UPDATE inventory SET price_cents = $3 WHERE sku = $1 AND region = $2 AND NOT deleted",
                        &[sku, region, price_cents],
                    )
                    .await
                    .map_err(classify)?;
                }
                Change::Delete { sku, region } => {
                    tx.execute(
                        "DELETE FROM inventory WHERE sku = $1 AND region = $2 AND NOT deleted",
                        &[sku, region],
                    )
                    .await
                    .map_err(classify)?;
                }
            }
        }
        tx.commit().await.map_err(classify)
    }

    async fn bulk_load(&self, rows: &[LoadRow]) -> Result<(), ProviderError> {
        let mut g = self.writer().await?;
        let c = g
            .as_mut()
            .ok_or_else(|| ProviderError::Unavailable("no connection".into()))?;
        let tx = c.transaction().await.map_err(classify)?;
        tx.batch_execute(
            "CREATE TEMP TABLE load_stage (sku text, category text, attributes text, region text, stock bigint, price_cents bigint) ON COMMIT DROP",
        )
        .await
        .map_err(classify)?;
        {
            let sink = tx
                .copy_in("COPY load_stage FROM STDIN")
                .await
                .map_err(classify)?;
            futures::pin_mut!(sink);
            let mut buf = BytesMut::with_capacity(1 << 20);
            for r in rows {
                copy_escape(&mut buf, &r.sku);
                buf.put_u8(b'\t');
                copy_escape(&mut buf, &r.category);
                buf.put_u8(b'\t');
                copy_escape(&mut buf, &r.attributes);
                buf.put_u8(b'\t');
                copy_escape(&mut buf, &r.region);
                buf.put_slice(format!("\t{}\t{}\n", r.stock, r.price_cents).as_bytes());
                if buf.len() > (1 << 20) {
                    sink.send(buf.split().freeze()).await.map_err(classify)?;
                }
            }
            if !buf.is_empty() {
                sink.send(buf.split().freeze()).await.map_err(classify)?;
            }
            sink.as_mut().finish().await.map_err(classify)?;
        }
        tx.batch_execute(
            "INSERT INTO products (sku, category, attributes)
               SELECT DISTINCT ON (sku) sku, category, attributes::jsonb FROM load_stage ORDER BY sku
               ON CONFLICT (sku) DO NOTHING;
             INSERT INTO inventory (sku, region, category, stock, price_cents, deleted)
               SELECT sku, region, category, stock, price_cents, false FROM load_stage
               ON CONFLICT (sku, region) DO UPDATE SET stock = EXCLUDED.stock, price_cents = EXCLUDED.price_cents, deleted = false;",
        )
        .await
        .map_err(classify)?;
        tx.commit().await.map_err(classify)
    }

    async fn count(&self) -> Result<u64, ProviderError> {
        let conn = self.reader().await?;
        let r = conn
            .client
            .query_one("SELECT count(*) FROM inventory", &[])
            .await
            .map_err(classify)?;
        Ok(r.get::<_, i64>(0) as u64)
    }
}
