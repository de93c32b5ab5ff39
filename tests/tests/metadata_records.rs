//! The metadata store's per-shard and per-node records against a real
//! `redis-server`: a pass writes the records that changed and leaves the
//! others alone; after `forget` (a failed write, a new connection, a store
//! that lost the table) it writes them all again; a refusal by a newer
//! leader's epoch writes nothing.

use std::collections::HashMap;

use shardcast_forecaster::manager::metadata::{
    self, NodeRecord, Published, ShardRecord, StateWrite, Written,
};
use shardmap::contract::MetadataKeys;
use shardmap::AssignmentVersion;
use system::Redis;

fn shard(id: &str, replicas: &str) -> ShardRecord {
    ShardRecord {
        id: id.into(),
        content: format!("{{\"categories\":[\"{id}\"]}}"),
        replicas: replicas.into(),
        cursors: "{}".into(),
        observed_rps: 1.5,
        predicted_rps: 2.0,
        target: 2,
    }
}

fn node(name: &str, health: &'static str) -> NodeRecord {
    NodeRecord {
        name: name.into(),
        address: "127.0.0.1:1".into(),
        capacity: 100.0,
        zone: "z1".into(),
        health,
        drained: false,
        load_rps: 0.0,
    }
}

fn v(counter: u64) -> AssignmentVersion {
    AssignmentVersion { epoch: 3, counter }
}

async fn hash(conn: &mut metadata::Conn, key: &str) -> HashMap<String, String> {
    redis::cmd("HGETALL")
        .arg(key)
        .query_async(conn)
        .await
        .unwrap()
}

async fn pass(
    conn: &mut metadata::Conn,
    keys: &MetadataKeys,
    op: &[u8],
    shards: &[ShardRecord],
    nodes: &[NodeRecord],
    version: AssignmentVersion,
    written: &mut Written,
) -> StateWrite {
    metadata::write_changed_state(conn, keys, version, shards, nodes, op, written)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pass_writes_only_the_records_that_changed() {
    let redis = Redis::start();
    let mut conn = metadata::connect(&redis.url()).await.unwrap();
    let keys = MetadataKeys::new("t");
    let mut shards = vec![shard("a", "[]"), shard("b", "[]"), shard("c", "[]")];
    let mut nodes = vec![node("x", "up"), node("y", "up")];
    let mut written = Written::default();
    let op = b"{\"dry_run\":false}".to_vec();
    let w = pass(&mut conn, &keys, &op, &shards, &nodes, v(1), &mut written).await;
    assert_eq!(
        w,
        StateWrite {
            published: Published::Written,
            records: 5,
            operator: true
        }
    );
    let a = hash(&mut conn, &keys.shard("a")).await;
    assert_eq!(a["version"], r#"{"epoch":3,"counter":1}"#, "{a:?}");
    assert_eq!(a["replicas"], "[]");

    // A shard and a node change; a tampered field of an unchanged record
    // shows that record is not written again.
    let _: () = redis::cmd("HSET")
        .arg(keys.shard("a"))
        .arg("content")
        .arg("untouched")
        .query_async(&mut conn)
        .await
        .unwrap();
    shards[1].replicas = r#"[{"node":"x"}]"#.into();
    nodes[0].health = "down";
    let w = pass(&mut conn, &keys, &op, &shards, &nodes, v(2), &mut written).await;
    assert_eq!((w.records, w.operator), (2, false), "{w:?}");
    let (a, b) = (
        hash(&mut conn, &keys.shard("a")).await,
        hash(&mut conn, &keys.shard("b")).await,
    );
    assert_eq!(
        a["content"], "untouched",
        "an unchanged record is not written"
    );
    assert_eq!(a["version"], r#"{"epoch":3,"counter":1}"#);
    assert_eq!(b["replicas"], r#"[{"node":"x"}]"#);
    assert_eq!(
        b["version"], r#"{"epoch":3,"counter":2}"#,
        "the version it changed at"
    );
    assert_eq!(hash(&mut conn, &keys.node("x")).await["health"], "down");
    assert_eq!(hash(&mut conn, &keys.node("y")).await["health"], "up");

    // Nothing changed: nothing written.
    let w = pass(&mut conn, &keys, &op, &shards, &nodes, v(3), &mut written).await;
    assert_eq!((w.records, w.operator), (0, false), "{w:?}");

    // Forgotten (the store may have lost them): every record again.
    written.forget();
    let w = pass(&mut conn, &keys, &op, &shards, &nodes, v(4), &mut written).await;
    assert_eq!((w.records, w.operator), (5, true), "{w:?}");
    let a = hash(&mut conn, &keys.shard("a")).await;
    assert_eq!(a["content"], r#"{"categories":["a"]}"#);

    // A newer leader holds the store: refused, nothing written, and the
    // writer's memory of the store forgotten.
    let _: () = redis::cmd("SET")
        .arg(keys.epoch())
        .arg(4)
        .query_async(&mut conn)
        .await
        .unwrap();
    shards[2].target = 3;
    let w = pass(&mut conn, &keys, &op, &shards, &nodes, v(5), &mut written).await;
    assert!(matches!(w.published, Published::Fenced(_)), "{w:?}");
    assert_eq!(hash(&mut conn, &keys.shard("c")).await["target"], "2");
    assert!(written.is_empty());
}
