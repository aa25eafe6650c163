//! The time the database guards keep: the credential gate's back-off and
//! the audit's re-run schedule.
//!
//! In service this is the system's clocks. A test gives the `Database` a
//! manual clock instead, frozen until the test advances it, so "no second
//! login within the back-off" and "the audit re-runs after the interval"
//! are shown by moving time, not by sleeping and hoping the machine keeps up.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

#[derive(Clone, Default)]
pub struct Clock(Option<Arc<Manual>>);

struct Manual {
    instant: Instant,
    wall: SystemTime,
    /// Nanoseconds advanced since creation.
    offset: AtomicU64,
}

impl Clock {
    /// The system's clocks.
    pub fn system() -> Self {
        Self(None)
    }

    /// A clock that stands still until [`Clock::advance`] moves it.
    pub fn manual() -> Self {
        Self(Some(Arc::new(Manual {
            instant: Instant::now(),
            wall: SystemTime::now(),
            offset: AtomicU64::new(0),
        })))
    }

    /// Moves a manual clock forward; the system clock ignores it.
    pub fn advance(&self, by: Duration) {
        if let Some(manual) = &self.0 {
            let nanos = u64::try_from(by.as_nanos()).unwrap_or(u64::MAX);
            manual.offset.fetch_add(nanos, Ordering::SeqCst);
        }
    }

    /// Monotonic time, for short delays (the gate's back-off).
    pub fn now(&self) -> Instant {
        match &self.0 {
            None => Instant::now(),
            Some(manual) => manual.instant + manual.elapsed(),
        }
    }

    /// Wall-clock time, for schedules that must count time spent frozen:
    /// a frozen execution environment's monotonic clock is not promised to
    /// advance, and the audit must not look more recent than it is.
    pub fn wall(&self) -> SystemTime {
        match &self.0 {
            None => SystemTime::now(),
            Some(manual) => manual.wall + manual.elapsed(),
        }
    }
}

impl Manual {
    fn elapsed(&self) -> Duration {
        Duration::from_nanos(self.offset.load(Ordering::SeqCst))
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => f.write_str("Clock::system"),
            Some(manual) => write!(f, "Clock::manual(+{:?})", manual.elapsed()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_advanced() {
        let clock = Clock::manual();
        let (t0, w0) = (clock.now(), clock.wall());
        assert_eq!(clock.now(), t0);
        clock.advance(Duration::from_secs(90));
        assert_eq!(clock.now() - t0, Duration::from_secs(90));
        assert_eq!(
            clock.wall().duration_since(w0).unwrap(),
            Duration::from_secs(90)
        );
    }

    #[test]
    fn the_system_clock_ignores_advance() {
        let clock = Clock::system();
        let before = clock.now();
        clock.advance(Duration::from_secs(3600));
        assert!(clock.now() - before < Duration::from_secs(60));
    }
}
