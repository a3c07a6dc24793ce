//! A bounded map for the sync engine's memos: remembered answers that stay true under an
//! invariant each memo states where it is used. When the map reaches its bound it starts
//! afresh: forgetting is always safe, a forgotten answer is read again.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

/// Entries a memo holds before it starts afresh.
pub const LIMIT: usize = 200_000;

/// A `HashMap` with foldhash's seeded hasher: the sync engine's maps are keyed by room and
/// user ids and a woken long-poll hashes each of a user's rooms several times, where SipHash
/// (std's default) cost a tenth of the request's CPU. The seed is random per map, so keys
/// chosen by a remote server cannot be aimed at one bucket.
pub type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

/// See the module doc.
pub struct Memo<K, V> {
    map: Mutex<FastMap<K, V>>,
}

impl<K: Eq + Hash, V: Clone> Default for Memo<K, V> {
    fn default() -> Self {
        Self { map: Mutex::new(FastMap::default()) }
    }
}

impl<K: Eq + Hash, V: Clone> Memo<K, V> {
    fn lock(&self) -> std::sync::MutexGuard<'_, FastMap<K, V>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Inserts into the locked map, starting afresh at the bound.
    fn put(map: &mut FastMap<K, V>, key: K, value: V) {
        if map.len() >= LIMIT {
            map.clear();
        }
        map.insert(key, value);
    }

    /// The remembered value, if any.
    pub fn get<Q: Eq + Hash + ?Sized>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.lock().get(key).cloned()
    }

    /// The remembered values of `keys`, in order, under one lock (a woken long-poll asks for
    /// a thousand rooms' at once).
    pub fn get_many<'q, Q>(&self, keys: impl IntoIterator<Item = &'q Q>) -> Vec<Option<V>>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized + 'q,
    {
        let map = self.lock();
        keys.into_iter().map(|k| map.get(k).cloned()).collect()
    }

    /// Remembers values under one lock. A key already remembered has its value replaced in
    /// place, so remembering the same thousand rooms at every request allocates no keys.
    pub fn set_many<'q, Q>(&self, entries: impl IntoIterator<Item = (&'q Q, V)>)
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ToOwned<Owned = K> + ?Sized + 'q,
    {
        let mut map = self.lock();
        for (key, value) in entries {
            match map.get_mut(key) {
                Some(slot) => *slot = value,
                None => Self::put(&mut map, key.to_owned(), value),
            }
        }
    }

    /// Remembers a value.
    pub fn insert(&self, key: K, value: V) {
        Self::put(&mut self.lock(), key, value);
    }

    /// The remembered value, or `f()` remembered now (under one lock, so concurrent callers
    /// get the same value).
    pub fn get_or_insert_with(&self, key: K, f: impl FnOnce() -> V) -> V {
        let mut map = self.lock();
        if let Some(v) = map.get(&key) {
            return v.clone();
        }
        let value = f();
        Self::put(&mut map, key, value.clone());
        value
    }

    /// Remembers `f` of the value remembered so far (under one lock).
    pub fn update(&self, key: K, f: impl FnOnce(Option<&V>) -> V) {
        let mut map = self.lock();
        let value = f(map.get(&key));
        Self::put(&mut map, key, value);
    }

    /// Forgets a value.
    pub fn remove<Q: Eq + Hash + ?Sized>(&self, key: &Q)
    where
        K: Borrow<Q>,
    {
        self.lock().remove(key);
    }

    /// Forgets everything.
    pub fn clear(&self) {
        self.lock().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::Memo;

    #[test]
    fn many_at_once_reads_and_replaces_like_one_at_a_time() {
        let memo: Memo<String, (i64, i64)> = Memo::default();
        memo.insert("!a".into(), (1, 10));
        assert_eq!(memo.get_many(["!a", "!b"]), vec![Some((1, 10)), None]);
        memo.set_many([("!a", (2, 20)), ("!b", (2, 0))]);
        assert_eq!(memo.get("!a"), Some((2, 20)));
        assert_eq!(memo.get("!b"), Some((2, 0)));
        assert_eq!(memo.get_many(["!b", "!a", "!c"]), vec![Some((2, 0)), Some((2, 20)), None]);
    }
}
