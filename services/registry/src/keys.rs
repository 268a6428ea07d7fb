//! API keys: generation, hashing, and the in-memory cache every request is authenticated
//! against.
//!
//! A key looks like `cc_7f3a9c01_<64 hex digits>`: a visible prefix (`cc_7f3a9c01`, safe to log,
//! the key's name) and 256 random bits. Only SHA-256 of the whole key is stored. A keyed or slow
//! hash (HMAC with a pepper, argon2) protects guessable secrets; these are not guessable (2^256),
//! so a fast unkeyed hash gives the same protection against a leaked table and keeps
//! authentication at one hash per request. Hashes are compared in constant time.

use std::collections::HashMap;
use std::sync::Arc;

use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use citycredit_core::auth::Principal;

/// The prefix of every generated key.
pub const KEY_SCHEME: &str = "cc_";
/// The name under which a bootstrap key given in the environment is kept when it is not in
/// the generated format.
pub const BOOTSTRAP_PREFIX: &str = "cc_bootstrap";

/// A new key: (prefix, full secret key).
pub fn generate() -> (String, String) {
    let mut id = [0u8; 4];
    let mut secret = [0u8; 32];
    let mut rng = rand::rng();
    rng.fill_bytes(&mut id);
    rng.fill_bytes(&mut secret);
    let prefix = format!("{KEY_SCHEME}{}", hex::encode(id));
    let key = format!("{prefix}_{}", hex::encode(secret));
    (prefix, key)
}

/// The visible prefix of a presented key (`cc_xxxxxxxx`), or the bootstrap name for a key in
/// another format.
pub fn prefix_of(key: &str) -> &str {
    let generated = key.len() == 3 + 8 + 1 + 64
        && key.starts_with(KEY_SCHEME)
        && key.as_bytes()[11] == b'_'
        && key[3..11].bytes().all(|b| b.is_ascii_hexdigit());
    if generated {
        &key[..11]
    } else {
        BOOTSTRAP_PREFIX
    }
}

/// SHA-256 of the whole key.
pub fn hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// One active key as the cache holds it.
#[derive(Clone, Debug)]
pub struct CachedKey {
    pub hash: Vec<u8>,
    pub principal: Principal,
    /// Microseconds since the epoch after which the key stops working.
    pub expire_micros: Option<i64>,
}

/// Every active (unrevoked) key by prefix.
#[derive(Clone, Debug, Default)]
pub struct KeyMap {
    pub keys: HashMap<String, CachedKey>,
}

/// Why a presented key is refused. The caller sees one message for all of them (no oracle);
/// the reason goes to the log with the prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    Unknown,
    Mismatch,
    Expired,
}

impl KeyMap {
    /// The principal of a presented key.
    pub fn authenticate(&self, key: &str, now_micros: i64) -> Result<&Principal, KeyRefusal> {
        let entry = self.keys.get(prefix_of(key)).ok_or(KeyRefusal::Unknown)?;
        let presented = hash(key);
        if !bool::from(presented.ct_eq(&entry.hash)) {
            return Err(KeyRefusal::Mismatch);
        }
        if entry.expire_micros.is_some_and(|e| now_micros >= e) {
            return Err(KeyRefusal::Expired);
        }
        Ok(&entry.principal)
    }
}

/// Readers' handle on the current key map (replaced on every key change and periodic refresh).
pub type KeyView = tokio::sync::watch::Receiver<Arc<KeyMap>>;

#[cfg(test)]
mod tests {
    use super::*;
    use citycredit_core::auth::Role;

    #[test]
    fn generated_keys_have_a_visible_prefix_and_verify() {
        let (prefix, key) = generate();
        assert!(prefix.starts_with("cc_") && prefix.len() == 11);
        assert_eq!(prefix_of(&key), prefix);
        assert_eq!(prefix_of("my-own-long-bootstrap-secret"), BOOTSTRAP_PREFIX);
        let principal = Principal {
            id: "p".into(),
            role: Role::Operator,
            department: None,
            credential: None,
        };
        let mut map = KeyMap::default();
        map.keys.insert(
            prefix.clone(),
            CachedKey {
                hash: hash(&key),
                principal,
                expire_micros: Some(100),
            },
        );
        assert_eq!(map.authenticate(&key, 99).map(|p| p.id.as_str()), Ok("p"));
        assert_eq!(map.authenticate(&key, 100).err(), Some(KeyRefusal::Expired));
        let mut wrong = key.clone();
        wrong.replace_range(20..21, if &key[20..21] == "0" { "1" } else { "0" });
        assert_eq!(
            map.authenticate(&wrong, 0).err(),
            Some(KeyRefusal::Mismatch)
        );
        assert_eq!(
            map.authenticate(&generate().1, 0).err(),
            Some(KeyRefusal::Unknown)
        );
    }
}
