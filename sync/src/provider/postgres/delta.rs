//! Delta reads: the SQL of one (a range scan per cell, merged in version
//! order), the portal that streams it batch by batch, and rows decoded into
//! batches.

use futures::stream::BoxStream;
use futures::StreamExt;

use super::{classify, connect};
use crate::model::{Batch, Item, Row, ShardDef};
use crate::provider::{version_of, ProviderError};

pub(super) const SELECT_COLS: &str =
    "sku, region, category, stock, price_cents, attributes, version, deleted";

/// Rows read from `cursor` as a batch of at most `limit` (one more row read
/// says there are more).
pub(super) fn to_batch(
    shard: &str,
    rows: &[tokio_postgres::Row],
    cursor: u64,
    limit: usize,
) -> Batch {
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
pub(super) fn delta_sql(ncells: usize, limited: bool) -> String {
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
pub(super) async fn stream_delta(
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

pub(super) fn decode(r: &tokio_postgres::Row) -> Option<Row> {
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

/// A receiver as a stream.
pub(super) fn tokio_stream_of<T: Send + 'static>(
    rx: tokio::sync::mpsc::Receiver<T>,
) -> BoxStream<'static, T> {
    futures::stream::unfold(rx, |mut rx| async move {
        let v = rx.recv().await?;
        Some((v, rx))
    })
    .boxed()
}
