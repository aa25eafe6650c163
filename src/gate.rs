//! One back-off gate for every way of getting database credentials wrong.
//!
//! A missing secret, a refused `GetSecretValue`, a failed STS `AssumeRole`
//! and a password the database refuses all end the same way: the next
//! attempt waits. Without this, every request in every warm environment
//! would call Secrets Manager and STS again (throttling the whole account)
//! or try a full TCP+TLS+SCRAM login with a password already known to be
//! bad. While the gate is closed, requests get 503 with `Retry-After` at
//! once, without touching the network. Delays double from one second up to
//! the configured maximum (`DB_SECRET_REFRESH_SECONDS`), with jitter so that
//! many environments do not retry in step.
//!
//! A failed isolation self-audit goes through the same gate: while it
//! fails, requests get 503 at once instead of each logging in and
//! auditing again.

use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::clock::Clock;

const FIRST_DELAY: Duration = Duration::from_secs(1);

#[derive(Debug)]
pub struct CredentialGate {
    max_delay: Duration,
    clock: Clock,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Consecutive failures since the last success.
    failures: u32,
    /// No attempt before this instant.
    closed_until: Option<Instant>,
}

impl CredentialGate {
    pub fn new(max_delay: Duration, clock: Clock) -> Self {
        Self {
            max_delay: max_delay.max(FIRST_DELAY),
            clock,
            state: Mutex::new(State::default()),
        }
    }

    /// `Ok` when an attempt may be made now; otherwise how long until one may.
    pub fn admit(&self) -> Result<(), Duration> {
        self.admit_at(self.clock.now())
    }

    /// Records a failed attempt and closes the gate; returns for how long.
    pub fn failed(&self) -> Duration {
        self.failed_at(self.clock.now(), jitter())
    }

    /// Records a successful attempt: the next failure starts from the
    /// first delay again.
    pub fn succeeded(&self) {
        if let Ok(mut state) = self.state.lock() {
            *state = State::default();
        }
    }

    fn admit_at(&self, now: Instant) -> Result<(), Duration> {
        // A poisoned lock means a panic mid-update: fail closed.
        let state = self.state.lock().map_err(|_| self.max_delay)?;
        match state.closed_until {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// `jitter` in [0, 1): the delay is drawn from [d/2, d).
    fn failed_at(&self, now: Instant, jitter: f64) -> Duration {
        let Ok(mut state) = self.state.lock() else {
            return self.max_delay;
        };
        state.failures = state.failures.saturating_add(1);
        let exponent = state.failures.saturating_sub(1).min(20);
        let full = FIRST_DELAY
            .saturating_mul(1u32 << exponent)
            .min(self.max_delay);
        let delay = full.mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0);
        state.closed_until = Some(now + delay);
        delay
    }
}

/// A number in [0, 1) that differs between processes and calls, from the
/// standard library's randomly seeded hasher (no RNG dependency for this).
fn jitter() -> f64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        Instant::now()
            .elapsed()
            .as_nanos()
            .wrapping_add(u128::from(std::process::id())),
    );
    (hasher.finish() >> 11) as f64 / (1u64 << 53) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_until_a_failure_then_closed_for_the_delay() {
        let gate = CredentialGate::new(Duration::from_secs(60), Clock::system());
        let t0 = Instant::now();
        assert!(gate.admit_at(t0).is_ok());
        let delay = gate.failed_at(t0, 0.999);
        assert!(delay > Duration::from_millis(990) && delay <= FIRST_DELAY);
        let wait = gate.admit_at(t0 + Duration::from_millis(100)).unwrap_err();
        assert!(wait > Duration::from_millis(800), "{wait:?}");
        assert!(gate.admit_at(t0 + delay).is_ok());
    }

    #[test]
    fn delays_double_up_to_the_maximum_and_reset_on_success() {
        let gate = CredentialGate::new(Duration::from_secs(10), Clock::system());
        let t0 = Instant::now();
        let delays: Vec<u64> = (0..6)
            .map(|_| gate.failed_at(t0, 0.999_999).as_secs_f64().round() as u64)
            .collect();
        assert_eq!(delays, vec![1, 2, 4, 8, 10, 10]);
        gate.succeeded();
        assert!(gate.admit_at(t0).is_ok());
        assert_eq!(gate.failed_at(t0, 0.999_999).as_secs_f64().round(), 1.0);
    }

    #[test]
    fn jitter_spreads_the_delay_over_its_upper_half() {
        let gate = CredentialGate::new(Duration::from_secs(60), Clock::system());
        let t0 = Instant::now();
        assert_eq!(gate.failed_at(t0, 0.0), Duration::from_millis(500));
        let spread: std::collections::HashSet<u64> =
            (0..50).map(|_| (jitter() * 1000.0) as u64).collect();
        assert!(spread.len() > 10, "jitter varies: {spread:?}");
        assert!((0..1000).map(|_| jitter()).all(|j| (0.0..1.0).contains(&j)));
    }
}
