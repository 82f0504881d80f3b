//! The machine's floor for a round trip between two processes that sleep
//! while they wait, measured in the same run as everything else: a counter
//! passed through one 32-bit word each way, the waiting side asleep in
//! `FUTEX_WAIT` until the other side's `FUTEX_WAKE`. No framing, no runtime,
//! no polling: one wake-up of a sleeping process per hop, which every
//! transport that sleeps pays (vox-shm's `park`, the socket). On a VM whose
//! idle vCPUs halt, that wake-up is most of a park round trip, whatever
//! carries it. Linux only (`no_futex.rs` elsewhere).

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::cache_line::Lines;
use super::model::{reap_guest, time_round_trips, Case, Measured};
use crate::Res;

/// Whether this build has the futex case.
pub const BUILT: bool = true;

/// The host's word at the start of the page, the guest's two cache lines on.
const GUEST_WORD: usize = 128;
/// The host's last value: the guest stops.
const STOP: u32 = u32::MAX;
/// The longest one sleep lasts before the sleeper checks on the other side.
const NAP: Duration = Duration::from_millis(100);
/// A guest that sees no new value for this long gives up.
const GUEST_PATIENCE: Duration = Duration::from_secs(30);

/// Sleeps while `word` holds `seen`, at most [`NAP`]; returns at once if it
/// already holds something else. `true` if the nap ran out.
fn sleep_while(word: &AtomicU32, seen: u32) -> bool {
    let nap = libc::timespec { tv_sec: 0, tv_nsec: NAP.as_nanos() as libc::c_long };
    // SAFETY: `word` is a live, 4-aligned u32 in a mapping shared between
    // processes (hence no FUTEX_PRIVATE_FLAG); the kernel only reads it and
    // `nap` for the length of the call; the last two arguments are unused by
    // FUTEX_WAIT.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            seen,
            &nap as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
    rc == -1 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ETIMEDOUT)
}

/// Wakes the other side if it sleeps on `word`.
fn wake(word: &AtomicU32) {
    // SAFETY: as in `sleep_while`; FUTEX_WAKE reads no memory but the
    // address it is given, and ignores the last three arguments.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            1u32,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
}

/// The host of the sleeping floor: spawns `cmd` (the guest) with the page
/// and times `case.count` round trips after a warm-up, as the other round
/// trips.
pub fn host(case: &Case, cmd: Command) -> Res<Measured> {
    let (lines, mut child) = Lines::spawn_with(cmd)?;
    let (mine, theirs) = (lines.word(0), lines.word(GUEST_WORD));
    let m = time_round_trips(case.count, |seq| {
        let v = u32::try_from(seq).ok().filter(|&v| v != STOP).ok_or("too many round trips for a u32 counter")?;
        // Release/Acquire: the counter is all that travels; the futex call
        // re-reads the word, so a wake-up that comes first is not lost.
        mine.store(v, Ordering::Release);
        wake(mine);
        loop {
            let seen = theirs.load(Ordering::Acquire);
            if seen == v {
                return Ok(());
            }
            if sleep_while(theirs, seen) {
                if let Some(status) = child.try_wait()? {
                    return Err(format!("guest exited mid-run: {status}").into());
                }
            }
        }
    })?;
    mine.store(STOP, Ordering::Release);
    wake(mine);
    reap_guest(child)?;
    Ok(m)
}

/// The guest of the sleeping floor: echoes each counter value until told to
/// stop, asleep in between.
pub fn guest(rest: &[String]) -> Res {
    let lines = Lines::adopt(rest)?;
    let (host, mine) = (lines.word(0), lines.word(GUEST_WORD));
    let mut want = 1u32;
    let mut last_progress = Instant::now();
    loop {
        let v = host.load(Ordering::Acquire);
        if v == want {
            mine.store(want, Ordering::Release);
            wake(mine);
            want += 1;
            last_progress = Instant::now();
            continue;
        }
        if v == STOP {
            return Ok(());
        }
        // Otherwise it is the value already answered (0, the page's initial
        // content, before the first).
        if v != want - 1 {
            return Err(format!("host wrote {v}, expected {} or {want}", want - 1).into());
        }
        if sleep_while(host, v) && last_progress.elapsed() > GUEST_PATIENCE {
            return Err("the host stopped sending".into());
        }
    }
}
