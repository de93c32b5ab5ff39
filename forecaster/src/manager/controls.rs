//! Operator controls: dry run, pins, node drains and thresholds, as the
//! `/manager` routes call them. Each is an event to the state; a refusal
//! comes back as the command's error, a change wakes the round (which
//! persists it). With a metadata store, a command is answered once the
//! store holds it ([`Manager::command_stored`]): acknowledged is durable.

use super::state::{Command, CommandError, Effect, Event};
use super::Manager;
use crate::time::now_unix_ms;

impl Manager {
    fn command(&self, command: Command) -> Result<(), CommandError> {
        // Taken and counted under one lock, so that a restore of the
        // stored settings (also under it) knows which commands it replaced.
        let fx = {
            let mut st = self.state.lock();
            let fx = st.apply(Event::Operator {
                command,
                now: now_unix_ms(),
            });
            if fx.contains(&Effect::PersistOperator) {
                self.publisher.operator_taken();
            }
            fx
        };
        self.stale.store(true, std::sync::atomic::Ordering::SeqCst);
        let refused = fx.iter().find_map(|e| match e {
            Effect::Refused(why) => Some(why.clone()),
            _ => None,
        });
        for e in fx {
            if let Effect::Record(d) = e {
                self.metrics.decision(&d);
                self.log.record(d);
            } else if e == Effect::PersistOperator {
                self.wake();
            }
        }
        refused.map_or(Ok(()), Err)
    }

    /// Wait until the metadata store holds every command taken so far (a
    /// round writes them; it was woken). True at once without a store;
    /// false when no write confirmed them within three rounds (at least a
    /// second, at most ten): the command holds on this manager but would
    /// be lost if leadership moved before its next write.
    pub async fn command_stored(&self) -> bool {
        if self.cfg.metadata.is_none() {
            return true;
        }
        let n = self.publisher.operator_commands();
        let within = (self.cfg.interval * 3).clamp(
            std::time::Duration::from_secs(1),
            std::time::Duration::from_secs(10),
        );
        self.publisher.operator_stored(n, within).await
    }

    pub fn set_dry_run(&self, on: bool) {
        let _ = self.command(Command::DryRun(on));
    }

    pub fn pin(&self, shard: &str, nodes: Option<Vec<String>>) -> Result<(), CommandError> {
        self.command(Command::Pin {
            shard: shard.into(),
            nodes,
        })
    }

    pub fn drain_node(&self, node: &str, on: bool) -> Result<(), CommandError> {
        self.command(Command::DrainNode {
            node: node.into(),
            on,
        })
    }

    pub fn set_threshold(&self, shard: &str, rps: Option<f64>) -> Result<(), CommandError> {
        self.command(Command::Threshold {
            shard: shard.into(),
            rps,
        })
    }
}
