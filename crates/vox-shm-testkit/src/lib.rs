//! Helpers shared by the cross-process tests: running the peer binary with a
//! time bound.

use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// A `Command` for the helper peer binary at `bin` (integration tests pass
/// `env!("CARGO_BIN_EXE_shm-test-peer")`), with stdout and stderr captured.
pub fn peer_command(bin: &str) -> Command {
    let mut c = Command::new(bin);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

/// Waits for `child` at most `limit`; kills it and panics if it overruns.
pub fn wait_bounded(mut child: Child, limit: Duration) -> Output {
    let start = Instant::now();
    loop {
        match child.try_wait().expect("try_wait") {
            Some(_) => return child.wait_with_output().expect("collect output"),
            None if start.elapsed() > limit => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("collect output");
                panic!(
                    "peer process overran {limit:?}\nstdout: {}\nstderr: {}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            None => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// True if the process ended by panicking (Rust's exit code 101).
pub fn panicked(status: &ExitStatus) -> bool {
    status.code() == Some(101)
}
