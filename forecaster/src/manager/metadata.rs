//! The metadata store (Redis): what the manager publishes for proxies and
//! operators, under one prefix (the proxy config's `[control] prefix`).
//!
//! | key | type | what |
//! |---|---|---|
//! | `<prefix>:table` | string | a snapshot: a full [`shardmap::TableUpdate`] (JSON) at `version` or a little older |
//! | `<prefix>:table:log` | list | the last [`LOG_LEN`] deltas (JSON, `base` set), oldest first, ending at `version` |
//! | `<prefix>:table:head` | hash | `snapshot` (the snapshot's version), `since` (deltas after it), `writer` (the manager's id) |
//! | `<prefix>:table:changed` | channel | the new version, published after each write of `:table` |
//! | `<prefix>:version` | string | the table's assignment version, JSON: `{"epoch": 1, "counter": 42}` |
//! | `<prefix>:shard:<id>` | hash | `content`, `replicas`, `cursors`, `version` (JSON: the table version at which the record last changed), `observed_rps`, `predicted_rps`, `target` |
//! | `<prefix>:node:<name>` | hash | `address`, `capacity`, `zone`, `health`, `drained`, `load_rps` |
//!
//! A pass writes only the records that changed since the writer's last
//! pass ([`Written`]); after a failed write, a new connection or a store
//! that lost the table, it writes them all again.
//! | `<prefix>:operator` | string | operator settings (JSON): dry run, pins, drained nodes, thresholds |
//!
//! | `<prefix>:leader`, `<prefix>:epoch` | string, integer | the leadership lease and the last epoch taken ([`super::lease`]) |
//!
//! The table and its version are written, and the version published, by
//! one script that refuses a writer of a lower epoch than the store's (the
//! fencing token, DESIGN.md "Managers"), so a proxy that reads after the
//! message always sees that version or a newer one.
//!
//! Deltas only: a new version appends its delta to the log; the full table
//! (~1 MB at 10k shards) is written only every [`SNAPSHOT_EVERY`] versions,
//! at the first write of a term, and when the log does not lead from the
//! stored version to the new one (no delta, a store that lost it). The
//! log is longer than the snapshot interval, so the snapshot plus the
//! log's deltas after it always make the current table; a reader at a
//! version the log has as a base reads only the deltas from there.
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

/// A snapshot every this many versions (and at each new term).
pub const SNAPSHOT_EVERY: u32 = 64;
/// Deltas kept in the log: more than [`SNAPSHOT_EVERY`], so the log always
/// leads from the snapshot to the current version.
pub const LOG_LEN: u32 = 128;

/// How often a snapshot is written and how many deltas are kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub snapshot_every: u32,
    pub log_len: u32,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            snapshot_every: SNAPSHOT_EVERY,
            log_len: LOG_LEN,
        }
    }
}

/// The stored version and who wrote it: what a publish pass compares with,
/// without reading the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub version: AssignmentVersion,
    /// The writing manager's id ([`super::lease::Lease::id`]); `None` from a
    /// writer that does not say.
    pub writer: Option<String>,
}

/// The stored version and its writer, if the store holds a table.
pub async fn read_head(conn: &mut Conn, keys: &MetadataKeys) -> Result<Option<Head>, String> {
    let (version, writer): (Option<Vec<u8>>, Option<String>) = redis::pipe()
        .cmd("GET")
        .arg(keys.version())
        .cmd("HGET")
        .arg(keys.table_head())
        .arg("writer")
        .query_async(conn)
        .await
        .map_err(|e| e.to_string())?;
    let Some(v) = version else { return Ok(None) };
    let version = serde_json::from_slice(&v)
        .map_err(|e| format!("{} is not a version: {e}", keys.version()))?;
    Ok(Some(Head {
        version,
        writer: writer.filter(|w| !w.is_empty()),
    }))
}

