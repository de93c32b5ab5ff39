//! The one vocabulary of the control plane: every message that crosses a
//! process boundary, as a type both sides serialize and deserialize.
//!
//! | module | who sends | who reads |
//! |---|---|---|
//! | [`orders`] | the shard manager (`POST /orders`, `POST /epoch`), sync (the order and its [`orders::Report`], [`orders::OrderEvent`] pushed on a change) | sync, the manager |
//! | [`hosted`] | sync (`GET /nodes`, `GET /nodes/{node}/shards`) | the manager |
//! | [`forecast`] | the forecaster (`/forecasts`, `/forecast/{shard}`, `/series`, `/clock`, `/ingest`'s answer) | the proxy's dashboard, tools |
//! | [`manager`] | the manager (`GET /manager`) | the proxy's dashboard, operators |
//! | [`keys`] | — | the names of the metadata store's keys, for the manager and the proxies |
//! | [`store_url`] | — | the URL of a Redis or a Redis Cluster (metadata store, node caches) |
//! | `store` (feature `store`) | — | the client for that URL: one connection type for both engines, `WAIT`, pub/sub |
//!
//! The table's own wire types (`PUT /admin/table`, `GET /admin/table`) are
//! in [`crate::control`]. Field names are part of the API: a rename shows
//! as a build or test failure on the other side, not as a surprise in a
//! run. Messages between sync and the manager are strict
//! (`deny_unknown_fields`, states as enums): a field one side does not know
//! is a deployment of two versions, and is refused with a message that
//! names it. Views read by people and dashboards accept unknown fields.

pub mod forecast;
pub mod hosted;
pub mod keys;
pub mod manager;
pub mod orders;
#[cfg(feature = "store")]
pub mod store;
pub mod store_url;

pub use hosted::{HostedShard, HostedState, NodeChange, NodeRecord, NodesChange};
pub use keys::MetadataKeys;
pub use orders::{
    EpochBody, Evicting, Order, OrderBatch, OrderBatchAnswer, OrderEvent, OrderEventAnswer,
    OrderRequest, OrderResult, OrderState, Report, MAX_BATCH,
};

use serde::{Deserialize, Serialize};

/// The body of every error answer of shardcast's HTTP APIs:
/// `{"error": "…"}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct ErrorBody {
    pub error: String,
}

impl ErrorBody {
    pub fn new(msg: impl Into<String>) -> ErrorBody {
        ErrorBody { error: msg.into() }
    }

    /// The message of an error answer's body, when it is one.
    pub fn message_of(body: &[u8]) -> Option<String> {
        serde_json::from_slice::<ErrorBody>(body)
            .ok()
            .map(|b| b.error)
    }
}

/// `{"status": "ok"}`: `/health`, `/live` and `/ready` of sync.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct StatusBody {
    pub status: String,
}

impl StatusBody {
    pub fn ok() -> StatusBody {
        StatusBody {
            status: "ok".into(),
        }
    }
}
