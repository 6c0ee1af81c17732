//! Tokens already verified, so that a token presented again skips the signature check, which is
//! most of a read's CPU. Keyed by the whole token, so any altered token misses and is verified in
//! full; `exp` and `nbf` are checked again at every use, and an entry is reused for at most the
//! TTL. Only tokens that verified are kept, at most `size` of them, in the [`Verifier`] that
//! verified them: a verifier built with other keys starts empty.
//!
//! [`Verifier`]: super::Verifier

use std::time::{Duration, Instant};

use quick_cache::sync::Cache;

use super::verify::Principal;

/// What a verified token stands for, and what its reuse depends on.
#[derive(Clone)]
struct Entry {
    principal: Principal,
    /// `exp`, seconds since the epoch, as jsonwebtoken read it.
    exp: u64,
    /// `nbf`, when the token has one.
    nbf: Option<u64>,
    verified_at: Instant,
}

pub(crate) struct TokenCache {
    entries: Cache<String, Entry>,
    ttl: Duration,
    leeway: u64,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("capacity", &self.entries.capacity())
            .field("ttl", &self.ttl)
            .field("leeway", &self.leeway)
            .finish_non_exhaustive()
    }
}

impl TokenCache {
    /// A cache of at most `size` tokens, each reused for at most `ttl`, with the verifier's clock
    /// leeway; `None` (no caching) when either is zero.
    pub(crate) fn new(size: usize, ttl: Duration, leeway: u64) -> Option<Self> {
        (size > 0 && !ttl.is_zero()).then(|| TokenCache {
            entries: Cache::new(size),
            ttl,
            leeway,
        })
    }

    /// The principal of `token` if it verified less than the TTL before `at` and its `exp` and
    /// `nbf` still hold at `now` (seconds since the epoch); an entry that no longer does is dropped.
    pub(crate) fn get(&self, token: &str, now: u64, at: Instant) -> Option<Principal> {
        let entry = self.entries.get(token)?;
        if self.usable(&entry, now, at) {
            return Some(entry.principal);
        }
        self.entries.remove_if(token, |e| !self.usable(e, now, at));
        None
    }

    /// Keeps `token`, verified at `at`, with the `exp` and `nbf` its verification checked.
    pub(crate) fn insert(
        &self,
        token: &str,
        principal: &Principal,
        exp: u64,
        nbf: Option<u64>,
        at: Instant,
    ) {
        let entry = Entry {
            principal: principal.clone(),
            exp,
            nbf,
            verified_at: at,
        };
        self.entries.insert(token.to_owned(), entry);
    }

    /// The checks jsonwebtoken makes on `exp` and `nbf` (with the same leeway), and the TTL.
    fn usable(&self, entry: &Entry, now: u64, at: Instant) -> bool {
        at.saturating_duration_since(entry.verified_at) < self.ttl
            && entry.exp >= now.saturating_sub(self.leeway)
            && entry
                .nbf
                .is_none_or(|nbf| nbf <= now.saturating_add(self.leeway))
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 2_000_000_000;
    const LEEWAY: u64 = 30;

    fn principal() -> Principal {
        Principal {
            sub: "usr_01".to_owned(),
            admin: false,
        }
    }

    fn cache() -> TokenCache {
        TokenCache::new(16, Duration::from_secs(300), LEEWAY).unwrap()
    }

    #[test]
    fn a_zero_size_or_ttl_turns_caching_off() {
        assert!(TokenCache::new(0, Duration::from_secs(300), LEEWAY).is_none());
        assert!(TokenCache::new(16, Duration::ZERO, LEEWAY).is_none());
    }

    #[test]
    fn only_the_exact_token_hits() {
        let (cache, at) = (cache(), Instant::now());
        cache.insert("aaa.bbb.ccc", &principal(), NOW + 3600, None, at);
        assert_eq!(cache.get("aaa.bbb.ccc", NOW, at), Some(principal()));
        for other in [
            "aaa.bbb.ccd",
            "aaa.bbb.cc",
            "aaa.bbb.ccc ",
            "Aaa.bbb.ccc",
            "",
        ] {
            assert_eq!(cache.get(other, NOW, at), None, "{other:?}");
        }
    }

    #[test]
    fn an_entry_past_its_exp_is_refused_and_dropped() {
        let (cache, at) = (cache(), Instant::now());
        let exp = NOW + 60;
        cache.insert("t", &principal(), exp, None, at);
        // Within the leeway, as jsonwebtoken accepts it.
        assert!(cache.get("t", exp + LEEWAY, at).is_some());
        assert_eq!(cache.get("t", exp + LEEWAY + 1, at), None);
        assert_eq!(cache.len(), 0);
        assert_eq!(cache.get("t", NOW, at), None, "dropped, not kept for later");
    }

    #[test]
    fn an_entry_before_its_nbf_is_refused() {
        let (cache, at) = (cache(), Instant::now());
        let nbf = NOW + 600;
        cache.insert("t", &principal(), NOW + 3600, Some(nbf), at);
        // A clock set back below `nbf - leeway` refuses it again.
        assert_eq!(cache.get("t", nbf - LEEWAY - 1, at), None);
        cache.insert("t", &principal(), NOW + 3600, Some(nbf), at);
        assert!(cache.get("t", nbf - LEEWAY, at).is_some());
    }

    #[test]
    fn an_entry_is_reused_for_at_most_the_ttl() {
        let (cache, at) = (cache(), Instant::now());
        cache.insert("t", &principal(), NOW + 86_400, None, at);
        assert!(cache.get("t", NOW, at + Duration::from_secs(299)).is_some());
        assert_eq!(cache.get("t", NOW, at + Duration::from_secs(300)), None);
        assert_eq!(cache.len(), 0);
    }

    #[test]
    fn the_cache_holds_at_most_its_size() {
        let (cache, at) = (cache(), Instant::now());
        for i in 0..1000 {
            cache.insert(&format!("token-{i}"), &principal(), NOW + 3600, None, at);
        }
        assert!(cache.len() <= 16, "{}", cache.len());
    }
}
