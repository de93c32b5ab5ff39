//! shardmap: the domain model every shardcast process shares — shards,
//! nodes, the catalog, the routing table and its builder, the config schema
//! and its validation, the topology every process reads ([`topology`]),
//! the telemetry, control and node-health wire types, and the control
//! plane's contracts ([`contract`]: orders, hosted shards, views, metadata
//! key names).
//!
//! No I/O happens here beyond reading a config file when asked
//! ([`config::Config::load`]); the proxy, the forecaster and the sync
//! service build their runtime objects from these types (see DESIGN.md,
//! "Components").

pub mod catalog;
pub mod config;
pub mod contract;
pub mod control;
pub mod health;
pub mod key;
pub mod table;
pub mod telemetry;
pub mod topology;

pub use catalog::{Catalog, CategoryId, SkuMap};
pub use config::{Config, ConfigErrors};
pub use control::{AssignmentVersion, NodeHealth, TableUpdate, TableView, UpdateAnswer};
pub use table::{ReplicaState, RouteHow, RoutingTable, ShardIdx};
pub use telemetry::Frame;
pub use topology::Topology;
