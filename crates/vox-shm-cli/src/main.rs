//! `vox-shm`: see the project README.
//!
//! ```text
//! vox-shm demo [--path PATH]            a host and a guest process exchange every tier
//! vox-shm bench [--rpc] [--quick] [--runs N] [--json F] [--svg F] [--filter S]
//! vox-shm inspect PATH [--json] [--watch]
//! vox-shm clean [--dry-run] PATH...     remove segment files no process holds
//! ```

mod bench;
mod clean;
mod demo;
mod inspect;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Shared-memory transport between processes: demo, benchmark, inspect, clean.
#[derive(Debug, Parser)]
#[command(name = "vox-shm", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start a guest process and exchange messages of all three tiers with it.
    Demo {
        /// Create the segment file here instead of in a temporary directory
        /// (a new file: an existing one is never replaced; removed at the end).
        #[arg(long)]
        path: Option<PathBuf>,
        /// Round trips per tier (at least 1).
        #[arg(long, default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..))]
        rounds: u32,
    },
    /// Two-process benchmarks against a tokio UnixStream, measured in the same run.
    Bench(bench::BenchArgs),
    /// Show the state of a live segment file without disturbing it.
    Inspect {
        /// The segment file.
        path: PathBuf,
        /// Print JSON instead of tables.
        #[arg(long)]
        json: bool,
        /// Refresh until interrupted.
        #[arg(long)]
        watch: bool,
        /// Refresh interval for --watch, in milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
    },
    /// Remove segment files that no process holds any more (left behind by a
    /// host that crashed or was killed). Files that are not vox segments, or
    /// that a live host or guest holds, are never touched.
    Clean {
        /// Segment files, or directories whose files are examined (not
        /// recursively).
        paths: Vec<PathBuf>,
        /// Only list what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// (internal) The guest side of `demo`.
    #[command(hide = true)]
    DemoGuest {
        /// Arguments appended by the host (descriptors, peer id).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
    /// (internal) The host side of one benchmark case.
    #[command(hide = true)]
    BenchHost {
        /// The case, as JSON.
        case: String,
    },
    /// (internal) The guest side of one benchmark case.
    #[command(hide = true)]
    BenchGuest {
        /// The case, as JSON.
        case: String,
        /// Arguments appended by the host (descriptors, peer id).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        rest: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.command, Command::Demo { .. } | Command::Inspect { .. } | Command::Clean { .. }) {
        // `vox-shm inspect … | head` ends quietly when `head` exits, as other
        // commands do, instead of panicking on the failed write. Our own
        // sockets never raise SIGPIPE (every send passes MSG_NOSIGNAL).
        // SAFETY: restoring a signal's default disposition, before any thread
        // starts.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    let result = match cli.command {
        Command::Demo { path, rounds } => demo::run(path, rounds),
        Command::Bench(args) => bench::run(args),
        Command::Inspect { path, json, watch, interval_ms } => inspect::run(&path, json, watch, interval_ms),
        Command::Clean { paths, dry_run } => clean::run(&paths, dry_run),
        Command::DemoGuest { rest } => demo::guest(rest),
        Command::BenchHost { case } => bench::host(&case),
        Command::BenchGuest { case, rest } => bench::guest(&case, rest),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vox-shm: {e}");
            ExitCode::from(1)
        }
    }
}

/// Errors of the command: a message for a person.
pub type Res<T = ()> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// A current-thread runtime with I/O and timers, as each process uses.
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()
}
