//! This execution environment's share of each tenant's request rate.
//!
//! A tenant's rate is one token bucket in the database (`tenant_rate`),
//! shared by every execution environment. Writing it on every request would
//! make a hot tenant's row the lock all of its requests queue on, and every
//! GET a write. Instead an environment takes tokens in batches (a *lease*)
//! inside a request's own transaction (`app_enter_tenant`'s `want`), spends
//! them locally, and asks again when they run out or expire. A lease lives
//! at most [`LEASE_LIFETIME`], so tokens an environment cannot use soon go
//! unspent rather than burst later.
//!
//! The batch adapts per tenant: it doubles while a lease is spent within
//! half its lifetime and halves when one expires unspent, between 1 and
//! `TENANT_LEASE_MAX`. A quiet tenant asks for one token at a time; a hot one
//! writes its row a few times a second, whatever its rate.
//!
//! When the bucket is empty the database says when the next token will be
//! there; until then this environment answers 429 itself, without a round
//! trip, so a throttled tenant costs the shared database nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long leased tokens may be spent.
pub const LEASE_LIFETIME: Duration = Duration::from_secs(1);

/// Tenants remembered before expired entries are swept.
const SWEEP_AT: usize = 4096;

/// Marks a lease of a tier without a rate limit.
const UNLIMITED: u32 = u32::MAX;

#[derive(Debug)]
struct Lease {
    tokens: u32,
    leased_at: Instant,
    expires: Instant,
    batch: u32,
    denied_until: Option<Instant>,
}

/// What this environment decides before a request reaches the database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Spend a leased token: ask the database for none.
    Leased,
    /// Ask the database for this many tokens (this request's and the next).
    Ask(u32),
    /// Over the rate: refuse without a round trip, for this long.
    Throttled(Duration),
}

pub struct Leases {
    tenants: Mutex<HashMap<String, Lease>>,
    max_batch: u32,
}

impl Leases {
    pub fn new(max_batch: u32) -> Self {
        Self {
            tenants: Mutex::new(HashMap::new()),
            max_batch: max_batch.max(1),
        }
    }

    /// Admits one request of `tenant` at `now`, or says how to.
    pub fn admit(&self, tenant: &str, now: Instant) -> Admission {
        let Ok(mut tenants) = self.tenants.lock() else {
            // A poisoned lock loses the local lease, not the limit: ask.
            return Admission::Ask(1);
        };
        let Some(lease) = tenants.get_mut(tenant) else {
            return Admission::Ask(1);
        };
        let was_denied = match lease.denied_until {
            Some(until) if now < until => return Admission::Throttled(until - now),
            Some(_) => {
                lease.denied_until = None;
                true
            }
            None => false,
        };
        if now < lease.expires && lease.tokens > 0 {
            if lease.tokens != UNLIMITED {
                lease.tokens -= 1;
            }
            return Admission::Leased;
        }
        // The lease ran out: size the next one by how it went (after a
        // refusal there was no lease to judge).
        let unspent = lease.tokens > 0 && lease.tokens != UNLIMITED;
        if !was_denied && unspent {
            lease.batch = (lease.batch / 2).max(1);
        } else if !was_denied && lease.tokens == 0 && now < lease.leased_at + LEASE_LIFETIME / 2 {
            lease.batch = (lease.batch * 2).min(self.max_batch);
        }
        Admission::Ask(lease.batch)
    }

    /// The database granted `granted` tokens (-1: no rate limit) to a
    /// request that asked; that request spends one.
    pub fn granted(&self, tenant: &str, granted: i32, now: Instant) {
        let Ok(mut tenants) = self.tenants.lock() else {
            return;
        };
        if tenants.len() >= SWEEP_AT {
            tenants.retain(|_, l| now < l.expires || l.denied_until.is_some_and(|d| now < d));
        }
        let lease = tenants.entry(tenant.to_owned()).or_insert(Lease {
            tokens: 0,
            leased_at: now,
            expires: now,
            batch: 1,
            denied_until: None,
        });
        lease.tokens = match granted {
            -1 => UNLIMITED,
            n => u32::try_from(n).unwrap_or(0).saturating_sub(1),
        };
        lease.leased_at = now;
        lease.expires = now + LEASE_LIFETIME;
        lease.denied_until = None;
    }