/// The current table: the snapshot with the log's deltas after it.
pub async fn read_table(
    conn: &mut Conn,
    keys: &MetadataKeys,
) -> Result<Option<TableUpdate>, String> {
    let key = keys.table();
    let (raw, log): (Option<Vec<u8>>, Vec<Vec<u8>>) = redis::pipe()
        .cmd("GET")
        .arg(&key)
        .cmd("LRANGE")
        .arg(keys.table_log())
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await
        .map_err(|e| e.to_string())?;
    let Some(raw) = raw else { return Ok(None) };
    let mut table: TableUpdate =
        serde_json::from_slice(&raw).map_err(|e| format!("{key} is not a table update: {e}"))?;
    for d in shardmap::contract::keys::log_chain(&log, table.version) {
        match table.then(&d) {
            Some(t) => table = t,
            None => break,
        }
    }
    Ok(Some(table))
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

/// Write a new version and announce it, in one script, fenced: refused
/// when the stored version's epoch, or the last epoch a leader took
/// (`<prefix>:epoch`), is above the writer's, so a stale leader waking up
/// cannot overwrite a newer leader's table.
///
/// KEYS: table (snapshot), version, channel, epoch, log, head. ARGV: the
/// full table or '', the version, the epoch, the delta or '', the delta's
/// base or '', snapshot interval, log length, the writer's id.
/// The delta is appended to the log; the full table is written only when
/// due (no delta, the delta's base is not the stored version, no snapshot,
/// a snapshot of another epoch, or `snapshot_every` versions since the
/// last): then, without it, `{2, why}` asks for it.
/// Returns `{1, 'delta'|'snapshot'}` when written, `{0, what}` when fenced.
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
local why = nil
if ARGV[4] == '' then
  why = 'no delta'
elseif cur ~= ARGV[5] then
  why = 'the delta is not from the stored version'
elseif redis.call('EXISTS', KEYS[1]) == 0 then
  why = 'no snapshot'
else
  local sv = redis.call('HGET', KEYS[6], 'snapshot')
  local ok, v = pcall(cjson.decode, sv or '')
  if not ok or type(v) ~= 'table' or tonumber(v.epoch) ~= e then
    why = 'a new term'
  elseif tonumber(redis.call('HGET', KEYS[6], 'since') or '0') + 1 >= tonumber(ARGV[6]) then
    why = 'the snapshot interval'
  end
end
if why and ARGV[1] == '' then
  return {2, why}
end
if ARGV[4] == '' then
  redis.call('DEL', KEYS[5])
else
  redis.call('RPUSH', KEYS[5], ARGV[4])
  redis.call('LTRIM', KEYS[5], -tonumber(ARGV[7]), -1)
end
if why then
  redis.call('SET', KEYS[1], ARGV[1])
  redis.call('HSET', KEYS[6], 'snapshot', ARGV[2], 'since', 0)
else
  redis.call('HINCRBY', KEYS[6], 'since', 1)
end
redis.call('HSET', KEYS[6], 'writer', ARGV[8])
redis.call('SET', KEYS[2], ARGV[2])
redis.call('PUBLISH', KEYS[3], ARGV[2])
if why then
  return {1, 'snapshot'}
end
return {1, 'delta'}
";

/// What [`publish_table`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Published {
    Written,
    /// Refused by fencing: a higher epoch leads (why, for the log).
    Fenced(String),
}

/// A delta to publish: its body (JSON) and its base.
#[derive(Debug, Clone, Copy)]
pub struct Delta<'a> {
    pub base: AssignmentVersion,
    pub body: &'a [u8],
}

/// Publish a new version (its delta from the version before, when there
/// is one; the full table when due, see [`PUBLISH`]) and announce it,
/// fenced by the update's epoch; `writer` is the manager's id.
/// The table at `version` is serialised by `full`, called only when the
/// full table is written (no delta, or the store asks for it).
pub async fn publish_table(
    conn: &mut Conn,
    keys: &MetadataKeys,
    version: AssignmentVersion,
    full: &(dyn Fn() -> Result<Vec<u8>, String> + Sync),
    delta: Option<Delta<'_>>,
    writer: &str,
) -> Result<Published, String> {
    publish_table_of(conn, keys, version, full, delta, writer, Policy::default())
        .await
        .map(|(p, _)| p)
}

/// [`publish_table`] with a snapshot policy; also says whether the full
/// table was written.
pub async fn publish_table_with(
    conn: &mut Conn,
    keys: &MetadataKeys,
    update: &TableUpdate,
    delta: Option<Delta<'_>>,
    writer: &str,
    policy: Policy,
) -> Result<(Published, bool), String> {
    let full = || serde_json::to_vec(update).map_err(|e| e.to_string());
    publish_table_of(conn, keys, update.version, &full, delta, writer, policy).await
}

