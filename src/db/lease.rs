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
//! trip, so a throttled tenant costs the shared database nothing. Every
//! environment of the tenant hears the same short wait (the time to the next
//! token: 10 ms at 100 requests/s), so each one refused again waits twice as
//! long as the last time, up to a lease's lifetime: a flood from many
//! environments then asks a few times a second each, not once a token.

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
    /// Whether that refusal is for the concurrency cap, not the rate.
    busy: bool,
    /// The last local refusal's length; zero once tokens were granted.
    backoff: Duration,
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
    /// Over the concurrency cap a moment ago: refuse without a round trip,
    /// for this long.
    Busy(Duration),
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
        let refused = lease.denied_until.take();
        if let Some(until) = refused.filter(|until| now < *until) {
            lease.denied_until = Some(until);
            return if lease.busy {
                Admission::Busy(until - now)
            } else {
                Admission::Throttled(until - now)
            };
        }
        if now < lease.expires && lease.tokens > 0 {
            if lease.tokens != UNLIMITED {
                lease.tokens -= 1;
            }
            return Admission::Leased;
        }
        if refused.is_some() {
            // Refused last time: nothing was spent to size the batch by.
            return Admission::Ask(lease.batch);
        }
        // The lease ran out: size the next one by how it went.
        if lease.tokens > 0 && lease.tokens != UNLIMITED {
            lease.batch = (lease.batch / 2).max(1);
        } else if lease.tokens == 0 && now < lease.leased_at + LEASE_LIFETIME / 2 {
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
        let lease = entry(&mut tenants, tenant, now);
        lease.tokens = match granted {
            -1 => UNLIMITED,
            n => u32::try_from(n).unwrap_or(0).saturating_sub(1),
        };
        lease.leased_at = now;
        lease.expires = now + LEASE_LIFETIME;
        lease.denied_until = None;
        lease.backoff = Duration::ZERO;
    }

    /// The bucket is empty: refuse locally until `retry` has passed, or
    /// twice as long as the last refusal if there was no grant since (at
    /// most [`LEASE_LIFETIME`], unless `retry` is longer).
    pub fn denied(&self, tenant: &str, retry: Duration, now: Instant) {
        let Ok(mut tenants) = self.tenants.lock() else {
            return;
        };
        let lease = entry(&mut tenants, tenant, now);
        lease.tokens = 0;
        lease.backoff = (lease.backoff * 2).clamp(retry, LEASE_LIFETIME.max(retry));
        lease.denied_until = Some(now + lease.backoff);
        lease.busy = false;
    }

    /// The tenant's concurrent transactions were all taken: refuse locally
    /// until `retry` has passed (backing off as [`Leases::denied`] does),
    /// instead of a round trip per request that would only be refused
    /// again while the transactions holding the slots wait for CPU. A
    /// request that had spent a leased token was not served: the token is
    /// this environment's again, and the pause does not count against the
    /// lease's lifetime (the tokens were taken at the tenant's rate).
    pub fn busy(&self, tenant: &str, retry: Duration, spent_leased: bool, now: Instant) {
        let Ok(mut tenants) = self.tenants.lock() else {
            return;
        };
        let lease = entry(&mut tenants, tenant, now);
        if spent_leased && lease.tokens != UNLIMITED {
            lease.tokens += 1;
        }
        lease.backoff = (lease.backoff * 2).clamp(retry, LEASE_LIFETIME.max(retry));
        lease.denied_until = Some(now + lease.backoff);
        lease.busy = true;
        if now < lease.expires {
            lease.expires += lease.backoff;
        }
    }
}

/// `tenant`'s lease, an empty one if it has none yet.
fn entry<'a>(tenants: &'a mut HashMap<String, Lease>, tenant: &str, now: Instant) -> &'a mut Lease {
    tenants.entry(tenant.to_owned()).or_insert(Lease {
        tokens: 0,
        leased_at: now,
        expires: now,
        batch: 1,
        denied_until: None,
        busy: false,
        backoff: Duration::ZERO,
    })
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
    fn refusals_in_a_row_back_off_up_to_a_lease_lifetime() {
        let leases = Leases::new(16);
        let retry = Duration::from_millis(10);
        let mut now = Instant::now();
        let mut waits = Vec::new();
        for _ in 0..9 {
            leases.denied(T, retry, now);
            let Admission::Throttled(wait) = leases.admit(T, now) else {
                panic!("refused locally");
            };
            waits.push(wait.as_millis());
            now += wait;
        }
        assert_eq!(waits, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        // A grant starts over.
        leases.granted(T, 1, now);
        leases.denied(T, retry, now);
        assert_eq!(leases.admit(T, now), Admission::Throttled(retry));
    }

    #[test]
    fn a_busy_tenant_waits_locally_and_keeps_the_token_it_was_not_served_with() {
        let leases = Leases::new(16);
        let t0 = Instant::now();
        leases.granted(T, 2, t0);
        assert_eq!(leases.admit(T, t0), Admission::Leased);
        leases.busy(T, Duration::from_millis(100), true, t0);
        assert_eq!(
            leases.admit(T, t0 + Duration::from_millis(40)),
            Admission::Busy(Duration::from_millis(60))
        );
        let later = t0 + Duration::from_millis(100);
        assert_eq!(leases.admit(T, later), Admission::Leased);
        assert!(matches!(leases.admit(T, later), Admission::Ask(_)));
    }

    #[test]
    fn a_pause_for_the_cap_does_not_expire_leased_tokens() {
        let leases = Leases::new(16);
        let t0 = Instant::now();
        leases.granted(T, 3, t0);
        let mut now = t0 + LEASE_LIFETIME / 2;
        // Refused for the cap three times in a row: 100, 200, 400 ms.
        for _ in 0..3 {
            assert_eq!(leases.admit(T, now), Admission::Leased);
            leases.busy(T, Duration::from_millis(100), true, now);
            let Admission::Busy(wait) = leases.admit(T, now) else {
                panic!("refused locally");
            };
            now += wait;
        }
        assert_eq!(now - t0, Duration::from_millis(1200));
        assert_eq!(leases.admit(T, now), Admission::Leased);
        assert_eq!(leases.admit(T, now), Admission::Leased);
        assert!(matches!(leases.admit(T, now), Admission::Ask(_)));
    }

    #[test]
    fn a_longer_retry_than_a_lease_lifetime_is_kept() {
        let leases = Leases::new(16);
        let t0 = Instant::now();
        leases.denied(T, Duration::from_secs(5), t0);
        assert_eq!(
            leases.admit(T, t0),
            Admission::Throttled(Duration::from_secs(5))
        );
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
