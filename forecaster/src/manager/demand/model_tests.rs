//! The planner input carried over from round to round is the input built
//! afresh, whatever changed between the rounds.

use std::collections::BTreeMap;
use std::sync::Arc;

use shardmap::table::ReplicaState;

use super::model::{plan_input, DemandModel, Inputs};
use super::Forecast;
use crate::engine::{ForecastSet, Horizon, HorizonForecast, ShardForecast, Source};
use crate::manager::state::{Event, State};
use crate::manager::topology::Topology;
use crate::planner::{self, Action, PlanInput};
use crate::store::{Retention, Store};
use crate::time::{Clock, Zone};

fn forecast(shard: &str, hour: f32) -> Arc<ShardForecast> {
    let hf = |horizon, scale: f32| HorizonForecast {
        horizon,
        levels: vec![0.1, 0.5, 0.9],
        values: vec![hour * scale * 0.5, hour * scale, hour * scale * 2.0],
        source: Source::Model { model: "m".into() },
    };
    Arc::new(ShardForecast {
        shard: shard.into(),
        history_hours: 48,
        horizons: vec![hf(Horizon::Hour, 1.0), hf(Horizon::NextHour, 1.5)],
    })
}

struct World {
    _dir: tempfile::TempDir,
    cfg: crate::config::ManagerConfig,
    topo: Topology,
    store: Store,
    forecasts: BTreeMap<String, Arc<ShardForecast>>,
    st: State,
    now: i64,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().unwrap();
        let good = std::fs::read_to_string(
            std::path::Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo"))
                .join("../conf/topology.toml"),
        )
        .unwrap();
        std::fs::write(dir.path().join("topology.toml"), good).unwrap();
        let text = "listen = \"127.0.0.1:0\"\n[model]\nhourly = \"h\"\ndaily = \"d\"\n[manager]\ntopology = \"topology.toml\"\nsync = \"http://127.0.0.1:1\"\nproxies = []\nprefix = \"p\"\n";
        let cfg = crate::config::Config::parse(text, dir.path(), "f.toml")
            .unwrap()
            .manager
            .unwrap();
        let topo = Topology::load(&cfg).unwrap();
        let mut st = State::new(
            crate::manager::state::Settings {
                fail_after: 1,
                churn_budget: 100,
                scale_in_ratio: 0.5,
                plans_demand: true,
                ..Default::default()
            },
            shardmap::AssignmentVersion::new(1, 1),
            false,
        );
        st.apply(topo.event());
        let forecasts = topo
            .shards
            .iter()
            .enumerate()
            .map(|(i, s)| (s.id.clone(), forecast(&s.id, 100.0 * i as f32)))
            .collect();
        World {
            _dir: dir,
            cfg,
            topo,
            store: Store::new(Retention::default(), Zone::utc(), 100),
            forecasts,
            st,
            now: 1_764_000_000_000,
        }
    }

    fn input(&self, model: &mut DemandModel) -> PlanInput {
        let set = ForecastSet {
            shards: Arc::new(self.forecasts.clone()),
            ..ForecastSet::default()
        };
        let inputs = Inputs {
            cfg: &self.cfg,
            topo: &self.topo,
            store: &self.store,
            forecasts: &set,
            clock: Clock::real(),
            now: self.now,
        };
        plan_input(&inputs, &self.st, model).0
    }
}

fn model() -> DemandModel {
    DemandModel::new(Box::new(Forecast { quantile: 0.9 }))
}

/// One round in both models: the carried-over input must equal the one
/// built from nothing carried over, and so must their plans.
fn round(w: &World, carried: &mut DemandModel, fresh: &mut DemandModel) -> PlanInput {
    let a = w.input(carried);
    fresh.forget();
    let b = w.input(fresh);
    assert_eq!(a, b, "the carried-over input differs from a fresh build");
    assert_eq!(planner::plan(&a), planner::plan(&b));
    let kept = a.clone();
    carried.keep(a);
    kept
}

