//! Compare-and-swap helpers over proxy-wasm shared data, the one store that
//! every worker of an Envoy process (every VM with the same `vm_id`) sees.
//!
//! Two facts of the host shape everything built on it:
//! * `set` with a CAS token fails with a mismatch when another worker wrote
//!   in between; a key that does not exist yet is created unconditionally,
//!   so a "set if absent" race must be closed by creating keys up front
//!   (at configure time) and then only ever updating them with CAS.
//! * Shared data has no delete. Anything keyed by client input must
//!   therefore live inside a fixed set of bucket keys, never one key per
//!   client value, or memory grows without bound.

/// Errors from the shared store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SharedError {
    #[error("compare-and-swap mismatch: another worker updated the key")]
    CasMismatch,
    #[error("too many concurrent updates; gave up after {0} attempts")]
    Contended(u32),
    #[error("shared data host call failed: {0}")]
    Host(String),
}

/// A value and the CAS token it was read with (`None` when the key is absent).
pub type Versioned = (Option<Vec<u8>>, Option<u32>);

/// The one shared-data key convention of every filter:
/// `<filter>/<store>/<part>/<part>...`, e.g. `jwt/jti.v1/300/17`,
/// `replay-guard/nonce/42/3`, `fds-block/feed/fds/fds/%2Fv1%2Fblocklist/list`.
/// `filter` is the artifact name (`jwt`, `replay-guard`, ...), `store` names
/// the data and its layout version; every part is percent-encoded for `/`
/// and `%`, so a part that holds a path or a configured name can never read
/// as two parts, and two keys are equal only when every part is. All VMs of
/// one `vm_id` (under Istio's `WasmPlugin`: every plugin of the gateway)
/// share one namespace; the filter prefix keeps ours apart.
pub fn key(filter: &str, store: &str, parts: &[&dyn std::fmt::Display]) -> String {
    let mut k = String::with_capacity(filter.len() + store.len() + 8 * parts.len() + 2);
    k.push_str(filter);
    k.push('/');
    k.push_str(store);
    for p in parts {
        k.push('/');
        let start = k.len();
        // Written in place; escaped only when it needs it (passport builds
        // a slot key on every request).
        let _ = std::fmt::Write::write_fmt(&mut k, format_args!("{p}"));
        if k.get(start..).is_some_and(|w| w.contains(['/', '%'])) {
            let written = k.split_off(start);
            for c in written.chars() {
                match c {
                    '%' => k.push_str("%25"),
                    '/' => k.push_str("%2F"),
                    c => k.push(c),
                }
            }
        }
    }
    k
}

/// Process-wide key/value store with compare-and-swap.
pub trait SharedData {
    fn get(&self, key: &str) -> Result<Versioned, SharedError>;
    /// Writes `value`; with `cas`, only if the key still has that token.
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError>;
}

/// What an update closure decided.
pub enum Update<T> {
    /// Write these bytes, then return `T`.
    Write(Vec<u8>, T),
    /// Leave the store as it is and return `T`.
    Keep(T),
}

/// Read-modify-write with CAS, retried up to `attempts` times.
pub fn update<S, T, F>(store: &S, key: &str, attempts: u32, mut f: F) -> Result<T, SharedError>
where
    S: SharedData + ?Sized,
    F: FnMut(Option<&[u8]>) -> Update<T>,
{
    for _ in 0..attempts {
        let (value, cas) = store.get(key)?;
        match f(value.as_deref()) {
            Update::Keep(t) => return Ok(t),
            Update::Write(bytes, t) => match store.set(key, &bytes, cas) {
                Ok(()) => return Ok(t),
                Err(SharedError::CasMismatch) => continue,
                Err(e) => return Err(e),
            },
        }
    }
    Err(SharedError::Contended(attempts))
}

/// An in-memory [`SharedData`] with the host's CAS semantics, for tests.
#[derive(Debug, Default)]
pub struct MemorySharedData {
    /// (key → (value, cas), last cas handed out)
    inner: std::cell::RefCell<(MemoryMap, u32)>,
}

type MemoryMap = std::collections::HashMap<String, (Vec<u8>, u32)>;

impl MemorySharedData {
    pub fn new() -> Self {
        Self::default()
    }

    /// The keys stored, in no particular order.
    pub fn keys(&self) -> Vec<String> {
        self.inner.borrow().0.keys().cloned().collect()
    }
}

impl SharedData for MemorySharedData {
    fn get(&self, key: &str) -> Result<Versioned, SharedError> {
        let inner = self.inner.borrow();
        Ok(match inner.0.get(key) {
            Some((v, cas)) => (Some(v.clone()), Some(*cas)),
            None => (None, None),
        })
    }
    fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
        let mut inner = self.inner.borrow_mut();
        inner.1 = inner.1.wrapping_add(1).max(1);
        let next = inner.1;
        match inner.0.get_mut(key) {
            Some(entry) => {
                if let Some(c) = cas {
                    if c != 0 && c != entry.1 {
                        return Err(SharedError::CasMismatch);
                    }
                }
                *entry = (value.to_vec(), next);
            }
            None => {
                inner.0.insert(key.to_string(), (value.to_vec(), next));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod key_tests {
    use super::*;

    #[test]
    fn keys_name_filter_store_and_parts_and_parts_never_run_together() {
        assert_eq!(key("jwt", "jti.v1", &[&300, &17]), "jwt/jti.v1/300/17");
        assert_eq!(
            key("fds-block", "feed", &[&"fds", &"/v1/blocklist", &"list"]),
            "fds-block/feed/fds/%2Fv1%2Fblocklist/list"
        );
        assert_ne!(
            key("passport", "slot", &[&"a/b", &"c"]),
            key("passport", "slot", &[&"a", &"b/c"])
        );
        assert_ne!(key("x", "s", &[&"%2F"]), key("x", "s", &[&"/"]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_writes_and_returns() {
        let s = MemorySharedData::new();
        let n = update(&s, "k", 3, |v| {
            let n = v.map_or(0, |b| b.len()) + 1;
            Update::Write(vec![0; n], n)
        })
        .unwrap();
        assert_eq!(n, 1);
        assert_eq!(s.get("k").unwrap().0.unwrap().len(), 1);
    }

    #[test]
    fn stale_cas_token_is_a_mismatch() {
        let s = MemorySharedData::new();
        s.set("k", b"a", None).unwrap();
        let (_, cas) = s.get("k").unwrap();
        s.set("k", b"b", None).unwrap();
        assert_eq!(s.set("k", b"c", cas), Err(SharedError::CasMismatch));
    }

    /// A store whose first `n` CAS writes lose a race.
    struct Racy {
        inner: MemorySharedData,
        losses: std::cell::Cell<u32>,
    }
    impl SharedData for Racy {
        fn get(&self, key: &str) -> Result<Versioned, SharedError> {
            self.inner.get(key)
        }
        fn set(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), SharedError> {
            if self.losses.get() > 0 {
                self.losses.set(self.losses.get() - 1);
                return Err(SharedError::CasMismatch);
            }
            self.inner.set(key, value, cas)
        }
    }

    #[test]
    fn update_retries_lost_races_then_gives_up() {
        let racy = Racy {
            inner: MemorySharedData::new(),
            losses: std::cell::Cell::new(2),
        };
        assert!(update(&racy, "k", 3, |_| Update::Write(b"x".to_vec(), ())).is_ok());
        racy.losses.set(5);
        assert_eq!(
            update(&racy, "k", 3, |_| Update::Write(b"x".to_vec(), ())),
            Err(SharedError::Contended(3))
        );
    }
}
