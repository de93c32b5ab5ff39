//! Writes: schema migrations, change batches and bulk loads, on the write
//! connection.

use async_trait::async_trait;
use bytes::{BufMut, BytesMut};
use futures::SinkExt;

use super::{classify, PgProvider};
use crate::provider::{Change, LoadRow, ProviderAdmin, ProviderError};

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
