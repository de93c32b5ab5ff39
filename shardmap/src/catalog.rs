//! The catalog: sku → category, in a compact map built for millions of skus.
//!
//! [`SkuMap`] is an open-addressing table of 8-byte slots: the upper 48 bits
//! of a sku's 64-bit hash as a fingerprint and a 16-bit category id. A lookup
//! is one hash and (almost always) one cache line; the table holds no sku
//! strings, so 10M skus take about 13 bytes each at a load factor of 0.6.
//!
//! The price of keeping only fingerprints: a sku *not* in the catalog can,
//! with probability about `probe length / 2^48` per lookup, alias a known
//! one and be routed to that sku's shard instead of by the unknown-sku
//! fallback — still a valid shard, so routing stays correct. Two *known*
//! skus whose fingerprints collide with different categories are found at
//! build time and kept in an exact side map, so every known sku maps to its
//! own category.

use std::collections::HashMap;

use xxhash_rust::xxh3::xxh3_64;

/// Category id inside one [`Catalog`].
pub type CategoryId = u16;

/// The largest number of categories a catalog can hold.
pub const MAX_CATEGORIES: usize = 0xFFFE;
const EXACT: u16 = 0xFFFF;

/// Stable 64-bit hash of a sku; the same on every proxy and every run.
#[inline]
pub fn sku_hash(sku: &str) -> u64 {
    xxh3_64(sku.as_bytes())
}

/// Slot of a fingerprint: Fibonacci hashing of a remix. It depends only on
/// the fingerprint so the table can grow without the sku strings.
#[inline]
fn slot_index(fp: u64, shift: u32) -> usize {
    ((fp ^ (fp >> 29)).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> shift) as usize
}

#[inline]
fn fingerprint(h: u64) -> u64 {
    let fp = h >> 16;
    if fp == 0 {
        1
    } else {
        fp
    }
}

/// sku → category id, immutable once built.
#[derive(Debug, Clone)]
pub struct SkuMap {
    slots: Box<[u64]>,
    shift: u32,
    len: usize,
    exact: HashMap<Box<str>, CategoryId>,
}

impl SkuMap {
    /// Build from `(sku, category)` pairs. A sku given twice keeps its last
    /// category. `entries` is called once, or twice when two skus share a
    /// fingerprint (the second pass copies exactly the colliding skus into
    /// the side map, so no sku strings are held for the common case).
    pub fn build<S, I>(expected: usize, entries: impl Fn() -> I) -> SkuMap
    where
        S: AsRef<str>,
        I: Iterator<Item = (S, CategoryId)>,
    {
        let mut m = SkuMap::with_capacity(expected);
        let mut collided = std::collections::HashSet::new();
        for (sku, cat) in entries() {
            if let Some(fp) = m.insert(sku.as_ref(), cat) {
                collided.insert(fp);
            }
        }
        if !collided.is_empty() {
            for (sku, cat) in entries() {
                let sku = sku.as_ref();
                if collided.contains(&fingerprint(sku_hash(sku))) {
                    m.exact.insert(sku.into(), cat);
                }
            }
        }
        m
    }

    fn with_capacity(n: usize) -> SkuMap {
        let cap = ((n.max(8) as f64 / 0.6).ceil() as usize).next_power_of_two();
        SkuMap {
            slots: vec![0u64; cap].into_boxed_slice(),
            shift: 64 - cap.trailing_zeros(),
            len: 0,
            exact: HashMap::new(),
        }
    }

    /// Insert; returns the fingerprint when it collides with a different
    /// category already stored (the slot is then marked for the side map).
    fn insert(&mut self, sku: &str, cat: CategoryId) -> Option<u64> {
        debug_assert!(cat != EXACT);
        if (self.len + 1) as f64 > self.slots.len() as f64 * 0.75 {
            self.grow();
        }
        let fp = fingerprint(sku_hash(sku));
        let mask = self.slots.len() - 1;
        let mut i = slot_index(fp, self.shift);
        loop {
            let s = self.slots[i];
            if s == 0 {
                self.slots[i] = (fp << 16) | cat as u64;
                self.len += 1;
                return None;
            }
            if s >> 16 == fp {
                let old = (s & 0xFFFF) as u16;
                if old == cat {
                    return None;
                }
                // The same sku re-categorised, or two skus sharing a
                // fingerprint: without the strings we cannot tell, so the
                // slot defers to the exact side map.
                self.slots[i] = (fp << 16) | EXACT as u64;
                return Some(fp);
            }
            i = (i + 1) & mask;
        }
    }

