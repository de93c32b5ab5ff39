//! shardcast-sync: the data path of DESIGN.md ("Data path").
//!
//! Rows of the third-party provider's inventory database flow, as typed
//! deltas, into the caches of the nodes that host their shards:
//!
//! - [`provider`]: the provider database — schema, migrations, the delta
//!   reader ([`provider::Provider`]) for PostgreSQL and embedded SQLite;
//! - [`cache`]: a node's cache ([`cache::ShardCache`]) in Redis or in
//!   process; a batch and its cursor are applied atomically;
//! - [`transfer`]: one shard's catch-up, under a bandwidth budget
//!   ([`budget`]: waiters served by priority and deadline), with retries
//!   through outages;
//! - [`scheduler`] and [`api`]: pre-fetch orders by priority and deadline,
//!   freshness of hosted shards, eviction, the HTTP/JSON control API;
//!   [`persist`]: the state file orders survive restarts in; [`events`] and
//!   [`push`]: finished orders announced to the shard managers at once;
//! - [`node`]: the reference service-provider node the proxy routes to;
//! - [`load`]: seeding the provider from the Online Retail II data and
//!   replaying realistic changes;
//! - [`http`] and [`supervise`]: the listeners (one shared accept loop with
//!   connection bounds and deadlines) and the supervised background loops;
//! - [`testkit`] (feature `testkit`): throwaway PostgreSQL and Redis for tests.
//!
//! The binary `shardcast-sync` (`serve`, `node`, `load`, `changes`) is a
//! thin shell over these.

pub mod api;
pub mod budget;
pub mod cache;
pub mod config;
pub mod events;
pub mod freshness;
pub mod http;
pub mod load;
pub mod metrics;
pub mod model;
pub mod node;
pub mod persist;
pub mod provider;
pub mod push;
pub mod scheduler;
pub mod supervise;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod topology;
pub mod transfer;

pub use cache::ShardCache;
pub use model::{Batch, CacheBatch, Row, ShardDef};
pub use provider::{Provider, ProviderAdmin};
