//! Pre-fetch orders between the shard manager and sync: the order as
//! submitted (`POST /orders`, several at once with `POST /orders/batch`),
//! the order as sync tracks it (the answer of
//! `POST /orders`, `GET /orders[/{id}]`, `DELETE /orders/{id}`), its
//! [`Report`] once done, the epoch fence (`POST /epoch`, `GET /epoch`) and
//! the [`OrderEvent`] sync pushes to the managers when an order finishes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A pre-fetch order as submitted (the body of `POST /orders`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OrderRequest {
    pub shard: String,
    pub node: String,
    /// Higher runs first. Default 1.0.
    #[serde(default = "one")]
    pub priority: f64,
    /// Absolute deadline, Unix milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_unix_ms: Option<u64>,
    /// Deadline relative to submission, milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_in_ms: Option<u64>,
    /// The fencing token of the manager that sends the order: its
    /// leadership epoch (DESIGN.md, "Managers"). An order of an epoch below
    /// the highest sync has seen is refused (409); 0 (the default: clients
    /// without epochs) passes only until an epoch is seen.
    #[serde(default)]
    pub epoch: u64,
}

fn one() -> f64 {
    1.0
}

/// At most this many orders in one `POST /orders/batch`, and ids in one
/// `GET /orders?ids=`: a round's orders in a few calls, each call bounded
/// (a batch of this size is ~150 KB of JSON).
pub const MAX_BATCH: usize = 1000;

/// Several orders in one call (the body of `POST /orders/batch`), each
/// validated and queued on its own, as `POST /orders` would.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OrderBatch {
    pub orders: Vec<OrderRequest>,
}

/// The answer of `POST /orders/batch` (200 once the batch was read): one
/// result per order, in the order submitted.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OrderBatchAnswer {
    pub results: Vec<OrderResult>,
}

/// One order of a batch: queued (`order`, status 202) or refused (`error`
/// with the status `POST /orders` answers for it: 422 unknown shard or
/// node, bad priority or two deadlines; 409 an epoch below the highest
/// seen).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OrderResult {
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<Order>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Where an order is in its life: queued → running → done, or cancelled
/// on the way (by the control API, an eviction, a failed transfer, or a
/// reloaded order whose shard or node is no longer configured — with a
/// `reason`). JSON: `"queued"`, `"running"`, `"done"`, `"cancelled"`; any
/// other string is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OrderState {
    Queued,
    Running,
    Done,
    Cancelled,
}

impl OrderState {
    pub const ALL: [OrderState; 4] = [
        OrderState::Queued,
        OrderState::Running,
        OrderState::Done,
        OrderState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            OrderState::Queued => "queued",
            OrderState::Running => "running",
            OrderState::Done => "done",
            OrderState::Cancelled => "cancelled",
        }
    }

    /// Done or cancelled: the order will not change again.
    pub fn is_finished(self) -> bool {
        matches!(self, OrderState::Done | OrderState::Cancelled)
    }
}

impl fmt::Display for OrderState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`OrderState`] (`?state=` of `GET /orders`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown order state `{0}` (queued, running, done or cancelled)")]
pub struct UnknownState(pub String);

impl FromStr for OrderState {
    type Err = UnknownState;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        OrderState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| UnknownState(s.to_string()))
    }
}

/// What a finished order reports: the shard is warm on the node at `cursor`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    pub order: u64,
    pub shard: String,
    pub node: String,
    pub cursor: u64,
    pub rows: u64,
    pub bytes: u64,
    pub duration_ms: u64,
    /// `None` when the order had no deadline.
    pub deadline_met: Option<bool>,
    pub finished_unix_ms: u64,
}

/// An order as sync tracks it (and keeps it in its state file).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Order {
    pub id: u64,
    pub shard: String,
    pub node: String,
    pub priority: f64,
    pub deadline_unix_ms: Option<u64>,
    pub state: OrderState,
    pub submitted_unix_ms: u64,
    pub started_unix_ms: Option<u64>,
    pub finished_unix_ms: Option<u64>,
    /// Cursor, rows and bytes so far.
    pub cursor: u64,
    pub rows: u64,
    pub bytes: u64,
    /// The last provider/cache error while retrying (cleared on recovery).
    pub last_error: Option<String>,
    /// Why a cancelled order was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub report: Option<Report>,
    /// The epoch of the manager that ordered it (the latest, when an
    /// order was submitted again).
    #[serde(default)]
    pub epoch: u64,
}

/// `POST /epoch` (a new leader announces its term) and the answer of
/// `POST /epoch` and `GET /epoch` (the highest epoch sync has seen).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EpochBody {
    pub epoch: u64,
}

/// The answer of `DELETE /nodes/{node}/shards/{shard}` (202):
/// `{"evicting": {"node": …, "shard": …}}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Evicting {
    pub evicting: EvictTarget,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EvictTarget {
    pub node: String,
    pub shard: String,
}

/// Sync's word to the managers that an order finished (done or
/// cancelled), pushed as `POST /order-events` on the forecaster's
/// listener so the leader settles it at once instead of on its next poll.
///
/// `(source, seq)` makes it idempotent: `source` names one run of sync
/// (it changes at every start), `seq` increases by one with every event of
/// that run, so a receiver that has seen `seq` from `source` ignores it and
/// anything lower (a retry, a reordering). The event is a hint: the
/// receiver reads the order from sync as it always does (`GET
/// /orders/{id}`); a lost event costs one polling interval.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OrderEvent {
    /// One run of sync: its events' sequence starts at 1.
    pub source: String,
    /// Increases by one per event of `source`.
    pub seq: u64,
    pub order: u64,
    pub shard: String,
    pub node: String,
    /// The state the order is in now (always finished).
    pub state: OrderState,
    /// The epoch of the manager that ordered it.
    pub epoch: u64,
    pub at_unix_ms: u64,
    /// Why it was cancelled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Why an [`OrderEvent`] is refused by its receiver.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEvent {
    #[error("order event: `source` is empty")]
    NoSource,
    #[error("order event: `seq` starts at 1")]
    ZeroSeq,
    #[error("order event {seq}: `shard` and `node` must be non-empty")]
    Unnamed { seq: u64 },
    #[error("order event {seq}: order {order} is {state}, not finished")]
    NotFinished {
        seq: u64,
        order: u64,
        state: OrderState,
    },
}