async fn publish_table_of(
    conn: &mut Conn,
    keys: &MetadataKeys,
    at: AssignmentVersion,
    full_of: &(dyn Fn() -> Result<Vec<u8>, String> + Sync),
    delta: Option<Delta<'_>>,
    writer: &str,
    policy: Policy,
) -> Result<(Published, bool), String> {
    let version = serde_json::to_string(&at).map_err(|e| e.to_string())?;
    let base = match delta {
        Some(d) => serde_json::to_string(&d.base).map_err(|e| e.to_string())?,
        None => String::new(),
    };
    let script = redis::Script::new(PUBLISH);
    let mut full: Vec<u8> = vec![];
    loop {
        if delta.is_none() && full.is_empty() {
            full = full_of()?;
        }
        let (code, why): (i64, String) = script
            .key(keys.table())
            .key(keys.version())
            .key(keys.table_changed())
            .key(keys.epoch())
            .key(keys.table_log())
            .key(keys.table_head())
            .arg(&full)
            .arg(&version)
            .arg(at.epoch)
            .arg(delta.map_or(&[][..], |d| d.body))
            .arg(&base)
            .arg(policy.snapshot_every.max(1))
            .arg(policy.log_len.max(policy.snapshot_every).max(1))
            .arg(writer)
            .invoke_async(conn)
            .await
            .map_err(|e| e.to_string())?;
        match code {
            1 => {
                // Proxies may act on it already: on a cluster, not done
                // until a replica holds it, so a failover cannot take it
                // back. Refused here, the next pass finds the store
                // without it (if lost) and writes again.
                conn.wait_replicated(&keys.table()).await?;
                return Ok((Published::Written, why == "snapshot"));
            }
            2 if full.is_empty() => {
                full = full_of()?;
            }
            2 => return Err(format!("the store asked for the full table twice ({why})")),
            _ => return Ok((Published::Fenced(why), false)),
        }
    }
}

/// The records' write, fenced like [`PUBLISH`]: KEYS[1] is the epoch
/// counter, KEYS[2] the operator settings, then one hash per record;
/// ARGV[1] the writer's epoch, ARGV[2] a JSON list of each hash's
/// field/value strings (in KEYS order), ARGV[3] the operator settings
/// (empty: unchanged, not written).
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
if ARGV[3] ~= '' then
  redis.call('SET', KEYS[2], ARGV[3])
end
return 1
";

/// What one writer last wrote of each record (a hash of its fields, the
/// version aside), so that a pass writes only the records that changed:
/// at 10k shards most records are the same from one pass to the next.
/// Forget it ([`Written::forget`]) whenever the store may not hold what it
/// says: a failed write, a new connection, a store that lost the table.
#[derive(Debug, Default)]
pub struct Written {
    /// The epoch the hashes were written in (another term writes whole).
    epoch: Option<u64>,
    records: std::collections::HashMap<String, u64>,
    operator: Option<u64>,
}

impl Written {
    pub fn forget(&mut self) {
        *self = Written::default();
    }

    /// Records the store holds as this writer wrote them.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

fn hash_of<T: std::hash::Hash + ?Sized>(v: &T) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(v)
}

/// What a records write came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateWrite {
    pub published: Published,
    /// Records written in this pass (the others were unchanged).
    pub records: usize,
    pub operator: bool,
}

/// Refresh the per-shard and per-node records and the operator settings,
/// all or nothing and fenced by `version`'s epoch: a paused leader that
/// wakes up cannot overwrite a newer leader's records. Every record is
/// written; [`write_changed_state`] writes only what changed.
pub async fn write_state(
    conn: &mut Conn,
    keys: &MetadataKeys,
    version: AssignmentVersion,
    shards: &[ShardRecord],
    nodes: &[NodeRecord],
    operator: &[u8],
) -> Result<Published, String> {
    let mut fresh = Written::default();
    write_changed_state(conn, keys, version, shards, nodes, operator, &mut fresh)
        .await
        .map(|w| w.published)
}

