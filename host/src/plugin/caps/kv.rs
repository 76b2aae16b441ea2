//! `gate:plugin/kv`: a small per-plugin key-value store with a byte quota.
//!
//! Writes made during a call are staged and only committed when the call
//! succeeds, so a plugin that traps half-way leaves no half-written state.

use crate::plugin::bindings::policy::gate::plugin::kv::{Host, KvError};
use std::collections::BTreeMap;

const MAX_KEY: usize = 256;

/// The kv capability of one plugin.
#[derive(Default)]
pub struct KvCap {
    committed: BTreeMap<String, Vec<u8>>,
    staged: BTreeMap<String, Option<Vec<u8>>>,
    quota: usize,
}

fn size(map: &BTreeMap<String, Vec<u8>>) -> usize {
    map.iter().map(|(k, v)| k.len() + v.len()).sum()
}

impl KvCap {
    /// A store holding `committed` (loaded from the event log), limited to `quota` bytes.
    pub fn new(committed: BTreeMap<String, Vec<u8>>, quota: usize) -> Self {
        KvCap { committed, staged: BTreeMap::new(), quota }
    }

    /// Commits the staged writes of a successful call and returns them for persisting.
    pub fn commit(&mut self) -> BTreeMap<String, Option<Vec<u8>>> {
        let staged = std::mem::take(&mut self.staged);
        for (k, v) in &staged {
            match v {
                Some(v) => {
                    self.committed.insert(k.clone(), v.clone());
                }
                None => {
                    self.committed.remove(k);
                }
            }
        }
        staged
    }

    /// Drops the staged writes of a failed call.
    pub fn discard(&mut self) {
        self.staged.clear();
    }

    /// The committed contents (what survives an instance restart).
    pub fn into_committed(mut self) -> BTreeMap<String, Vec<u8>> {
        self.discard();
        self.committed
    }

    fn view(&self, key: &str) -> Option<&Vec<u8>> {
        match self.staged.get(key) {
            Some(v) => v.as_ref(),
            None => self.committed.get(key),
        }
    }

    fn size_after(&self, key: &str, value: &[u8]) -> usize {
        let mut total = size(&self.committed);
        for (k, v) in &self.staged {
            if let Some(old) = self.committed.get(k) {
                total -= k.len() + old.len();
            }
            if let Some(v) = v {
                total += k.len() + v.len();
            }
        }
        if let Some(old) = self.view(key) {
            total -= key.len() + old.len();
        }
        total + key.len() + value.len()
    }
}

impl Host for KvCap {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        // Nothing is ever stored under an invalid key.
        if !valid_key(&key) {
            return None;
        }
        self.view(&key).cloned()
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), KvError> {
        if !valid_key(&key) {
            return Err(KvError::InvalidKey);
        }
        if self.size_after(&key, &value) > self.quota {
            return Err(KvError::QuotaExceeded);
        }
        self.staged.insert(key, Some(value));
        Ok(())
    }

    fn delete(&mut self, key: String) {
        // Only a key that holds a value is staged: deleting invalid or absent keys
        // would otherwise grow the staged writes (and the event log) without bound.
        if valid_key(&key) && self.view(&key).is_some() {
            self.staged.insert(key, None);
        }
    }

    fn keys(&mut self, prefix: String) -> Vec<String> {
        if prefix.len() > MAX_KEY {
            return Vec::new();
        }
        let mut keys: Vec<String> = self.committed.keys().chain(self.staged.keys()).filter(|k| k.starts_with(&prefix) && self.view(k).is_some()).cloned().collect();
        keys.sort();
        keys.dedup();
        keys
    }
}

/// Keys are 1..=256 bytes on every kv call.
fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.len() <= MAX_KEY
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_call_checks_the_key_and_deletes_stage_only_real_keys() {
        let mut kv = KvCap::new(BTreeMap::new(), 1000);
        let long = "k".repeat(MAX_KEY + 1);
        assert!(matches!(kv.set(long.clone(), vec![1]), Err(KvError::InvalidKey)));
        assert_eq!(kv.get(long.clone()), None);
        kv.delete(long.clone());
        kv.delete(String::new());
        kv.delete("never-set".into());
        assert!(kv.keys(long).is_empty());
        assert!(kv.commit().is_empty(), "deleting invalid or absent keys stages nothing");
        kv.set("k".into(), vec![1]).unwrap();
        kv.commit();
        kv.delete("k".into());
        assert_eq!(kv.commit().get("k"), Some(&None));
    }

    #[test]
    fn quota_counts_keys_and_values_and_replacements() {
        let mut kv = KvCap::new(BTreeMap::new(), 10);
        assert!(kv.set("ab".into(), vec![0; 8]).is_ok());
        assert!(matches!(kv.set("c".into(), vec![0]), Err(KvError::QuotaExceeded)));
        // Replacing a value frees the old bytes first.
        assert!(kv.set("ab".into(), vec![0; 7]).is_ok());
        assert!(kv.set("c".into(), vec![]).is_ok());
        assert!(matches!(kv.set(String::new(), vec![]), Err(KvError::InvalidKey)));
    }

    #[test]
    fn failed_call_leaves_no_staged_write() {
        let mut kv = KvCap::new(BTreeMap::new(), 100);
        kv.set("k".into(), b"v".to_vec()).unwrap();
        kv.discard();
        assert_eq!(kv.get("k".into()), None);
        kv.set("k".into(), b"w".to_vec()).unwrap();
        let changes = kv.commit();
        assert_eq!(changes.len(), 1);
        kv.delete("k".into());
        assert_eq!(kv.keys(String::new()), Vec::<String>::new());
        assert_eq!(kv.into_committed().get("k").map(Vec::as_slice), Some(&b"w"[..]));
    }
}
