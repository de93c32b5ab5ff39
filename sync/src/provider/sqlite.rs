//! The embedded provider: the same schema and triggers as PostgreSQL, in
//! SQLite (rusqlite, bundled), so one command runs shardcast on a bare
//! machine. Every call runs on a blocking thread; SQLite serialises writers,
//! so versions are visible in order without an explicit lock.

use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use rusqlite::{params, params_from_iter, Connection, OptionalExtension};

use super::{version_of, Change, LoadRow, Provider, ProviderAdmin, ProviderError};
use crate::model::{Batch, Item, Row, ShardDef};

const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS provider_seq (id INTEGER PRIMARY KEY CHECK (id = 1), v INTEGER NOT NULL);
INSERT OR IGNORE INTO provider_seq VALUES (1, 0);
CREATE TABLE IF NOT EXISTS products (
  sku TEXT PRIMARY KEY,
  category TEXT NOT NULL,
  attributes TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS inventory (
  sku TEXT NOT NULL REFERENCES products(sku),
  region TEXT NOT NULL,
  category TEXT NOT NULL,
  stock INTEGER NOT NULL,
  price_cents INTEGER NOT NULL,
  version INTEGER NOT NULL DEFAULT 0,
  deleted INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (sku, region)
);
CREATE INDEX IF NOT EXISTS inventory_version ON inventory(version);
CREATE INDEX IF NOT EXISTS inventory_cell_version ON inventory(category, region, version);
CREATE TRIGGER IF NOT EXISTS inventory_stamp_ins AFTER INSERT ON inventory BEGIN
  UPDATE provider_seq SET v = v + 1 WHERE id = 1;
  UPDATE inventory SET version = (SELECT v FROM provider_seq WHERE id = 1) WHERE rowid = NEW.rowid;
END;
CREATE TRIGGER IF NOT EXISTS inventory_stamp_upd AFTER UPDATE OF stock, price_cents, deleted, category ON inventory BEGIN
  UPDATE provider_seq SET v = v + 1 WHERE id = 1;
  UPDATE inventory SET version = (SELECT v FROM provider_seq WHERE id = 1) WHERE rowid = NEW.rowid;
END;
CREATE TRIGGER IF NOT EXISTS inventory_tombstone BEFORE DELETE ON inventory BEGIN
  UPDATE inventory SET deleted = 1 WHERE rowid = OLD.rowid;
  SELECT RAISE(IGNORE);
END;
CREATE TRIGGER IF NOT EXISTS products_touch AFTER UPDATE OF attributes ON products BEGIN
  UPDATE inventory SET deleted = deleted WHERE sku = NEW.sku;
END;
CREATE TRIGGER IF NOT EXISTS products_category_fixed BEFORE UPDATE OF category ON products
WHEN NEW.category <> OLD.category BEGIN
  SELECT RAISE(ABORT, 'a product''s category is immutable');
END;
"#;

const SELECT_COLS: &str =
    "i.sku, i.region, i.category, i.stock, i.price_cents, p.attributes, i.version, i.deleted";

pub struct SqliteProvider {
    conn: Arc<Mutex<Connection>>,
}

fn qerr(e: rusqlite::Error) -> ProviderError {
    ProviderError::Query(format!("sqlite: {e}"))
}

impl SqliteProvider {
    /// Open (or create) the database at `path`; `:memory:` for a private
    /// in-memory one.
    pub fn open(path: &str) -> Result<SqliteProvider, ProviderError> {
        let conn = if path == ":memory:" {
            Connection::open_in_memory()
        } else {
            if let Some(dir) = Path::new(path).parent() {
                if !dir.as_os_str().is_empty() {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        ProviderError::Unavailable(format!(
                            "sqlite: cannot create {}: {e}",
                            dir.display()
                        ))
                    })?;
                }
            }
            Connection::open(path)
        }
        .map_err(|e| ProviderError::Unavailable(format!("sqlite {path}: {e}")))?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(qerr)?;
        // WAL lets the change generator write while the scheduler reads.
        let _: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))
            .map_err(qerr)?;
        conn.execute_batch("PRAGMA synchronous=NORMAL; PRAGMA foreign_keys=ON;")
            .map_err(qerr)?;
        Ok(SqliteProvider {
            conn: Arc::new(Mutex::new(conn)),
        })
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, ProviderError> + Send + 'static,
    ) -> Result<T, ProviderError> {
        let conn = self.conn.clone();
        tokio::task::spawn_blocking(move || f(&mut conn.lock()))
            .await
            .map_err(|e| ProviderError::Query(format!("sqlite worker: {e}")))?
    }
}

