//! A tiny typed key-value layer over the `kv` import: strings and counters stored as UTF-8
//! text (readable in the host's kv dump), plus an in-memory store for native tests.

use crate::kv::KvError;
use std::collections::BTreeMap;

/// The four operations of the `kv` import, so plugin logic can run on the host's store
/// or, in native tests, on [`MemoryKv`].
pub trait KvStore {
    /// The value under `key`, if any.
    fn get(&self, key: &str) -> Option<Vec<u8>>;
    /// Stores `value` under `key`.
    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), KvError>;
    /// Removes `key` (no error when absent).
    fn delete(&mut self, key: &str);
    /// Keys starting with `prefix`, sorted.
    fn keys(&self, prefix: &str) -> Vec<String>;
}

/// The host's per-plugin store (the `kv` import).
#[derive(Debug, Default, Clone, Copy)]
pub struct HostKv;

impl KvStore for HostKv {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        crate::kv::get(key)
    }
    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), KvError> {
        crate::kv::set(key, value)
    }
    fn delete(&mut self, key: &str) {
        crate::kv::delete(key)
    }
    fn keys(&self, prefix: &str) -> Vec<String> {
        crate::kv::keys(prefix)
    }
}

/// An in-memory store with the host's key rules and an optional byte quota, for native tests.
#[derive(Debug, Default, Clone)]
pub struct MemoryKv {
    map: BTreeMap<String, Vec<u8>>,
    quota: Option<usize>,
}

impl MemoryKv {
    /// An empty store without a quota.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store refusing writes that would take keys + values past `bytes`.
    pub fn with_quota(bytes: usize) -> Self {
        MemoryKv { map: BTreeMap::new(), quota: Some(bytes) }
    }

    fn used_without(&self, key: &str) -> usize {
        self.map.iter().filter(|(k, _)| k.as_str() != key).map(|(k, v)| k.len() + v.len()).sum()
    }
}

impl KvStore for MemoryKv {
    fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.map.get(key).cloned()
    }
    fn set(&mut self, key: &str, value: &[u8]) -> Result<(), KvError> {
        if key.is_empty() || key.len() > 256 {
            return Err(KvError::InvalidKey);
        }
        if let Some(q) = self.quota {
            if self.used_without(key) + key.len() + value.len() > q {
                return Err(KvError::QuotaExceeded);
            }
        }
        self.map.insert(key.to_string(), value.to_vec());
        Ok(())
    }
    fn delete(&mut self, key: &str) {
        self.map.remove(key);
    }
    fn keys(&self, prefix: &str) -> Vec<String> {
        self.map.keys().filter(|k| k.starts_with(prefix)).cloned().collect()
    }
}

/// A stored value that is not what the typed accessor expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("kv value under `{key}` is not {expected}")]
pub struct MalformedValue {
    /// The key read.
    pub key: String,
    /// What the accessor expected, e.g. "UTF-8 text".
    pub expected: &'static str,
}

/// Typed accessors over any [`KvStore`], optionally under a key prefix such as `"apb/"`.
pub struct TypedKv<S: KvStore> {
    store: S,
    prefix: String,
}

impl<S: KvStore> TypedKv<S> {
    /// Typed access to `store`, every key prefixed with `prefix`.
    pub fn new(store: S, prefix: &str) -> Self {
        TypedKv { store, prefix: prefix.to_string() }
    }

    fn key(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key)
    }

    /// A text value.
    pub fn get_str(&self, key: &str) -> Result<Option<String>, MalformedValue> {
        let full = self.key(key);
        match self.store.get(&full) {
            None => Ok(None),
            Some(bytes) => String::from_utf8(bytes).map(Some).map_err(|_| MalformedValue { key: full, expected: "UTF-8 text" }),
        }
    }

    /// Stores a text value.
    pub fn set_str(&mut self, key: &str, value: &str) -> Result<(), KvError> {
        let full = self.key(key);
        self.store.set(&full, value.as_bytes())
    }

    /// A counter or other unsigned number.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>, MalformedValue> {
        let full = self.key(key);
        match self.get_str(key)? {
            None => Ok(None),
            Some(s) => s.parse().map(Some).map_err(|_| MalformedValue { key: full, expected: "a number" }),
        }
    }

    /// Stores an unsigned number.
    pub fn set_u64(&mut self, key: &str, value: u64) -> Result<(), KvError> {
        self.set_str(key, &value.to_string())
    }

    /// Adds one to a counter (missing or malformed counts as 0) and returns the new value.
    pub fn increment(&mut self, key: &str) -> Result<u64, KvError> {
        let next = self.get_u64(key).ok().flatten().unwrap_or(0).wrapping_add(1);
        self.set_u64(key, next)?;
        Ok(next)
    }

    /// Removes a key.
    pub fn delete(&mut self, key: &str) {
        let full = self.key(key);
        self.store.delete(&full)
    }

    /// The keys under this wrapper's prefix, with the prefix stripped, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.store.keys(&self.prefix).into_iter().filter_map(|k| k.strip_prefix(&self.prefix).map(String::from)).collect()
    }

    /// The underlying store.
    pub fn into_inner(self) -> S {
        self.store
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_values_round_trip_under_a_prefix() {
        let mut kv = TypedKv::new(MemoryKv::new(), "apb/");
        assert_eq!(kv.get_str("r1"), Ok(None));
        kv.set_str("r1", "entry").unwrap();
        assert_eq!(kv.get_str("r1"), Ok(Some("entry".into())));
        assert_eq!(kv.increment("n").unwrap(), 1);
        assert_eq!(kv.increment("n").unwrap(), 2);
        assert_eq!(kv.get_u64("n"), Ok(Some(2)));
        assert_eq!(kv.keys(), vec!["n", "r1"]);
        kv.delete("r1");
        assert_eq!(kv.get_str("r1"), Ok(None));
        let raw = kv.into_inner();
        assert_eq!(raw.get("apb/n"), Some(b"2".to_vec()), "stored as readable text under the prefix");
    }

    #[test]
    fn malformed_values_are_reported_not_guessed() {
        let mut raw = MemoryKv::new();
        raw.set("x/bin", &[0xff, 0xfe]).unwrap();
        raw.set("x/n", b"twelve").unwrap();
        let kv = TypedKv::new(raw, "x/");
        assert_eq!(kv.get_str("bin"), Err(MalformedValue { key: "x/bin".into(), expected: "UTF-8 text" }));
        assert_eq!(kv.get_u64("n").unwrap_err().to_string(), "kv value under `x/n` is not a number");
    }

    #[test]
    fn memory_store_follows_the_host_rules() {
        let mut kv = MemoryKv::with_quota(10);
        assert_eq!(kv.set("", b"v"), Err(KvError::InvalidKey));
        assert_eq!(kv.set(&"k".repeat(257), b"v"), Err(KvError::InvalidKey));
        kv.set("a", b"123456789").unwrap();
        assert_eq!(kv.set("b", b"1"), Err(KvError::QuotaExceeded));
        kv.set("a", b"12345678").unwrap(); // overwriting frees the old value first
        kv.set("b", b"").unwrap();
    }
}