#[test]
fn every_change_between_rounds_reaches_the_planner_input() {
    let mut w = World::new();
    let (mut carried, mut fresh) = (model(), model());
    round(&w, &mut carried, &mut fresh);
    round(&w, &mut carried, &mut fresh);
    assert_eq!(
        carried.predicted, 0,
        "nothing changed: nothing predicted again"
    );
    let ids: Vec<String> = w.topo.shards.iter().map(|s| s.id.clone()).collect();

    // A new forecast for one shard: it alone is predicted again.
    w.forecasts
        .insert(ids[3].clone(), forecast(&ids[3], 5_000_000.0));
    let input = round(&w, &mut carried, &mut fresh);
    assert_eq!(carried.predicted, 1);
    let s = input.shards.iter().find(|s| s.id == ids[3]).unwrap();
    assert!(s.demand.predicted_rps > 1000.0, "{:?}", s.demand);

    // A shard's forecast gone.
    w.forecasts.remove(&ids[4]);
    round(&w, &mut carried, &mut fresh);
    assert_eq!(carried.predicted, 1);

    // An operator threshold, a pin, a drained node.
    w.st.operator.thresholds.insert(ids[5].clone(), 0.001);
    round(&w, &mut carried, &mut fresh);
    assert_eq!(carried.predicted, 1, "a new threshold predicts again");
    w.st.operator
        .pins
        .insert(ids[6].clone(), vec!["node-c".into()]);
    w.st.operator.drained.insert("node-b".into());
    round(&w, &mut carried, &mut fresh);
    w.st.operator.pins.clear();
    w.st.operator.drained.clear();
    round(&w, &mut carried, &mut fresh);

    // Replica sets: one state changes, one replica goes, one is added;
    // one shard's replica starts leaving.
    w.st.replicas.get_mut(&ids[0]).unwrap()[0].state = ReplicaState::Draining;
    w.st.replicas.get_mut(&ids[1]).unwrap().pop();
    w.st.replicas
        .get_mut(&ids[2])
        .unwrap()
        .push(shardmap::control::ReplicaAssignment {
            node: "node-c".into(),
            state: ReplicaState::Warming,
        });
    w.st.leaving
        .entry(ids[7].clone())
        .or_default()
        .insert("node-a".into());
    round(&w, &mut carried, &mut fresh);
    w.st.leaving.clear();
    round(&w, &mut carried, &mut fresh);

    // What sync holds sizes the shards.
    w.st.bytes_per_row = Some(100.0);
    let hosted = w.st.hosted.entry("node-a".into()).or_default();
    hosted.insert(
        ids[8].clone(),
        shardmap::contract::manager::HostedView {
            cursor: 1,
            rows: 50_000,
            warm: true,
        },
    );
    let input = round(&w, &mut carried, &mut fresh);
    assert_eq!(
        input.shards.iter().find(|s| s.id == ids[8]).unwrap().bytes,
        5_000_000
    );
    // The most rows any node holds; a copy of a shard the topology lacks
    // is passed over.
    let view = |rows| shardmap::contract::manager::HostedView {
        cursor: 1,
        rows,
        warm: true,
    };
    let b = w.st.hosted.entry("node-b".into()).or_default();
    b.insert("AA/NOT-A-SHARD".into(), view(9));
    b.insert(ids[8].clone(), view(70_000));
    b.insert(ids[9].clone(), view(10));
    let input = round(&w, &mut carried, &mut fresh);
    let bytes = |id: &str| input.shards.iter().find(|s| s.id == id).unwrap().bytes;
    assert_eq!(bytes(&ids[8]), 7_000_000);
    assert_eq!(bytes(&ids[9]), 1_000);

    // The next hour: every shard predicted again (the hour is in the key).
    w.now += 3_600_000;
    round(&w, &mut carried, &mut fresh);
    assert_eq!(carried.predicted, ids.len());

    // A topology edit: a shard gone, one new; the others keep their slots.
    let mut gone = w.topo.shards.remove(9);
    gone.id = "ZZ/NEW".into();
    w.topo.shards.insert(0, gone);
    w.st.apply(w.topo.event());
    round(&w, &mut carried, &mut fresh);
    assert_eq!(carried.predicted, 1, "only the new shard is predicted");
    round(&w, &mut carried, &mut fresh);
    assert_eq!(carried.predicted, 0);
}

#[test]
fn a_node_dying_replans_every_shard_it_hosted() {
    let mut w = World::new();
    let (mut carried, mut fresh) = (model(), model());
    round(&w, &mut carried, &mut fresh);
    round(&w, &mut carried, &mut fresh);
    let on_b: Vec<String> =
        w.st.replicas
            .iter()
            .filter(|(_, r)| r.iter().any(|r| r.node == "node-b"))
            .map(|(id, _)| id.clone())
            .collect();
    assert!(!on_b.is_empty());
    w.st.apply(Event::NodeProbed {
        node: "node-b".into(),
        result: Err("connection refused".into()),
        now: w.now,
    });
    let input = round(&w, &mut carried, &mut fresh);
    let plan = planner::plan(&input);
    let mut dropped: Vec<&str> = plan
        .actions
        .iter()
        .filter(|a| matches!(a, Action::Drop { .. }) && a.node() == "node-b")
        .map(Action::shard)
        .collect();
    dropped.sort();
    assert_eq!(dropped, on_b, "every shard on the dead node is re-planned");
}
