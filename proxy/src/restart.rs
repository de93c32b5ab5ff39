//! The settings a running proxy applies only when it starts, and the one
//! comparison that tells an operator which of a file's changes wait for a
//! restart (or a graceful upgrade).
//!
//! The process records [`RestartOnly`] from the config it started with
//! (`Shared::edge.started`). A reload compares the file against that — not
//! against the previous reload, so reloading the same file twice keeps
//! saying what is still not applied — and answers `needs_restart` (see
//! [`crate::reload::ReloadOutcome`]). `GET /admin/config` serves the same
//! record, and `shardcast-proxy -t -c FILE` asks the instance the file names
//! for it ([`compare_with_running`]) and prints the same differences.
//!
//! Everything else in a config applies live: routing, nodes, shards,
//! catalog, retry, health, telemetry, the admin token, `[limits]`,
//! certificates, and every client deadline but HTTP/2's idle one (new
//! connections take the reloaded values).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shardmap::Config;

/// What `-t` lists when it cannot ask a running instance.
pub const RESTART_ONLY_FIELDS: &str = "listen.http, listen.https (addresses and h2), \
     listen.admin, listen.threads, listen.grace_period_s, timeouts.client_h2_idle_ms";

/// The settings fixed when the process starts (`GET /admin/config`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartOnly {
    /// `listen.http`: the plain HTTP listeners.
    pub http: Vec<SocketAddr>,
    /// `listen.https`, in config order.
    pub https: Vec<HttpsListener>,
    /// `listen.admin`.
    pub admin: SocketAddr,
    /// `listen.threads`: Pingora's worker threads.
    pub threads: usize,
    /// `listen.grace_period_s`: Pingora's drain period on SIGTERM.
    pub grace_period_s: u64,
    /// `timeouts.client_h2_idle_ms`: Pingora's HTTP/2 server takes it when
    /// it starts (every other client deadline is read per connection).
    pub client_h2_idle_ms: u64,
}

/// One `[[listen.https]]` as far as a restart is concerned (certificates
/// reload live).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpsListener {
    pub addr: SocketAddr,
    /// HTTP/2 offered by ALPN.
    pub h2: bool,
}

impl RestartOnly {
    /// The restart-only settings of `cfg`.
    pub fn of(cfg: &Config) -> Self {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Self {
            http: cfg.listen.http.clone(),
            https: cfg
                .listen
                .https
                .iter()
                .map(|h| HttpsListener {
                    addr: h.addr,
                    h2: h.h2,
                })
                .collect(),
            admin: cfg.listen.admin,
            threads: cfg.listen.threads,
            grace_period_s: cfg.listen.grace_period.as_secs(),
            client_h2_idle_ms: ms(cfg.timeouts.client_h2_idle),
        }
    }
}

/// A restart-only setting whose value in the file is not the running one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PendingChange {
    /// The config field, e.g. `listen.http` or `listen.https[0].h2`.
    pub field: String,
    pub running: String,
    pub file: String,
}

impl fmt::Display for PendingChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (running {}, file {})",
            self.field, self.running, self.file
        )
    }
}

fn list<T: fmt::Display>(items: &[T]) -> String {
    if items.is_empty() {
        return "none".into();
    }
    items
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl fmt::Display for HttpsListener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.addr, if self.h2 { " h2" } else { "" })
    }
}

/// Which restart-only settings of `file` differ from the `running` ones.
/// Empty: a reload applies the whole file. The one comparison behind
/// reload's `needs_restart` and `-t`.
pub fn needs_restart(running: &RestartOnly, file: &RestartOnly) -> Vec<PendingChange> {
    let mut out = vec![];
    let mut differ = |field: String, r: String, f: String| {
        if r != f {
            out.push(PendingChange {
                field,
                running: r,
                file: f,
            });
        }
    };
    differ("listen.http".into(), list(&running.http), list(&file.http));
    let addrs = |l: &[HttpsListener]| l.iter().map(|h| h.addr).collect::<Vec<_>>();
    if addrs(&running.https) != addrs(&file.https) {
        differ(
            "listen.https".into(),
            list(&running.https),
            list(&file.https),
        );
    } else {
        for (i, (r, f)) in running.https.iter().zip(&file.https).enumerate() {
            differ(
                format!("listen.https[{i}].h2"),
                r.h2.to_string(),
                f.h2.to_string(),
            );
        }
    }
    differ(
        "listen.admin".into(),
        running.admin.to_string(),
        file.admin.to_string(),
    );
    differ(
        "listen.threads".into(),
        running.threads.to_string(),
        file.threads.to_string(),
    );
    differ(
        "listen.grace_period_s".into(),
        running.grace_period_s.to_string(),
        file.grace_period_s.to_string(),
    );
    differ(
        "timeouts.client_h2_idle_ms".into(),
        running.client_h2_idle_ms.to_string(),
        file.client_h2_idle_ms.to_string(),
    );
    out
}