impl OrderEvent {
    /// The checks a receiver makes before acting on an event.
    pub fn validate(&self) -> Result<(), InvalidEvent> {
        if self.source.is_empty() {
            return Err(InvalidEvent::NoSource);
        }
        if self.seq == 0 {
            return Err(InvalidEvent::ZeroSeq);
        }
        if self.shard.is_empty() || self.node.is_empty() {
            return Err(InvalidEvent::Unnamed { seq: self.seq });
        }
        if !self.state.is_finished() {
            return Err(InvalidEvent::NotFinished {
                seq: self.seq,
                order: self.order,
                state: self.state,
            });
        }
        Ok(())
    }
}

/// The receiver's answer to an [`OrderEvent`] (200): whether it acted on
/// it, or had seen it already (`duplicate`, also 200: the sender is done
/// with it either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct OrderEventAnswer {
    pub accepted: bool,
    pub duplicate: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What sync's scheduler serialized before these types moved here (a
    /// done order, verbatim from `GET /orders/{id}`).
    const DONE: &str = r#"{"id":7,"shard":"UK/LIGHTING","node":"node-c","priority":2.5,
        "deadline_unix_ms":1700000060000,"state":"done","submitted_unix_ms":1700000000000,
        "started_unix_ms":1700000000010,"finished_unix_ms":1700000000900,"cursor":991,
        "rows":420,"bytes":81234,"last_error":null,"report":{"order":7,"shard":"UK/LIGHTING",
        "node":"node-c","cursor":991,"rows":420,"bytes":81234,"duration_ms":890,
        "deadline_met":true,"finished_unix_ms":1700000000900},"epoch":3}"#;

    #[test]
    fn an_order_round_trips_in_syncs_shape() {
        let o: Order = serde_json::from_str(DONE).unwrap();
        assert_eq!(o.state, OrderState::Done);
        assert_eq!(o.report.as_ref().unwrap().deadline_met, Some(true));
        assert_eq!(o.epoch, 3);
        let back: serde_json::Value = serde_json::to_value(&o).unwrap();
        let want: serde_json::Value = serde_json::from_str(DONE).unwrap();
        assert_eq!(back, want);
    }

    #[test]
    fn an_unknown_state_or_a_renamed_field_is_refused() {
        let failed = DONE.replace(r#""state":"done""#, r#""state":"failed""#);
        let e = serde_json::from_str::<Order>(&failed).unwrap_err();
        assert!(e.to_string().contains("unknown variant `failed`"), "{e}");
        let renamed = DONE.replace(r#""rows":420,"bytes""#, r#""row_count":420,"bytes""#);
        let e = serde_json::from_str::<Order>(&renamed).unwrap_err();
        assert!(e.to_string().contains("row_count"), "{e}");
        let renamed = DONE.replace(r#""epoch":3"#, r#""term":3"#);
        assert!(serde_json::from_str::<Order>(&renamed).is_err());
        assert_eq!(
            "failed".parse::<OrderState>(),
            Err(UnknownState("failed".into()))
        );
        for s in OrderState::ALL {
            assert_eq!(s.as_str().parse::<OrderState>(), Ok(s));
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
    }

    #[test]
    fn a_request_takes_what_the_manager_sends_and_nothing_else() {
        let r: OrderRequest = serde_json::from_str(
            r#"{"shard":"UK/SEASONAL","node":"node-c","priority":3.0,"deadline_unix_ms":5,"epoch":2}"#,
        )
        .unwrap();
        assert_eq!(r.deadline_unix_ms, Some(5));
        assert_eq!(r.deadline_in_ms, None);
        let back = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<OrderRequest>(&back).unwrap(), r);
        let bare: OrderRequest = serde_json::from_str(r#"{"shard":"s","node":"n"}"#).unwrap();
        assert_eq!((bare.priority, bare.epoch), (1.0, 0));
        assert!(
            serde_json::from_str::<OrderRequest>(r#"{"shard":"s","node":"n","deadline":5}"#)
                .is_err()
        );
    }

    #[test]
    fn events_validate_and_refuse_strangers() {
        let e = OrderEvent {
            source: "sync-1".into(),
            seq: 1,
            order: 7,
            shard: "UK/LIGHTING".into(),
            node: "node-c".into(),
            state: OrderState::Done,
            epoch: 3,
            at_unix_ms: 1,
            reason: None,
        };
        assert_eq!(e.validate(), Ok(()));
        let json = serde_json::to_string(&e).unwrap();
        assert_eq!(serde_json::from_str::<OrderEvent>(&json).unwrap(), e);
        assert!(!json.contains("reason"));
        let running = OrderEvent {
            state: OrderState::Running,
            ..e.clone()
        };
        assert!(matches!(
            running.validate(),
            Err(InvalidEvent::NotFinished { .. })
        ));
        assert_eq!(
            OrderEvent {
                seq: 0,
                ..e.clone()
            }
            .validate(),
            Err(InvalidEvent::ZeroSeq)
        );
        let extra = json.replace("\"seq\"", "\"sequence\"");
        assert!(serde_json::from_str::<OrderEvent>(&extra).is_err());
    }
}
