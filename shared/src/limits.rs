//! Rate limits per principal, for the whole deployment: a principal may make `writes` writes and
//! `reads` reads a minute, a fixed window of the wall clock. The count is kept in the store, so
//! every process and Lambda instance draws on one allowance. To spare the store a round trip per
//! request, a process takes the allowance in small leases and serves a lease's requests itself;
//! what a lease took and did not use is lost with its window (stricter, never looser). A refused
//! request takes nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[cfg(test)]
use crate::store::granted;
use crate::store::{Store, StoreError};

/// A window's length, in microseconds.
const WINDOW_US: i64 = 60_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateSettings {
    /// Writes (`POST`, `PATCH`, `DELETE`) a principal may make a minute; 0 turns limits off.
    pub writes: u64,
    /// Reads (`GET`) a principal may make a minute; 0 turns limits off.
    pub reads: u64,
    /// Requests a process takes from the shared allowance at once.
    pub lease: u64,
}

impl Default for RateSettings {
    fn default() -> Self {
        RateSettings {
            writes: 600,
            reads: 3000,
            lease: 5,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RateClass {
    Read,
    Write,
}

impl RateClass {
    pub fn name(self) -> &'static str {
        match self {
            RateClass::Read => "read",
            RateClass::Write => "write",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Admitted,
    /// Over the limit: the whole seconds until the next window (1 to 60).
    Refused {
        retry_after_secs: u64,
    },
}

#[derive(Default)]
struct Lease {
    window: i64,
    left: u64,
    /// The store had nothing left for this window: refuse without asking again until it ends.
    exhausted: bool,
}

/// Admits or refuses requests; one per process, shared by its requests.
pub struct Limiter {
    store: Arc<dyn Store>,
    settings: RateSettings,
    /// Per principal and class, one lease; its lock makes the requests of one process that find
    /// it spent wait for one take from the store, rather than each taking at once.
    leases: Mutex<HashMap<(String, RateClass), SharedLease>>,
}

type SharedLease = Arc<tokio::sync::Mutex<Lease>>;

impl Limiter {
    pub fn new(store: Arc<dyn Store>, settings: RateSettings) -> Self {
        Limiter {
            store,
            settings,
            leases: Mutex::new(HashMap::new()),
        }
    }

    fn limit(&self, class: RateClass) -> u64 {
        match class {
            RateClass::Read => self.settings.reads,
            RateClass::Write => self.settings.writes,
        }
    }

    /// Counts a request of `principal` against its allowance, or refuses it.
    pub async fn admit(&self, principal: &str, class: RateClass) -> Result<Admission, StoreError> {
        let limit = self.limit(class);
        if limit == 0 {
            return Ok(Admission::Admitted);
        }
        let now = chrono::Utc::now().timestamp_micros();
        let window = now.div_euclid(WINDOW_US);
        let key = (principal.to_owned(), class);
        let lease = {
            let mut leases = self.leases.lock().unwrap_or_else(|p| p.into_inner());
            // Leases of past windows are worth nothing: forget them now and then.
            if leases.len() > 10_000 {
                leases.retain(|_, l| l.try_lock().map_or(true, |l| l.window == window));
            }
            leases.entry(key).or_default().clone()
        };
        let mut lease = lease.lock().await;
        let left_us = (window + 1) * WINDOW_US - now;
        let refused = Admission::Refused {
            retry_after_secs: (left_us as u64).div_ceil(1_000_000).clamp(1, 60),
        };
        if lease.window == window {
            if lease.left > 0 {
                lease.left -= 1;
                return Ok(Admission::Admitted);
            }
            if lease.exhausted {
                return Ok(refused);
            }
        }
        let want = self.settings.lease.clamp(1, limit);
        let granted = self
            .store
            .take_allowance(principal, class.name(), window, want, limit)
            .await?;
        *lease = Lease {
            window,
            left: granted.saturating_sub(1),
            exhausted: granted == 0,
        };
        if granted == 0 {
            return Ok(refused);
        }
        Ok(Admission::Admitted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taker_gets_what_is_left_under_the_limit() {
        assert_eq!(granted(5, 5, 10), 5);
        assert_eq!(granted(5, 10, 10), 5);
        assert_eq!(granted(5, 12, 10), 3);
        assert_eq!(granted(5, 15, 10), 0);
        assert_eq!(granted(5, 40, 10), 0);
    }

    #[tokio::test]
    async fn one_process_admits_the_limit_and_refuses_the_rest() {
        let store: Arc<dyn Store> = Arc::new(crate::store::sqlite::SqliteStore::new(
            crate::store::sqlite::SqliteDb::open(":memory:").unwrap(),
        ));
        let settings = RateSettings {
            writes: 7,
            reads: 0,
            lease: 3,
        };
        let limiter = Limiter::new(store, settings);
        let mut admitted = 0;
        for _ in 0..20 {
            match limiter.admit("u", RateClass::Write).await.unwrap() {
                Admission::Admitted => admitted += 1,
                Admission::Refused { retry_after_secs } => {
                    assert!((1..=60).contains(&retry_after_secs))
                }
            }
        }
        // A window boundary in the middle of the loop would give a second allowance.
        assert!(admitted == 7 || admitted == 14, "{admitted}");
        assert_eq!(
            limiter.admit("v", RateClass::Read).await.unwrap(),
            Admission::Admitted,
            "reads unlimited"
        );
    }
}
