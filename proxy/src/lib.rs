//! shardcast-proxy: the data plane. A Pingora HTTP proxy that extracts a
//! product key from each request, looks its shard up in a lock-free,
//! swappable routing table, and forwards to a healthy replica of that shard
//! — plus the admin API, hot reload, health checks and per-shard telemetry
//! that make it operable (DESIGN.md, "The request path" and "Control path").
//!
//! `main.rs` only parses flags and calls [`run::run`].

pub mod admin;
pub mod chunked;
pub mod dashboard;
pub mod deadline;
pub mod framing;
pub mod health;
pub mod http_client;
pub mod listener;
pub mod metadata;
pub mod metrics;
pub mod node;
pub mod proxy;
pub mod reload;
pub mod restart;
pub mod run;
pub mod selection;
pub mod services;
pub mod snapshot;
pub mod state;
pub mod telemetry;
pub mod tls;
