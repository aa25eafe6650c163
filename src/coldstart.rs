//! Where a cold start's CPU goes. Each init phase is timed: its wall-clock
//! span from the process's `main`, and the CPU of its own work on the
//! thread that ran it (for an async phase, the CPU of its polls: on the
//! one runtime thread, concurrent phases are told apart). One log line
//! ends init (`init phases`, with the process's CPU so far), which
//! `make bench-lambda` reads. Phases may nest (a connection's secret fetch
//! inside it); each figure counts its nested phases too. After that line,
//! timing stops: a later phase (a reconnect, a refetch) costs one atomic
//! load.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

struct Phase {
    name: &'static str,
    cpu: Duration,
    start: Duration,
    end: Duration,
}

static STARTED: OnceLock<Instant> = OnceLock::new();
static PHASES: Mutex<Vec<Phase>> = Mutex::new(Vec::new());
static DONE: AtomicBool = AtomicBool::new(false);
/// Phases kept before [`report`]: a process that never reports (the local
/// server, a test) keeps no more than this of its reconnects and refetches.
const MAX_PHASES: usize = 64;

fn cpu_clock(clock: libc::clockid_t) -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; a failure leaves zero.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

fn thread_cpu() -> Duration {
    cpu_clock(libc::CLOCK_THREAD_CPUTIME_ID)
}

fn since_start() -> Duration {
    STARTED.get_or_init(Instant::now).elapsed()
}

fn active() -> bool {
    !DONE.load(Ordering::Relaxed)
}

fn record(name: &'static str, cpu: Duration, start: Duration) {
    let end = since_start();
    if let Ok(mut phases) = PHASES.lock()
        && phases.len() < MAX_PHASES
    {
        phases.push(Phase {
            name,
            cpu,
            start,
            end,
        });
    }
}

/// Marks `main`: what the process spent before it (exec, the loader) is
/// its CPU so far.
pub fn begin() {
    let start = since_start();
    record("exec", cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID), start);
}

/// Runs `f` as the phase `name`.
pub fn sync<T>(name: &'static str, f: impl FnOnce() -> T) -> T {
    if !active() {
        return f();
    }
    let (start, cpu) = (since_start(), thread_cpu());
    let out = f();
    record(name, thread_cpu().saturating_sub(cpu), start);
    out
}

/// `future` as the phase `name`: from its first poll to its completion.
pub fn timed<F: Future>(name: &'static str, future: F) -> Timed<F> {
    Timed {
        name,
        future: Box::pin(future),
        cpu: Duration::ZERO,
        start: None,
    }
}

/// A future timed as a phase (boxed: one allocation per phase, at init).
pub struct Timed<F> {
    name: &'static str,
    future: Pin<Box<F>>,
    cpu: Duration,
    start: Option<Duration>,
}

impl<F: Future> Future for Timed<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        if !active() {
            return this.future.as_mut().poll(cx);
        }
        let start = *this.start.get_or_insert_with(since_start);
        let before = thread_cpu();
        let out = this.future.as_mut().poll(cx);
        this.cpu += thread_cpu().saturating_sub(before);
        if out.is_ready() {
            record(this.name, this.cpu, start);
        }
        out
    }
}

/// Ends init: logs every phase as `name=cpu_ms@start_ms-end_ms` and the
/// process's CPU so far, then stops timing.
pub fn report() {
    if DONE.swap(true, Ordering::Relaxed) {
        return;
    }
    let process = cpu_clock(libc::CLOCK_PROCESS_CPUTIME_ID);
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let phases = match PHASES.lock() {
        Ok(mut phases) => std::mem::take(&mut *phases),
        Err(_) => Vec::new(),
    };
    let line = render(&phases);
    tracing::info!(
        phases = %line,
        process_cpu_ms = format!("{:.3}", ms(process)),
        wall_ms = format!("{:.3}", ms(since_start())),
        "init phases"
    );
}

/// `name=cpu_ms@start_ms-end_ms`, space-separated, in the order the
/// phases ended.
fn render(phases: &[Phase]) -> String {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    phases
        .iter()
        .map(|p| {
            format!(
                "{}={:.3}@{:.3}-{:.3}",
                p.name,
                ms(p.cpu),
                ms(p.start),
                ms(p.end)
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_render_as_name_cpu_and_span_in_milliseconds() {
        let phase = |name, cpu_us, start_us, end_us| Phase {
            name,
            cpu: Duration::from_micros(cpu_us),
            start: Duration::from_micros(start_us),
            end: Duration::from_micros(end_us),
        };
        let line = render(&[phase("exec", 1_800, 0, 3), phase("db tls", 950, 700, 1_700)]);
        assert_eq!(line, "exec=1.800@0.000-0.003 db tls=0.950@0.700-1.700");
    }

    #[tokio::test]
    async fn a_timed_phase_counts_the_cpu_of_its_own_polls_only() {
        let before = thread_cpu();
        let spin = |d: Duration| {
            let until = thread_cpu() + d;
            while thread_cpu() < until {}
        };
        let timed = timed("test phase", async {
            spin(Duration::from_millis(3));
            tokio::task::yield_now().await;
            spin(Duration::from_millis(2));
        });
        timed.await;
        let phases = PHASES.lock().unwrap();
        let ours = phases.iter().find(|p| p.name == "test phase").unwrap();
        assert!(ours.cpu >= Duration::from_millis(5), "{:?}", ours.cpu);
        assert!(ours.cpu <= thread_cpu() - before);
        assert!(ours.end >= ours.start);
    }
}