    fn grow(&mut self) {
        let old = std::mem::take(&mut self.slots);
        let cap = old.len() * 2;
        self.slots = vec![0u64; cap].into_boxed_slice();
        self.shift = 64 - cap.trailing_zeros();
        let mask = cap - 1;
        // The slot index depends only on the fingerprint, which the slot
        // keeps, so growing needs no sku strings.
        for s in old.iter().copied().filter(|&s| s != 0) {
            let mut i = slot_index(s >> 16, self.shift);
            while self.slots[i] != 0 {
                i = (i + 1) & mask;
            }
            self.slots[i] = s;
        }
    }

    /// The category of `sku`, if it is in the catalog (see the module note
    /// on fingerprints).
    #[inline]
    pub fn get(&self, sku: &str) -> Option<CategoryId> {
        let h = sku_hash(sku);
        let fp = fingerprint(h);
        let mask = self.slots.len() - 1;
        let mut i = slot_index(fp, self.shift);
        loop {
            let s = self.slots[i];
            if s == 0 {
                return None;
            }
            if s >> 16 == fp {
                let c = (s & 0xFFFF) as u16;
                return if c == EXACT {
                    self.exact.get(sku).copied()
                } else {
                    Some(c)
                };
            }
            i = (i + 1) & mask;
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.slots.len() * 8 + self.exact.len() * 48
    }
}

/// A catalog: the category names and the sku map over them.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    pub categories: Vec<String>,
    index: HashMap<String, CategoryId>,
    pub skus: Option<SkuMap>,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("catalog csv: {0}")]
    Csv(#[from] csv::Error),
    #[error("catalog csv: no `{0}` column in the header")]
    MissingColumn(String),
    #[error("catalog: more than {MAX_CATEGORIES} categories")]
    TooManyCategories,
    #[error("catalog csv line {line}: {msg}")]
    Row { line: u64, msg: String },
}

impl Catalog {
    pub fn category_id(&self, name: &str) -> Option<CategoryId> {
        self.index.get(name).copied()
    }

    pub fn category_name(&self, id: CategoryId) -> Option<&str> {
        self.categories.get(id as usize).map(String::as_str)
    }

    /// Intern a category name.
    pub fn intern(&mut self, name: &str) -> Result<CategoryId, CatalogError> {
        if let Some(&id) = self.index.get(name) {
            return Ok(id);
        }
        if self.categories.len() >= MAX_CATEGORIES {
            return Err(CatalogError::TooManyCategories);
        }
        let id = self.categories.len() as CategoryId;
        self.categories.push(name.to_string());
        self.index.insert(name.to_string(), id);
        Ok(id)
    }

    /// Build from pairs of sku and category name.
    pub fn from_pairs(pairs: &[(&str, &str)]) -> Result<Catalog, CatalogError> {
        let mut c = Catalog::default();
        let mut ids: Vec<(&str, CategoryId)> = Vec::with_capacity(pairs.len());
        for (sku, cat) in pairs {
            ids.push((sku, c.intern(cat)?));
        }
        c.skus = Some(SkuMap::build(ids.len(), || ids.iter().copied()));
        Ok(c)
    }

