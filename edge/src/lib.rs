//! The parts of shardcast that face the network, shared by every process
//! (the proxy, the forecaster, sync and the reference node).
//!
//! Every listener in shardcast faces a hostile network, so each one is
//! built from the same pieces rather than three hand-written accept loops:
//!
//! - [`limit`]: a cap on open connections per listener and per client
//!   address; a connection past it is refused at accept, before it costs a
//!   TLS handshake or a buffer;
//! - [`deadline`]: a deadline at every stage of an HTTP/1 connection (before
//!   the first byte, the request head, the body, the idle time between
//!   requests, a stalled write) and for an HTTP/2 connection's preface;
//! - [`http1`]: the one accept loop of the processes' own HTTP APIs (hyper,
//!   HTTP/1.1), built from the two above, with graceful shutdown;
//! - [`auth`]: bearer-token checks in constant time; [`body`]: JSON bodies
//!   that must be objects;
//! - [`client`]: the one HTTP client of the control plane, with deadlines,
//!   bounded answers and typed errors;
//! - [`metrics`]: the one Prometheus text writer of every `/metrics`;
//! - [`fd`]: the open-file limit raised to its hard limit at start;
//! - [`url`]: percent decoding of path segments and query parameters for
//!   the control APIs (from `percent-encoding` and `form_urlencoded`);
//! - [`supervise`]: background loops that are restarted with backoff when
//!   they panic or end, and counted;
//! - `testkit` (feature `testkit`): client-side probes for the tests of
//!   a listener built from these pieces.
//!
//! The proxy's traffic listeners use [`limit`] and [`deadline`] directly
//! around Pingora's HTTP server; see `shardcast-proxy`'s `listener` module.
//! No piece here knows about shards: this crate is the edge, not the product.

pub mod auth;
pub mod body;
pub mod client;
pub mod deadline;
pub mod fd;
pub mod http1;
pub mod limit;
pub mod metrics;
pub mod supervise;
#[cfg(feature = "testkit")]
pub mod testkit;
pub mod url;

pub use deadline::{DeadlineIo, Deadlines, Mode};
pub use limit::{ConnGuard, ConnLimiter, Limits, Refused};
