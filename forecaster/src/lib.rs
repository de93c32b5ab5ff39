//! shardcast's forecasting sidecar.
//!
//! The proxy POSTs per-shard telemetry frames here ([`ingest`]); they land in
//! per-shard multi-resolution ring buffers ([`store`], persisted by
//! [`persist`]). External signals — sales history, web traffic, sentiment,
//! the event calendar — are read as feeds ([`feeds`]). Every planning cycle a
//! dedicated thread ([`engine`]) builds the model inputs per the trained
//! models' contracts ([`contract`], [`features`]), runs ONNX Runtime
//! ([`model`]) batched over all shards, falls back to seasonal naive
//! ([`fallback`]) where the model cannot answer, and publishes a
//! [`engine::ForecastSet`] that the HTTP API ([`api`]) serves and the shard
//! manager (the planner, next in this crate) reads through
//! [`engine::ForecastHandle`]. See DESIGN.md, "Forecasting".

pub mod api;
pub mod config;
pub mod contract;
pub mod engine;
pub mod fallback;
pub mod features;
pub mod feeds;
pub mod manager;
pub mod metrics;
pub mod model;
pub mod order_events;
pub mod persist;
pub mod planner;
pub mod service;
pub mod store;
pub mod time;