/// As [`write_state`], but only the records (and operator settings) that
/// differ from what `written` says this writer last wrote; a record's
/// `version` is the table version at which it last changed. Nothing
/// changed: no call at all. `written` is brought up to date on success and
/// forgotten on a failure or a refusal.
pub async fn write_changed_state(
    conn: &mut Conn,
    keys: &MetadataKeys,
    version: AssignmentVersion,
    shards: &[ShardRecord],
    nodes: &[NodeRecord],
    operator: &[u8],
    written: &mut Written,
) -> Result<StateWrite, String> {
    if written.epoch != Some(version.epoch) {
        written.forget();
    }
    let v = serde_json::to_string(&version).map_err(|e| e.to_string())?;
    let fenced_write = redis::Script::new(WRITE_STATE);
    let mut script = fenced_write.prepare_invoke();
    script.key(keys.epoch()).key(keys.operator());
    let mut records: Vec<Vec<&str>> = Vec::new();
    let mut hashes: Vec<(String, u64)> = Vec::new();
    let mut numbers: Vec<[String; 4]> = Vec::with_capacity(shards.len() + nodes.len());
    // The numbers' text first: the records below borrow it.
    for s in shards {
        numbers.push([
            s.observed_rps.to_string(),
            s.predicted_rps.to_string(),
            s.target.to_string(),
            String::new(),
        ]);
    }
    for n in nodes {
        numbers.push([
            n.capacity.to_string(),
            u8::from(n.drained).to_string(),
            n.load_rps.to_string(),
            String::new(),
        ]);
    }
    let mut candidates: Vec<(String, Vec<&str>, bool)> =
        Vec::with_capacity(shards.len() + nodes.len());
    for (s, num) in shards.iter().zip(&numbers) {
        let fields = [
            "content",
            s.content.as_str(),
            "replicas",
            s.replicas.as_str(),
            "cursors",
            s.cursors.as_str(),
            "observed_rps",
            num[0].as_str(),
            "predicted_rps",
            num[1].as_str(),
            "target",
            num[2].as_str(),
        ];
        // A shard record carries the version it last changed at.
        candidates.push((keys.shard(&s.id), fields.to_vec(), true));
    }
    for (n, num) in nodes.iter().zip(&numbers[shards.len()..]) {
        let fields = [
            "address",
            n.address.as_str(),
            "capacity",
            num[0].as_str(),
            "zone",
            n.zone.as_str(),
            "health",
            n.health,
            "drained",
            num[1].as_str(),
            "load_rps",
            num[2].as_str(),
        ];
        candidates.push((keys.node(&n.name), fields.to_vec(), false));
    }
    // Only the records whose fields changed since this manager wrote them.
    for (key, mut fields, versioned) in candidates {
        let h = hash_of(&fields[..]);
        if written.records.get(&key) == Some(&h) {
            continue;
        }
        if versioned {
            fields.extend(["version", v.as_str()]);
        }
        script.key(&key);
        records.push(fields);
        hashes.push((key, h));
    }
    let op_hash = hash_of(operator);
    let op_changed = written.operator != Some(op_hash);
    if records.is_empty() && !op_changed {
        return Ok(StateWrite {
            published: Published::Written,
            records: 0,
            operator: false,
        });
    }
    let body = serde_json::to_string(&records).map_err(|e| e.to_string())?;
    let op_arg: &[u8] = if op_changed { operator } else { &[] };
    script.arg(version.epoch).arg(body).arg(op_arg);
    let res: Result<i64, String> = script.invoke_async(conn).await.map_err(|e| e.to_string());
    match res {
        Ok(1) => {
            let n = hashes.len();
            written.epoch = Some(version.epoch);
            written.records.extend(hashes);
            if op_changed {
                written.operator = Some(op_hash);
            }
            Ok(StateWrite {
                published: Published::Written,
                records: n,
                operator: op_changed,
            })
        }
        Ok(_) => {
            written.forget();
            Ok(StateWrite {
                published: Published::Fenced(format!(
                    "records of epoch {} refused: a newer leader holds the store",
                    version.epoch
                )),
                records: 0,
                operator: false,
            })
        }
        Err(e) => {
            written.forget();
            Err(e)
        }
    }
}
