//! Where the shards come from: the topology file, inline `[[shards]]`, a
//! `shards_file`, or the 14 `REGION/CATEGORY` shards of the Online Retail
//! data.

use std::path::Path;

use serde::Deserialize;
use shardmap::config::ShardFile;

use super::{parse, resolve};
use crate::model::{check_shards, ShardDef};

/// The categories of the Online Retail data (see data/online_retail).
pub const DATA_CATEGORIES: &[&str] = &[
    "BAGS_STORAGE",
    "HOME_DECOR_OTHER",
    "JEWELLERY_FASHION",
    "KITCHEN_DINING",
    "LIGHTING",
    "PAPER_PARTY_KIDS",
    "SEASONAL",
];
pub const DATA_REGIONS: &[&str] = &["UK", "INTL"];

/// One shard per `REGION/CATEGORY` cell.
pub fn default_shards() -> Vec<ShardDef> {
    let mut v = vec![];
    for r in DATA_REGIONS {
        for c in DATA_CATEGORIES {
            v.push(ShardDef {
                id: format!("{r}/{c}"),
                cells: vec![(c.to_string(), r.to_string())],
            });
        }
    }
    v
}

#[derive(Deserialize)]
struct ShardsOnly {
    #[serde(default)]
    shards: Vec<ShardFile>,
}

pub(super) fn load_shards(
    base: &Path,
    inline: &[ShardFile],
    file: Option<&str>,
    topo: Option<&shardmap::Topology>,
    errs: &mut Vec<String>,
) -> Vec<ShardDef> {
    if let Some(t) = topo {
        if !inline.is_empty() || file.is_some() {
            errs.push(
                "topology: the shards come from the topology file: remove [[shards]] and shards_file"
                    .into(),
            );
        }
        return crate::topology::shards(t);
    }
    let mut shards: Vec<ShardDef> = inline.iter().map(ShardDef::from_file).collect();
    if let Some(f) = file {
        let path = resolve(base, f);
        match std::fs::read_to_string(&path) {
            Ok(text) => match parse::<ShardsOnly>(&text, &path.display().to_string()) {
                Ok(s) => shards.extend(s.shards.iter().map(ShardDef::from_file)),
                Err(e) => errs.push(format!("shards_file: {e}")),
            },
            Err(e) => errs.push(format!("shards_file: cannot read {}: {e}", path.display())),
        }
    }
    if shards.is_empty() && inline.is_empty() && file.is_none() {
        shards = default_shards();
    }
    if shards.is_empty() {
        errs.push("shards: no shards".into());
    }
    errs.extend(check_shards(&shards));
    shards
}
