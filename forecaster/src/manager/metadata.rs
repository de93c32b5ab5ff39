//! The metadata store (Redis): what the manager publishes for proxies and
//! operators, under one prefix (the proxy config's `[control] prefix`).
//!
//! | key | type | what |
//! |---|---|---|
//! | `<prefix>:table` | string | the current [`shardmap::TableUpdate`] (JSON, the full table); proxies follow it |
//! | `<prefix>:table:delta` | string | the delta from the table before it (JSON, `base` set), when there is one; proxies at `base` read only this |
//! | `<prefix>:table:changed` | channel | the new version, published after each write of `:table` |
//! | `<prefix>:version` | string | the table's assignment version, JSON: `{"epoch": 1, "counter": 42}` |
//! | `<prefix>:shard:<id>` | hash | `content`, `replicas`, `cursors`, `version` (JSON), `observed_rps`, `predicted_rps`, `target` |
//! | `<prefix>:node:<name>` | hash | `address`, `capacity`, `zone`, `health`, `drained`, `load_rps` |
//! | `<prefix>:operator` | string | operator settings (JSON): dry run, pins, drained nodes, thresholds |
//!
//! | `<prefix>:leader`, `<prefix>:epoch` | string, integer | the leadership lease and the last epoch taken ([`super::lease`]) |
//!
//! The table and its version are written, and the version published, by
//! one script that refuses a writer of a lower epoch than the store's (the
//! fencing token, DESIGN.md "Managers"), so a proxy that reads after the
//! message always sees that version or a newer one.
//!
//! On a Redis Cluster (`redis+cluster://…`) every key is under the
//! prefix's hash tag, so the scripts run in one slot; after a table write
//! the manager `WAIT`s for `wait_replicas` replicas (the URL's option) of
//! that slot's master.

use shardmap::contract::manager::OperatorView;
use shardmap::contract::MetadataKeys;
use shardmap::{AssignmentVersion, TableUpdate};

/// One Redis or a cluster (`redis+cluster://…`): the scripts below run on
/// either, since on a cluster every key shares the prefix's hash tag
/// ([`MetadataKeys::for_url`]).
pub use shardmap::contract::store::Conn;

pub struct ShardRecord {
    pub id: String,
    pub content: String,
    pub replicas: String,
    pub cursors: String,
    pub observed_rps: f64,
    pub predicted_rps: f64,
    pub target: usize,
}

pub struct NodeRecord {
    pub name: String,
    pub address: String,
    pub capacity: f64,
    pub zone: String,
    pub health: &'static str,
    pub drained: bool,
    pub load_rps: f64,
}

pub async fn connect(url: &str) -> Result<Conn, String> {
    shardmap::contract::store::connect(url).await
}

/// The table the store holds, if any.
pub async fn read_table(
    conn: &mut Conn,
    keys: &MetadataKeys,
) -> Result<Option<TableUpdate>, String> {
    let key = keys.table();
    let raw: Option<Vec<u8>> = redis::cmd("GET")
        .arg(&key)
        .query_async(conn)
        .await
        .map_err(|e| e.to_string())?;
    match raw {
        None => Ok(None),
        Some(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("{key} is not a table update: {e}")),
    }
}

/// The operator settings the store holds, if any.
pub async fn read_operator(
    conn: &mut Conn,
    keys: &MetadataKeys,
) -> Result<Option<OperatorView>, String> {
    let key = keys.operator();
    let raw: Option<Vec<u8>> = redis::cmd("GET")
        .arg(&key)
        .query_async(conn)
        .await
        .map_err(|e| e.to_string())?;
    match raw {
        None => Ok(None),
        Some(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| format!("{key} is not operator settings: {e}")),
    }
}

/// Write `<prefix>:table` and `<prefix>:version` and announce the version,
/// in one script, fenced: refused when the stored version's epoch, or the
/// last epoch a leader took (`<prefix>:epoch`), is above the writer's, so a
/// stale leader waking up cannot overwrite a newer leader's table.
/// Returns `{1, ""}` when written, `{0, what}` when fenced.
const PUBLISH: &str = r"
local e = tonumber(ARGV[3])
local cur = redis.call('GET', KEYS[2])
if cur then
  local ok, v = pcall(cjson.decode, cur)
  if ok and type(v) == 'table' and tonumber(v.epoch) and tonumber(v.epoch) > e then
    return {0, 'the store holds table version ' .. cur}
  end
end
local led = tonumber(redis.call('GET', KEYS[4]) or '0')
if led and led > e then
  return {0, 'epoch ' .. led .. ' was taken by a newer leader'}
end
redis.call('SET', KEYS[1], ARGV[1])
if ARGV[4] == '' then
  redis.call('DEL', KEYS[5])