    /// Parse a CSV catalog held in memory (header row; `sku_col` and
    /// `cat_col` name the columns, extra columns are ignored), plus `extra`
    /// inline entries. A row with an empty or oversized sku or category is
    /// an error naming its line.
    pub fn from_csv(
        data: &[u8],
        sku_col: &str,
        cat_col: &str,
        extra: &[(String, String)],
    ) -> Result<Catalog, CatalogError> {
        let mut c = Catalog::default();
        let mut rdr = csv::ReaderBuilder::new()
            .has_headers(true)
            .from_reader(data);
        let headers = rdr.headers()?.clone();
        let col = |name: &str| {
            headers
                .iter()
                .position(|h| h == name)
                .ok_or_else(|| CatalogError::MissingColumn(name.into()))
        };
        let (si, ci) = (col(sku_col)?, col(cat_col)?);
        // One pass: validate, intern, insert. Strings are borrowed from the
        // record, so a million rows cost no allocation each. Only skus whose
        // fingerprints collided (rare) need a second, exact pass.
        let mut map = SkuMap::with_capacity((data.len() / 24).max(16));
        let mut collided = std::collections::HashSet::new();
        let mut rec = csv::ByteRecord::new();
        while rdr.read_byte_record(&mut rec)? {
            let line = rec.position().map(|p| p.line()).unwrap_or(0);
            let bad = |msg: &str| CatalogError::Row {
                line,
                msg: msg.into(),
            };
            let sku = rec.get(si).ok_or_else(|| bad("missing sku column"))?;
            let cat = rec.get(ci).ok_or_else(|| bad("missing category column"))?;
            if sku.is_empty() || cat.is_empty() {
                return Err(bad("empty sku or category"));
            }
            if sku.len() > crate::key::MAX_SKU_LEN {
                return Err(bad("sku longer than 128 bytes"));
            }
            let cat = std::str::from_utf8(cat).map_err(|_| bad("category is not UTF-8"))?;
            let sku = std::str::from_utf8(sku).map_err(|_| bad("sku is not UTF-8"))?;
            let id = c.intern(cat)?;
            if let Some(fp) = map.insert(sku, id) {
                collided.insert(fp);
            }
        }
        for (sku, cat) in extra {
            let id = c.intern(cat)?;
            if let Some(fp) = map.insert(sku, id) {
                collided.insert(fp);
            }
        }
        if !collided.is_empty() {
            let mut rdr = csv::ReaderBuilder::new()
                .has_headers(true)
                .from_reader(data);
            while rdr.read_byte_record(&mut rec)? {
                let (Some(sku), Some(cat)) = (rec.get(si), rec.get(ci)) else {
                    continue;
                };
                let (Ok(sku), Ok(cat)) = (std::str::from_utf8(sku), std::str::from_utf8(cat))
                else {
                    continue;
                };
                if collided.contains(&fingerprint(sku_hash(sku))) {
                    let id = c.index[cat];
                    map.exact.insert(sku.into(), id);
                }
            }
            for (sku, cat) in extra {
                if collided.contains(&fingerprint(sku_hash(sku))) {
                    map.exact.insert(sku.as_str().into(), c.index[cat.as_str()]);
                }
            }
        }
        c.skus = Some(map);
        Ok(c)
    }

    pub fn get(&self, sku: &str) -> Option<CategoryId> {
        self.skus.as_ref().and_then(|m| m.get(sku))
    }

    pub fn len(&self) -> usize {
        self.skus.as_ref().map_or(0, SkuMap::len)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn grows_and_finds_everything() {
        let skus: Vec<String> = (0..50_000).map(|i| format!("SKU{i:07}")).collect();
        let m = SkuMap::build(10, || {
            skus.iter()
                .enumerate()
                .map(|(i, s)| (s.as_str(), (i % 7) as u16))
        });
        assert_eq!(m.len(), 50_000);
        for (i, s) in skus.iter().enumerate() {
            assert_eq!(m.get(s), Some((i % 7) as u16), "{s}");
        }
        assert_eq!(m.get("nope"), None);
        assert!(m.heap_bytes() / m.len() < 64);
    }

    #[test]
    fn csv_catalog() {
        let data = "sku,description,category\n85123A,heart,HOME\n22423,cake stand,KITCHEN\n";
        let c = Catalog::from_csv(data.as_bytes(), "sku", "category", &[]).unwrap();
        assert_eq!(c.categories, vec!["HOME", "KITCHEN"]);
        assert_eq!(c.get("22423"), Some(1));
        let e = Catalog::from_csv("sku,cat\nx,\n".as_bytes(), "sku", "cat", &[]).unwrap_err();
        assert!(e.to_string().contains("line 2"), "{e}");
        assert!(Catalog::from_csv("a,b\n".as_bytes(), "sku", "b", &[]).is_err());
    }

    proptest! {
        #[test]
        fn map_agrees_with_hashmap(entries in proptest::collection::hash_map("[A-Z0-9]{1,12}", 0u16..100, 0..500),
                                   probes in proptest::collection::vec("[A-Z0-9]{1,12}", 0..50)) {
            let m = SkuMap::build(entries.len(), || entries.iter().map(|(k, v)| (k.as_str(), *v)));
            for (k, v) in &entries {
                prop_assert_eq!(m.get(k), Some(*v));
            }
            for p in &probes {
                if !entries.contains_key(p) {
                    prop_assert_eq!(m.get(p), None);
                }
            }
        }
    }
}
