//! The web pages' sessions: kept in memory on the server, bounded in number, with an idle and
//! an absolute expiry. The browser holds only a random 256-bit id in an HttpOnly,
//! SameSite=Strict cookie; the API key the person signed in with stays on the server and is
//! sent with every call the pages make, so the gateway authenticates, limits and authorizes
//! each one exactly as it does a gRPC caller (a revoked key ends the session's use at once).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use citycredit_core::auth::Principal;
use rand::RngCore;

/// The bounds of the session store.
#[derive(Clone, Copy, Debug)]
pub struct SessionLimits {
    /// Most sessions held at once; signing in beyond it ends the least recently used one.
    pub max_sessions: usize,
    /// A session unused this long ends.
    pub idle: Duration,
    /// A session ends this long after sign-in, used or not.
    pub absolute: Duration,
}

/// One signed-in person.
#[derive(Clone, Debug)]
pub struct Session {
    /// The API key signed in with (never sent back to the browser).
    pub key: String,
    /// Who the key belongs to (as the gateway authenticated it at sign-in).
    pub principal: Principal,
    created: Instant,
    last_used: Instant,
}

/// Sessions by id.
#[derive(Debug)]
pub struct Sessions {
    limits: SessionLimits,
    by_id: Mutex<HashMap<String, Session>>,
}

/// A fresh random session id: 32 bytes (256 bits) from rand's thread generator (ChaCha12, a
/// CSPRNG seeded and reseeded from the operating system), hex.
fn new_id() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

impl Sessions {
    pub fn new(limits: SessionLimits) -> Sessions {
        Sessions {
            limits,
            by_id: Mutex::new(HashMap::new()),
        }
    }

    pub fn limits(&self) -> SessionLimits {
        self.limits
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Session>> {
        // A panic while holding the lock leaves a map that is still consistent.
        self.by_id
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn expired(&self, s: &Session, now: Instant) -> bool {
        now.duration_since(s.last_used) >= self.limits.idle
            || now.duration_since(s.created) >= self.limits.absolute
    }

    /// Starts a session and returns its id. Expired sessions are dropped first; if the store is
    /// still full, the least recently used session ends.
    pub fn create(&self, key: String, principal: Principal) -> String {
        let now = Instant::now();
        let mut map = self.lock();
        map.retain(|_, s| !self.expired(s, now));
        while map.len() >= self.limits.max_sessions.max(1) {
            let oldest = map
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(id, _)| id.clone());
            match oldest {
                Some(id) => {
                    map.remove(&id);
                }
                None => break,
            }
        }
        let id = new_id();
        map.insert(
            id.clone(),
            Session {
                key,
                principal,
                created: now,
                last_used: now,
            },
        );
        id
    }

    /// The live session with this id, marked used; an expired one is removed.
    pub fn get(&self, id: &str) -> Option<Session> {
        let now = Instant::now();
        let mut map = self.lock();
        let expired = self.expired(map.get(id)?, now);
        if expired {
            map.remove(id);
            return None;
        }
        let s = map.get_mut(id)?;
        s.last_used = now;
        Some(s.clone())
    }

    /// Ends a session.
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
    }

    /// Sessions held now (expired ones not yet swept included).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use citycredit_core::auth::Role;

    fn someone() -> Principal {
        Principal {
            id: "p".into(),
            role: Role::Operator,
            department: None,
            credential: None,
        }
    }

    #[test]
    fn ids_are_256_bit_and_distinct() {
        let s = Sessions::new(SessionLimits {
            max_sessions: 10,
            idle: Duration::from_secs(60),
            absolute: Duration::from_secs(600),
        });
        let a = s.create("k".into(), someone());
        let b = s.create("k".into(), someone());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
        assert_ne!(a, b);
    }

    #[test]
    fn the_store_is_bounded_and_ends_the_least_recently_used() {
        let s = Sessions::new(SessionLimits {
            max_sessions: 2,
            idle: Duration::from_secs(60),
            absolute: Duration::from_secs(600),
        });
        let a = s.create("k".into(), someone());
        let b = s.create("k".into(), someone());
        assert!(s.get(&a).is_some()); // a is now more recent than b
        let c = s.create("k".into(), someone());
        assert_eq!(s.len(), 2);
        assert!(s.get(&b).is_none());
        assert!(s.get(&a).is_some());
        assert!(s.get(&c).is_some());
    }

    #[test]
    fn idle_and_absolute_expiry() {
        let idle = Sessions::new(SessionLimits {
            max_sessions: 4,
            idle: Duration::from_millis(30),
            absolute: Duration::from_secs(600),
        });
        let a = idle.create("k".into(), someone());
        std::thread::sleep(Duration::from_millis(50));
        assert!(idle.get(&a).is_none());

        let absolute = Sessions::new(SessionLimits {
            max_sessions: 4,
            idle: Duration::from_secs(600),
            absolute: Duration::from_millis(60),
        });
        let b = absolute.create("k".into(), someone());
        for _ in 0..4 {
            std::thread::sleep(Duration::from_millis(20));
            let _ = absolute.get(&b);
        }
        assert!(absolute.get(&b).is_none());
    }
}
