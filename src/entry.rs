//! What every binary does before its own work: logs, the process-wide TLS
//! crypto provider, and an async runtime (the JWT verifier's provider is
//! installed by the token manager, so the schema function, which verifies
//! no token, links none of it); and how its result
//! becomes an exit status. The binaries (`api`, `migrate`, the local tool)
//! differ only in what they run on it.

use std::future::Future;
use std::process::ExitCode;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Which async runtime a binary runs on.
#[derive(Clone, Copy, Debug)]
pub enum Threads {
    /// Lambda hands an execution environment one request at a time: a
    /// multi-threaded runtime there only adds thread hand-offs (most of a
    /// warm invocation's CPU in a profile) and worker start-up.
    One,
    /// The local server and tools serve or wait on several things at once.
    Many,
}

/// Sets the process up, runs `main` to completion, and turns its error
/// into `error: ...` on stderr and exit status 1.
pub fn run<F>(threads: Threads, main: impl FnOnce() -> F) -> ExitCode
where
    F: Future<Output = Result<(), BoxError>>,
{
    crate::coldstart::begin();
    crate::coldstart::sync("logs", crate::telemetry::init_logs);
    crate::coldstart::sync("tls provider", crate::token::install_tls_provider);
    let runtime = crate::coldstart::sync("runtime", || match threads {
        Threads::One => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        Threads::Many => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build(),
    });
    let runtime = match runtime {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
