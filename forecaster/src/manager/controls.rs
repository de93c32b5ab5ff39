//! Operator controls: dry run, pins, node drains and thresholds, as the
//! `/manager` routes call them. Each is an event to the state; a refusal
//! comes back as the command's error, a change wakes the round (which
//! persists it).

use super::state::{Command, CommandError, Effect, Event};
use super::Manager;
use crate::time::now_unix_ms;

impl Manager {
    fn command(&self, command: Command) -> Result<(), CommandError> {
        let fx = self.apply(Event::Operator {
            command,
            now: now_unix_ms(),
        });
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