    /// The bucket is empty: refuse locally until `retry` has passed.
    pub fn denied(&self, tenant: &str, retry: Duration, now: Instant) {
        let Ok(mut tenants) = self.tenants.lock() else {
            return;
        };
        let lease = tenants.entry(tenant.to_owned()).or_insert(Lease {
            tokens: 0,
            leased_at: now,
            expires: now,
            batch: 1,
            denied_until: None,
        });
        lease.tokens = 0;
        lease.denied_until = Some(now + retry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: &str = "acme";

    #[test]
    fn a_new_tenant_asks_for_one_token() {
        let leases = Leases::new(16);
        assert_eq!(leases.admit(T, Instant::now()), Admission::Ask(1));
    }

    #[test]
    fn leased_tokens_are_spent_locally_then_asked_for_again() {
        let leases = Leases::new(16);
        let t0 = Instant::now();
        leases.granted(T, 3, t0);
        assert_eq!(leases.admit(T, t0), Admission::Leased);
        assert_eq!(leases.admit(T, t0), Admission::Leased);
        // Spent within half the lifetime: the next batch doubles.
        assert_eq!(leases.admit(T, t0), Admission::Ask(2));
    }

    #[test]
    fn the_batch_grows_to_the_cap_and_shrinks_when_tokens_expire() {
        let leases = Leases::new(4);
        let mut now = Instant::now();
        leases.granted(T, 1, now);
        assert_eq!(leases.admit(T, now), Admission::Ask(2));
        leases.granted(T, 2, now);
        assert_eq!(leases.admit(T, now), Admission::Leased);
        assert_eq!(leases.admit(T, now), Admission::Ask(4));
        leases.granted(T, 4, now);
        for _ in 0..3 {
            assert_eq!(leases.admit(T, now), Admission::Leased);
        }
        assert_eq!(leases.admit(T, now), Admission::Ask(4), "capped");
        // A lease that expires unspent halves the next one.
        leases.granted(T, 4, now);
        now += LEASE_LIFETIME;
        assert_eq!(leases.admit(T, now), Admission::Ask(2));
    }

    #[test]
    fn expired_tokens_are_not_spent() {
        let leases = Leases::new(16);
        let t0 = Instant::now();
        leases.granted(T, 10, t0);
        assert!(matches!(
            leases.admit(T, t0 + LEASE_LIFETIME),
            Admission::Ask(_)
        ));
    }

    #[test]
    fn a_denied_tenant_is_throttled_locally_until_the_retry() {
        let leases = Leases::new(16);
        let t0 = Instant::now();
        leases.denied(T, Duration::from_millis(200), t0);
        assert_eq!(
            leases.admit(T, t0 + Duration::from_millis(50)),
            Admission::Throttled(Duration::from_millis(150))
        );
        assert_eq!(
            leases.admit(T, t0 + Duration::from_millis(200)),
            Admission::Ask(1)
        );
        // Other tenants are not affected.
        assert_eq!(leases.admit("globex", t0), Admission::Ask(1));
    }

    #[test]
    fn an_unlimited_tier_is_not_asked_again_until_the_lease_expires() {
        let leases = Leases::new(16);
        let t0 = Instant::now();
        leases.granted(T, -1, t0);
        for _ in 0..1000 {
            assert_eq!(leases.admit(T, t0), Admission::Leased);
        }
        assert!(matches!(
            leases.admit(T, t0 + LEASE_LIFETIME),
            Admission::Ask(_)
        ));
    }
}