/// Where to reach an admin listener bound to `addr` from this host.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

/// How long `-t` waits for the running instance.
const ASK_TIMEOUT: Duration = Duration::from_secs(2);

/// For `-t`: ask the instance whose admin listener `file` names (with the
/// file's token) for its restart-only settings, and say what differs, one
/// line each (`needs_restart: <field> (running X, file Y)`), or that no
/// instance answers. Blocking; runs its own runtime on a thread of its own.
pub fn compare_with_running(file: &Config) -> Vec<String> {
    let addr = reachable(file.listen.admin);
    let token = file.listen.admin_token.clone();
    let url = format!("http://{addr}/admin/config");
    let asked = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime: {e}"))?;
        rt.block_on(async {
            crate::http_client::Client::default()
                .get_body_with_token(&url, token.as_deref(), ASK_TIMEOUT, 64 * 1024)
                .await
        })
    })
    .join()
    .unwrap_or_else(|_| Err("the request panicked".into()));
    let unknown = |why: String| {
        vec![
            format!("{why}: cannot compare with a running instance"),
            format!("settings that apply only at start: {RESTART_ONLY_FIELDS}"),
        ]
    };
    match asked {
        Err(e) => unknown(format!("no running instance answers at {addr} ({e})")),
        Ok((401, _)) => unknown(format!(
            "the instance at {addr} refuses this file's admin_token"
        )),
        Ok((200, body)) => match serde_json::from_slice::<RestartOnly>(&body) {
            Err(e) => unknown(format!(
                "the instance at {addr} answered GET /admin/config with something else ({e})"
            )),
            Ok(running) => {
                let pending = needs_restart(&running, &RestartOnly::of(file));
                if pending.is_empty() {
                    return vec![format!(
                        "running instance at {addr}: a reload applies this whole file"
                    )];
                }
                let mut out = vec![format!(
                    "running instance at {addr}: {} setting(s) in this file apply only after a restart or graceful upgrade",
                    pending.len()
                )];
                out.extend(pending.iter().map(|p| format!("needs_restart: {p}")));
                out
            }
        },
        Ok((status, _)) => unknown(format!(
            "the instance at {addr} answered GET /admin/config with {status}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> RestartOnly {
        RestartOnly {
            http: vec!["127.0.0.1:8080".parse().unwrap()],
            https: vec![HttpsListener {
                addr: "127.0.0.1:8443".parse().unwrap(),
                h2: true,
            }],
            admin: "127.0.0.1:9901".parse().unwrap(),
            threads: 2,
            grace_period_s: 10,
            client_h2_idle_ms: 10_000,
        }
    }

    fn fields(v: &[PendingChange]) -> Vec<&str> {
        v.iter().map(|p| p.field.as_str()).collect()
    }

    #[test]
    fn each_restart_only_field_is_named_with_both_values() {
        let a = base();
        assert!(needs_restart(&a, &a).is_empty());
        let mut b = base();
        b.http.push("127.0.0.1:8081".parse().unwrap());
        b.admin = "127.0.0.1:9902".parse().unwrap();
        b.threads = 4;
        b.grace_period_s = 3;
        b.client_h2_idle_ms = 500;
        let d = needs_restart(&a, &b);
        assert_eq!(
            fields(&d),
            [
                "listen.http",
                "listen.admin",
                "listen.threads",
                "listen.grace_period_s",
                "timeouts.client_h2_idle_ms"
            ]
        );
        assert_eq!(
            d[0].to_string(),
            "listen.http (running 127.0.0.1:8080, file 127.0.0.1:8080, 127.0.0.1:8081)"
        );
    }

    #[test]
    fn https_addresses_or_their_h2_flag() {
        let a = base();
        let mut b = base();
        b.https[0].h2 = false;
        let d = needs_restart(&a, &b);
        assert_eq!(fields(&d), ["listen.https[0].h2"]);
        assert_eq!(
            d[0].to_string(),
            "listen.https[0].h2 (running true, file false)"
        );
        b.https.clear();
        let d = needs_restart(&a, &b);
        assert_eq!(
            d[0].to_string(),
            "listen.https (running 127.0.0.1:8443 h2, file none)"
        );
    }

    #[test]
    fn the_wire_form_round_trips() {
        let a = base();
        let text = serde_json::to_string(&a).unwrap();
        assert_eq!(serde_json::from_str::<RestartOnly>(&text).unwrap(), a);
    }

    #[test]
    fn an_unspecified_admin_address_is_asked_on_loopback() {
        assert_eq!(
            reachable("0.0.0.0:9901".parse().unwrap()),
            "127.0.0.1:9901".parse::<SocketAddr>().unwrap()
        );
        assert_eq!(
            reachable("[::]:9901".parse().unwrap()),
            "[::1]:9901".parse::<SocketAddr>().unwrap()
        );
    }
}
