//! Operator commands: checked against the topology, then taken into the
//! settings, logged and persisted.

use std::collections::BTreeSet;

use super::{Command, Decision, Effect, State};
use crate::planner::Reason;

/// Why an operator command was refused (the routes answer 404 for what
/// does not exist, 400 for the rest).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CommandError {
    #[error("unknown shard `{0}`")]
    UnknownShard(String),
    #[error("unknown node `{0}`")]
    UnknownNode(String),
    #[error("a pin names at least one node")]
    EmptyPin,
    #[error("node `{0}` named twice")]
    NodeTwice(String),
    #[error("threshold {0} must be a positive number of requests/s")]
    BadThreshold(f64),
}

impl CommandError {
    /// It names a shard or node that does not exist.
    pub fn is_unknown(&self) -> bool {
        matches!(
            self,
            CommandError::UnknownShard(_) | CommandError::UnknownNode(_)
        )
    }
}

impl State {
    pub(super) fn command(&mut self, command: Command, now: i64, fx: &mut Vec<Effect>) {
        let decided = match self.check(&command) {
            Err(e) => {
                fx.push(Effect::Refused(e));
                return;
            }
            Ok(()) => self.take(command),
        };
        let (action, shard, node, detail) = decided;
        fx.push(Effect::Record(Decision {
            at_unix_ms: now,
            action,
            shard,
            node,
            reason: Reason::Operator,
            detail,
            dry_run: false,
        }));
        fx.push(Effect::PersistOperator);
    }

    /// Whether a command names known shards and nodes and sane values.
    fn check(&self, command: &Command) -> Result<(), CommandError> {
        let shard_known = |s: &str| {
            if self.replicas.contains_key(s) {
                Ok(())
            } else {
                Err(CommandError::UnknownShard(s.to_string()))
            }
        };
        match command {
            Command::DryRun(_) => Ok(()),
            Command::Pin { shard, nodes } => {
                shard_known(shard)?;
                if let Some(ns) = nodes {
                    if ns.is_empty() {
                        return Err(CommandError::EmptyPin);
                    }
                    let mut seen = BTreeSet::new();
                    for n in ns {
                        if !self.nodes.contains_key(n) {
                            return Err(CommandError::UnknownNode(n.clone()));
                        }
                        if !seen.insert(n) {
                            return Err(CommandError::NodeTwice(n.clone()));
                        }
                    }
                }
                Ok(())
            }
            Command::DrainNode { node, .. } => {
                if self.nodes.contains_key(node) {
                    Ok(())
                } else {
                    Err(CommandError::UnknownNode(node.clone()))
                }
            }
            Command::Threshold { shard, rps } => {
                shard_known(shard)?;
                match rps {
                    Some(v) if !(v.is_finite() && *v > 0.0) => Err(CommandError::BadThreshold(*v)),
                    _ => Ok(()),
                }
            }
        }
    }

    /// Carry out a checked command: (action, shard, node, detail).
    fn take(&mut self, command: Command) -> (&'static str, String, String, String) {
        let op = &mut self.operator;
        match command {
            Command::DryRun(on) => {
                op.dry_run = on;
                let detail = format!("dry run {}", if on { "on" } else { "off" });
                ("dry_run", String::new(), String::new(), detail)
            }
            Command::Pin { shard, nodes } => {
                let detail = match &nodes {
                    Some(ns) => format!("pinned to {}", ns.join(", ")),
                    None => "pin removed".into(),
                };
                match nodes {
                    Some(ns) => op.pins.insert(shard.clone(), ns),
                    None => op.pins.remove(&shard),
                };
                ("pin", shard, String::new(), detail)
            }
            Command::DrainNode { node, on } => {
                if on {
                    op.drained.insert(node.clone());
                } else {
                    op.drained.remove(&node);
                }
                let what = if on { "drain_node" } else { "undrain_node" };
                (what, String::new(), node, format!("{what} by operator"))
            }
            Command::Threshold { shard, rps } => {
                match rps {
                    Some(v) => op.thresholds.insert(shard.clone(), v),
                    None => op.thresholds.remove(&shard),
                };
                let detail = match rps {
                    Some(v) => format!("threshold set to {v} rps"),
                    None => "threshold back to the configured one".into(),
                };
                ("threshold", shard, String::new(), detail)
            }
        }
    }
}