else
  redis.call('SET', KEYS[5], ARGV[4])
end
redis.call('SET', KEYS[2], ARGV[2])
redis.call('PUBLISH', KEYS[3], ARGV[2])
return {1, ''}
";

/// What [`publish_table`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    Written,
    /// Refused by fencing: a higher epoch leads (why, for the log).
    Fenced(String),
}

/// Write a new table (and the delta from the table before it, when there
/// is one; else the stored delta is dropped) and announce it, fenced by the
/// update's epoch.
pub async fn publish_table(
    conn: &mut Conn,
    keys: &MetadataKeys,
    update: &TableUpdate,
    delta: Option<&[u8]>,
) -> Result<Published, String> {
    let json = serde_json::to_vec(update).map_err(|e| e.to_string())?;
    let version = serde_json::to_string(&update.version).map_err(|e| e.to_string())?;
    let (written, why): (i64, String) = redis::Script::new(PUBLISH)
        .key(keys.table())
        .key(keys.version())
        .key(keys.table_changed())
        .key(keys.epoch())
        .key(keys.table_delta())
        .arg(json)
        .arg(&version)
        .arg(update.version.epoch)
        .arg(delta.unwrap_or_default())
        .invoke_async(conn)
        .await
        .map_err(|e| e.to_string())?;
    if written != 1 {
        return Ok(Published::Fenced(why));
    }
    // Proxies may act on it already: on a cluster, not done until a
    // replica holds it, so a failover cannot take it back. Refused here,
    // the next pass finds the store without it (if lost) and writes again.
    conn.wait_replicated(&keys.table()).await?;
    Ok(Published::Written)
}

/// The records' write, fenced like [`PUBLISH`]: KEYS[1] is the epoch
/// counter, KEYS[2] the operator settings, then one hash per record;
/// ARGV[1] the writer's epoch, ARGV[2] a JSON list of each hash's
/// field/value strings (in KEYS order), ARGV[3] the operator settings.
/// Returns 1 when written, 0 when a newer leader holds the store.
const WRITE_STATE: &str = r"
local e = tonumber(ARGV[1])
local led = tonumber(redis.call('GET', KEYS[1]) or '0')
if led and led > e then
  return 0
end
local records = cjson.decode(ARGV[2])
for i, fields in ipairs(records) do
  redis.call('HSET', KEYS[i + 2], unpack(fields))
end
redis.call('SET', KEYS[2], ARGV[3])
return 1
";

/// Refresh the per-shard and per-node records and the operator settings,
/// all or nothing and fenced by `version`'s epoch: a paused leader that
/// wakes up cannot overwrite a newer leader's records.
pub async fn write_state(
    conn: &mut Conn,
    keys: &MetadataKeys,
    version: AssignmentVersion,
    shards: &[ShardRecord],
    nodes: &[NodeRecord],
    operator: &[u8],
) -> Result<Published, String> {
    let v = serde_json::to_string(&version).map_err(|e| e.to_string())?;
    let fenced_write = redis::Script::new(WRITE_STATE);
    let mut script = fenced_write.prepare_invoke();
    script.key(keys.epoch()).key(keys.operator());
    let mut records: Vec<Vec<String>> = Vec::with_capacity(shards.len() + nodes.len());
    for s in shards {
        script.key(keys.shard(&s.id));
        records.push(vec![
            "content".into(),
            s.content.clone(),
            "replicas".into(),
            s.replicas.clone(),
            "cursors".into(),
            s.cursors.clone(),
            "observed_rps".into(),
            s.observed_rps.to_string(),
            "predicted_rps".into(),
            s.predicted_rps.to_string(),
            "target".into(),
            s.target.to_string(),
            "version".into(),
            v.clone(),
        ]);
    }
    for n in nodes {
        script.key(keys.node(&n.name));
        records.push(vec![
            "address".into(),
            n.address.clone(),
            "capacity".into(),
            n.capacity.to_string(),
            "zone".into(),
            n.zone.clone(),
            "health".into(),
            n.health.to_string(),
            "drained".into(),
            u8::from(n.drained).to_string(),
            "load_rps".into(),
            n.load_rps.to_string(),
        ]);
    }
    let records = serde_json::to_string(&records).map_err(|e| e.to_string())?;
    script.arg(version.epoch).arg(records).arg(operator);
    let written: i64 = script.invoke_async(conn).await.map_err(|e| e.to_string())?;
    Ok(if written == 1 {
        Published::Written
    } else {
        Published::Fenced(format!(
            "records of epoch {} refused: a newer leader holds the store",
            version.epoch
        ))
    })
}