/// Decode one result row. `None` when even its key is unreadable.
fn decode(r: &rusqlite::Row<'_>) -> Option<Row> {
    let sku: String = r.get(0).ok()?;
    let region: String = r.get(1).ok()?;
    let category: String = r.get(2).ok()?;
    let version = version_of(r.get::<_, i64>(6).ok()?)?;
    let deleted: i64 = r.get(7).unwrap_or(0);
    let item = if deleted != 0 {
        None
    } else {
        // An unreadable value still yields the row, with attributes that
        // fail validation, so the cache drops its copy and counts it.
        match (
            r.get::<_, i64>(3),
            r.get::<_, i64>(4),
            r.get::<_, String>(5),
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

fn apply_one(tx: &rusqlite::Transaction<'_>, c: &Change) -> Result<(), ProviderError> {
    match c {
        Change::Upsert {
            sku,
            region,
            category,
            stock,
            price_cents,
            attributes,
        } => {
            let existing: Option<String> = tx
                .query_row("SELECT category FROM products WHERE sku = ?1", [sku], |r| {
                    r.get(0)
                })
                .optional()
                .map_err(qerr)?;
            match existing {
                Some(cat) if &cat != category => {
                    return Err(ProviderError::Invalid(format!(
                        "sku `{sku}` is in category `{cat}`; a product's category is immutable"
                    )))
                }
                Some(_) => {
                    tx.execute(
                        "UPDATE products SET attributes = ?2 WHERE sku = ?1 AND attributes <> ?2",
                        params![sku, attributes],
                    )
                    .map_err(qerr)?;
                }
                None => {
                    tx.execute(
                        "INSERT INTO products (sku, category, attributes) VALUES (?1, ?2, ?3)",
                        params![sku, category, attributes],
                    )
                    .map_err(qerr)?;
                }
            }
            tx.execute(
                "INSERT INTO inventory (sku, region, category, stock, price_cents, deleted) VALUES (?1, ?2, ?3, ?4, ?5, 0)
                 ON CONFLICT (sku, region) DO UPDATE SET stock = excluded.stock, price_cents = excluded.price_cents, deleted = 0",
                params![sku, region, category, stock, price_cents],
            )
            .map_err(qerr)?;
        }
        Change::Stock { sku, region, stock } => {
            tx.execute(
                "UPDATE inventory SET stock = ?3 WHERE sku = ?1 AND region = ?2 AND deleted = 0",
                params![sku, region, stock],
            )
            .map_err(qerr)?;
        }
        Change::StockDelta { sku, region, delta } => {
            tx.execute(
                "UPDATE inventory SET stock = max(0, stock + ?3) WHERE sku = ?1 AND region = ?2 AND deleted = 0",
                params![sku, region, delta],
            )
            .map_err(qerr)?;
        }
        Change::Price {
            sku,
            region,
            price_cents,
        } => {
            tx.execute(
                "UPDATE inventory SET price_cents = ?3 WHERE sku = ?1 AND region = ?2 AND deleted = 0",
                params![sku, region, price_cents],
            )
            .map_err(qerr)?;
        }
        Change::Delete { sku, region } => {
            tx.execute(
                "DELETE FROM inventory WHERE sku = ?1 AND region = ?2 AND deleted = 0",
                params![sku, region],
            )
            .map_err(qerr)?;
        }
    }
    Ok(())
}

#[async_trait]
impl Provider for SqliteProvider {
    async fn delta(
        &self,
        shard: &ShardDef,
        cursor: u64,
        limit: usize,
    ) -> Result<Batch, ProviderError> {
        let cells = shard.cells.clone();
        let limit = limit.max(1);
        self.with(move |c| {
            let cursor_i = i64::try_from(cursor).map_err(|_| ProviderError::Invalid("cursor too large".into()))?;
            let values = vec!["(?,?)"; cells.len()].join(",");
            // The plain IN lists let SQLite seek the (category, region,
            // version) index per cell; the row-value IN alone makes it walk
            // the version index over every shard's rows (a shard's first
            // copy then reads the whole provider).
            let mut cats: Vec<&String> = cells.iter().map(|(c, _)| c).collect();
            let mut regs: Vec<&String> = cells.iter().map(|(_, r)| r).collect();
            cats.sort_unstable();
            cats.dedup();
            regs.sort_unstable();
            regs.dedup();
            let sql = format!(
                "SELECT {SELECT_COLS} FROM inventory i JOIN products p ON p.sku = i.sku
                 WHERE i.version > ?1 AND (?1 > 0 OR i.deleted = 0)
                   AND i.category IN ({}) AND i.region IN ({})
                   AND (i.category, i.region) IN (VALUES {values})
                 ORDER BY i.version LIMIT ?2",
                vec!["?"; cats.len()].join(","),
                vec!["?"; regs.len()].join(","),
            );
            // Positional parameters after ?1/?2 are numbered from 3.
            let sql = renumber(&sql, 3);
            let mut stmt = c.prepare_cached(&sql).map_err(qerr)?;
            let mut args: Vec<rusqlite::types::Value> = vec![cursor_i.into(), (limit as i64 + 1).into()];
            args.extend(cats.iter().map(|c| (*c).clone().into()));
            args.extend(regs.iter().map(|r| (*r).clone().into()));
            for (cat, reg) in &cells {
                args.push(cat.clone().into());
                args.push(reg.clone().into());
            }
            let mut rows = stmt.query(params_from_iter(args)).map_err(qerr)?;
            let mut b = Batch {
                from: cursor,
                to: cursor,
                ..Batch::default()
            };
            while let Some(r) = rows.next().map_err(qerr)? {
                if b.rows.len() + b.malformed as usize == limit {
                    b.more = true;
                    break;
                }
                let v = r.get::<_, i64>(6).ok().and_then(version_of);
                match decode(r) {
                    Some(row) => {
                        b.to = row.version;
                        b.rows.push(row);
                    }
                    None => {
                        b.malformed += 1;
                        if let Some(v) = v {
                            b.to = b.to.max(v);
                        }
                        tracing::warn!(shard = %shard_id_hint(&cells), "provider row unreadable; skipped and counted");
                    }
                }
            }
            Ok(b)
        })
        .await
    }

    async fn get(&self, sku: &str, region: &str) -> Result<Option<Row>, ProviderError> {
        let (sku, region) = (sku.to_string(), region.to_string());
        self.with(move |c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "SELECT {SELECT_COLS} FROM inventory i JOIN products p ON p.sku = i.sku WHERE i.sku = ?1 AND i.region = ?2"
                ))
                .map_err(qerr)?;
            let mut rows = stmt.query(params![sku, region]).map_err(qerr)?;
            match rows.next().map_err(qerr)? {
                Some(r) => Ok(decode(r)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn catalog(&self) -> Result<Vec<(String, String)>, ProviderError> {
        self.with(|c| {
            let mut stmt = c
                .prepare("SELECT sku, category FROM products")
                .map_err(qerr)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
                .map_err(qerr)?;
            Ok(rows.filter_map(Result::ok).collect())
        })
        .await
    }

    async fn head(&self) -> Result<u64, ProviderError> {
        self.with(|c| {
            let v: i64 = c
                .query_row("SELECT v FROM provider_seq WHERE id = 1", [], |r| r.get(0))
                .map_err(qerr)?;
            Ok(version_of(v).unwrap_or(0))
        })
        .await
    }

    fn kind(&self) -> &'static str {
        "sqlite"
    }
}

fn shard_id_hint(cells: &[(String, String)]) -> String {
    cells
        .first()
        .map(|(c, r)| format!("{r}/{c}…"))
        .unwrap_or_default()
}

/// Rewrite bare `?` placeholders to `?N` numbered from `start`.
fn renumber(sql: &str, start: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut n = start;
    let b = sql.as_bytes();
    for (i, ch) in sql.char_indices() {
        if ch == '?' && !b.get(i + 1).is_some_and(u8::is_ascii_digit) {
            out.push_str(&format!("?{n}"));
            n += 1;
        } else {
            out.push(ch);
        }
    }
    out
}

#[async_trait]
impl ProviderAdmin for SqliteProvider {
    async fn migrate(&self) -> Result<(), ProviderError> {
        self.with(|c| c.execute_batch(SCHEMA).map_err(qerr)).await
    }

    async fn apply(&self, changes: &[Change]) -> Result<(), ProviderError> {
        let changes = changes.to_vec();
        self.with(move |c| {
            let tx = c.transaction().map_err(qerr)?;
            for ch in &changes {
                apply_one(&tx, ch)?;
            }
            tx.commit().map_err(qerr)
        })
        .await
    }

    async fn bulk_load(&self, rows: &[LoadRow]) -> Result<(), ProviderError> {
        let rows = rows.to_vec();
        self.with(move |c| {
            let tx = c.transaction().map_err(qerr)?;
            {
                let mut prod = tx
                    .prepare_cached("INSERT OR IGNORE INTO products (sku, category, attributes) VALUES (?1, ?2, ?3)")
                    .map_err(qerr)?;
                let mut inv = tx
                    .prepare_cached(
                        "INSERT INTO inventory (sku, region, category, stock, price_cents, deleted) VALUES (?1, ?2, ?3, ?4, ?5, 0)
                         ON CONFLICT (sku, region) DO UPDATE SET stock = excluded.stock, price_cents = excluded.price_cents, deleted = 0",
                    )
                    .map_err(qerr)?;
                for r in &rows {
                    prod.execute(params![r.sku, r.category, r.attributes]).map_err(qerr)?;
                    inv.execute(params![r.sku, r.region, r.category, r.stock, r.price_cents])
                        .map_err(qerr)?;
                }
            }
            tx.commit().map_err(qerr)
        })
        .await
    }

    async fn count(&self) -> Result<u64, ProviderError> {
        self.with(|c| {
            let n: i64 = c
                .query_row("SELECT count(*) FROM inventory", [], |r| r.get(0))
                .map_err(qerr)?;
            Ok(n as u64)
        })
        .await
    }
}

impl SqliteProvider {
    /// Write a raw attributes value, bypassing validation (tests of the
    /// malformed-row path use it to plant bad data).
    pub async fn plant_attributes(&self, sku: &str, raw: Vec<u8>) -> Result<(), ProviderError> {
        let sku = sku.to_string();
        self.with(move |c| {
            c.execute(
                "UPDATE products SET attributes = ?2 WHERE sku = ?1",
                params![sku, raw],
            )
            .map_err(qerr)?;
            Ok(())
        })
        .await
    }
}
