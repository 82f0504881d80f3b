//! The machine's floor for a cross-process round trip, measured in the same
//! run as everything else: two processes pass a counter through shared
//! memory, one cache line each way, spinning, with no framing, no runtime and
//! no system call. On a VM the floor itself changes from run to run (where
//! the host places the two vCPUs), so set against it, a transport's figures
//! show how much of their spread is the machine's.

use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child, Command};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::model::{reap_guest, time_round_trips, Case, Measured};
use super::{pass_fd, take_fd};
use crate::Res;

const MAP_LEN: usize = 4096;
/// The host's line and the guest's, two lines apart (a CPU may fetch lines in
/// adjacent pairs).
const GUEST_LINE: usize = 128;
/// The host's last value: the guest stops.
const STOP: u64 = u64::MAX;
/// Spins between checks that the other process is still there.
const CHECK_EVERY: u64 = 1 << 20;
/// A guest that sees no new value for this long gives up.
const GUEST_PATIENCE: Duration = Duration::from_secs(30);

/// A shared mapping of a file's first page, holding the two counters (this
/// floor's, and the sleeping floor's in `futex`).
pub(super) struct Lines {
    base: NonNull<u8>,
}

impl Lines {
    fn create() -> Res<(OwnedFd, Lines)> {
        // An unlinked temporary file (tmpfs on most Linux systems): macOS
        // has no memfd, and the page never needs to reach a disk.
        let file = tempfile::tempfile()?;
        file.set_len(MAP_LEN as u64)?;
        let fd = OwnedFd::from(file);
        let lines = Lines::map(&fd)?;
        Ok((fd, lines))
    }

    fn map(fd: &OwnedFd) -> Res<Lines> {
        // SAFETY: a fresh shared mapping of MAP_LEN bytes of `fd` (at least
        // that long: the host truncated it to MAP_LEN, and the guest checks
        // below); nothing else is mapped at the address the kernel picks.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                MAP_LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error().into());
        }
        let base = NonNull::new(p.cast::<u8>()).ok_or("mmap returned null")?;
        Ok(Lines { base })
    }

    /// The host's side: a fresh page, mapped here and handed to the guest
    /// `cmd` spawns (as `--line-fd`).
    pub(super) fn spawn_with(mut cmd: Command) -> Res<(Lines, Child)> {
        let (fd, lines) = Lines::create()?;
        pass_fd(&mut cmd, "line-fd", &fd);
        let child = cmd.spawn()?;
        drop(fd); // the guest has its own
        Ok((lines, child))
    }

    /// The guest's side: the file the host passed as `--line-fd`, mapped.
    pub(super) fn adopt(rest: &[String]) -> Res<Lines> {
        let fd = take_fd(rest, "line-fd")?.ok_or("the floor's guest needs --line-fd")?;
        let file = std::fs::File::from(fd);
        let len = file.metadata()?.len();
        if len < MAP_LEN as u64 {
            return Err(format!("--line-fd is {len} bytes, not {MAP_LEN}").into());
        }
        Lines::map(&OwnedFd::from(file))
    }

    fn at(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: offset + 8 <= MAP_LEN and 8-aligned (page-aligned base);
        // the page stays mapped while `self` lives, any bit pattern is a valid
        // AtomicU64, and the other process only ever accesses it atomically.
        unsafe { &*self.base.as_ptr().add(offset).cast::<AtomicU64>() }
    }

    /// The 32-bit word at `offset` (a futex word). Panics unless it is
    /// 4-aligned and inside the page.
    #[cfg(target_os = "linux")]
    pub(super) fn word(&self, offset: usize) -> &std::sync::atomic::AtomicU32 {
        assert!(offset % 4 == 0 && offset + 4 <= MAP_LEN, "word at {offset}");
        // SAFETY: inside the mapping and 4-aligned (checked above, base is
        // page-aligned); the page stays mapped while `self` lives, any bit
        // pattern is a valid AtomicU32, and the other process only ever
        // accesses it atomically (or through the futex system call).
        unsafe { &*self.base.as_ptr().add(offset).cast::<std::sync::atomic::AtomicU32>() }
    }
    fn host(&self) -> &AtomicU64 {
        self.at(0)
    }
    fn guest(&self) -> &AtomicU64 {
        self.at(GUEST_LINE)
    }
}

impl Drop for Lines {
    fn drop(&mut self) {
        // SAFETY: our own mapping of MAP_LEN bytes, no longer borrowed (the
        // references `at` hands out borrow `self`).
        unsafe { libc::munmap(self.base.as_ptr().cast(), MAP_LEN) };
    }
}

/// The host of the floor case: spawns `cmd` (the guest) with the file and
/// times `case.count` round trips after a warm-up, as the other round trips.
pub fn host(case: &Case, cmd: Command) -> Res<Measured> {
    let (lines, mut child) = Lines::spawn_with(cmd)?;
    let m = time_round_trips(case.count, |seq| {
        // Release/Acquire: the counter is all that travels, but the pairing
        // is what a real transport's publication costs.
        lines.host().store(seq, Ordering::Release);
        let mut spins = 0u64;
        while lines.guest().load(Ordering::Acquire) != seq {
            spins += 1;
            if spins % CHECK_EVERY == 0 {
                if let Some(status) = child.try_wait()? {
                    return Err(format!("guest exited mid-run: {status}").into());
                }
            }
        }
        Ok(())
    })?;
    lines.host().store(STOP, Ordering::Release);
    reap_guest(child)?;
    Ok(m)
}

/// The guest of the floor case: echoes each counter value until told to stop.
pub fn guest(rest: &[String]) -> Res {
    let lines = Lines::adopt(rest)?;
    let (mut want, mut spins) = (1u64, 0u64);
    let mut progress = (want, Instant::now());
    loop {
        let v = lines.host().load(Ordering::Acquire);
        if v == want {
            lines.guest().store(want, Ordering::Release);
            want += 1;
            continue;
        }
        if v == STOP {
            return Ok(());
        }
        // Otherwise it is the value already answered (0, the file's initial
        // content, before the first).
        if v != want - 1 {
            return Err(format!("host wrote {v}, expected {} or {want}", want - 1).into());
        }
        spins += 1;
        if spins % CHECK_EVERY == 0 {
            if progress.0 != want {
                progress = (want, Instant::now());
            } else if progress.1.elapsed() > GUEST_PATIENCE {
                return Err("the host stopped sending".into());
            }
        }
    }
}
