//! The doorbell (spec A7): a non-blocking `AF_UNIX` stream socket pair, one
//! end per side of a link, used to wake the other side and to notice its death.
//!
//! A signal is one byte; any number of pending bytes mean "look again", so
//! signals coalesce. The peer's death shows up as end-of-file when reading (its
//! end was closed by the kernel at exit) or `EPIPE` when writing. Writes use
//! `MSG_NOSIGNAL`, so a dead peer never raises `SIGPIPE`.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, IntoRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use crate::fd;

/// Outcome of [`Doorbell::signal`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SignalResult {
    /// The byte was written.
    Sent,
    /// The socket buffer is full: the peer has wake-ups pending anyway.
    BufferFull,
    /// The peer's end is closed.
    PeerDead,
}

/// One end of a doorbell pair, not yet registered with a runtime. This is what
/// travels to a guest (inherited, or passed over a Unix socket).
#[derive(Debug)]
pub struct DoorbellHandle(OwnedFd);

impl DoorbellHandle {
    /// Command-line argument name used for the guest's descriptor number.
    pub const ARG_NAME: &'static str = "--doorbell-fd";

    /// Wraps an owned stream-socket descriptor.
    pub fn from_fd(fd: OwnedFd) -> Self {
        DoorbellHandle(fd)
    }

    /// The descriptor number as a decimal string (for a child's arguments).
    pub fn to_arg(&self) -> String {
        self.0.as_raw_fd().to_string()
    }

    /// Adopts an inherited descriptor named by a decimal argument, checking that
    /// it is an open Unix stream socket.
    ///
    /// # Safety
    /// The descriptor must have been inherited for this purpose and not be owned
    /// by anything else in the process.
    pub unsafe fn from_arg(arg: &str) -> io::Result<Self> {
        let raw = fd::parse_fd_arg(arg)?;
        // SAFETY: forwarded to the caller's contract.
        Ok(DoorbellHandle(unsafe { fd::adopt_fd(raw, Some(libc::SOCK_STREAM)) }?))
    }

    /// Gives up ownership of the descriptor.
    pub fn into_fd(self) -> OwnedFd {
        self.0
    }
}

impl AsFd for DoorbellHandle {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

impl AsRawFd for DoorbellHandle {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl IntoRawFd for DoorbellHandle {
    fn into_raw_fd(self) -> RawFd {
        self.0.into_raw_fd()
    }
}

/// Creates a connected doorbell pair: `(host end, guest end)`, both
/// non-blocking and close-on-exec.
pub fn create_pair() -> io::Result<(DoorbellHandle, DoorbellHandle)> {
    let (a, b) = fd::socketpair(libc::SOCK_STREAM)?;
    Ok((DoorbellHandle(a), DoorbellHandle(b)))
}

/// How the peer rings, which decides whether [`Doorbell::readable`] must read
/// the queued signal bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rings {
    /// On every publication (a 0.3.1 peer, or before features are known):
    /// the queue can grow without bound, so every wake-up drains it.
    Always,
    /// Only to claim a sleep we announced (wake on demand, which the peer
    /// has agreed to): at most one byte per announcement.
    OnDemand,
}

/// What one non-blocking drain found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Drained {
    /// Bytes consumed.
    pub bytes: usize,
    /// The peer closed its end (or the socket failed).
    pub peer_gone: bool,
}

/// A doorbell end registered with the tokio reactor.
#[derive(Debug)]
pub struct Doorbell {
    fd: AsyncFd<OwnedFd>,
    /// Sleeps announced since the last real drain (see [`Doorbell::readable`]).
    /// Starts at the limit: the first wake-up reads whatever the peer queued
    /// before it rang on demand (a host rings on every commit until it has
    /// read the guest's features).
    announced: AtomicU32,
}

/// How many announced sleeps [`Doorbell::readable`] lets pass before it
/// reads the queued signal bytes after all. A peer that rings only to claim
/// an announcement queues at most this many bytes (plus its close and a few
/// before the host knows the guest's features): far below the ~270 one-byte
/// sends a Unix stream socket's default buffer holds, so a signal never
/// meets a full queue, which would raise no edge.
const DRAIN_AFTER_ANNOUNCED: u32 = 16;

impl Doorbell {
    /// Registers a handle with the current tokio runtime (must be called from
    /// inside one).
    pub fn new(handle: DoorbellHandle) -> io::Result<Doorbell> {
        fd::set_nonblocking(handle.as_fd())?;
        Ok(Doorbell {
            fd: fd::register(handle.0, Interest::READABLE)?,
            announced: AtomicU32::new(DRAIN_AFTER_ANNOUNCED),
        })
    }

    /// Rings the peer: one byte, never blocking, never raising `SIGPIPE`.
    pub fn signal(&self) -> SignalResult {
        let byte = 1u8;
        loop {
            // SAFETY: `byte` is valid for reading one byte for the call.
            let rc = unsafe {
                libc::send(
                    self.fd.get_ref().as_raw_fd(),
                    (&byte as *const u8).cast(),
                    1,
                    libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
                )
            };
            if rc > 0 {
                return SignalResult::Sent;
            }
            if rc == 0 {
                return SignalResult::PeerDead;
            }
            let err = io::Error::last_os_error();
            match err.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EAGAIN) | Some(libc::ENOBUFS) => return SignalResult::BufferFull,
                #[allow(unreachable_patterns)]
                Some(libc::EWOULDBLOCK) => return SignalResult::BufferFull,
                _ => return SignalResult::PeerDead,
            }
        }
    }

    /// Consumes every pending byte without waiting.
    pub fn drain(&self) -> Drained {
        drain_fd(self.fd.get_ref().as_fd())
    }

    /// Waits until at least one signal arrived and consumes all pending bytes.
    /// Returns how many; a closed peer is `BrokenPipe`. Spurious readiness is
    /// absorbed here, never returned. Cancel-safe: signals drained by a
    /// dropped wait were consumed, so look at what they announced first.
    pub async fn wait(&self) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.readable().await?;
            let d = drain_fd(self.fd.get_ref().as_fd());
            if d.peer_gone {
                return Err(io::Error::new(io::ErrorKind::BrokenPipe, "doorbell peer closed"));
            }
            // Drained (a short read or EAGAIN): the readiness we were woken for
            // is used up.
            guard.clear_ready();
            if d.bytes > 0 {
                return Ok(d.bytes);
            }
        }
    }

    /// Waits until the doorbell is readable, then drains it. Every task
    /// waiting here is woken by each event (whoever runs first consumes the
    /// bytes), so several waiters never steal a wake-up from each other: each
    /// re-checks its own condition. Cancel-safe. Poll it once *before* the last
    /// check of the condition, so a signal sent after that check is not missed.
    pub async fn readable_drain(&self) -> io::Result<Drained> {
        self.readable(Rings::Always).await
    }

    /// Counts a sleep announced to a peer that rings on demand
    /// ([`Rings::OnDemand`]): each lets it queue at most one signal byte.
    pub fn note_announced(&self) {
        self.announced.fetch_add(1, Ordering::Relaxed);
    }

    /// [`Doorbell::readable_drain`], except that with [`Rings::OnDemand`] the
    /// queued bytes are usually left unread: tokio's readiness is cleared by
    /// event tick, and each later signal raises a new edge-triggered event
    /// whether or not older bytes are queued, so the read is one system call
    /// per wake-up that tells us nothing. The bytes are read once
    /// 16 sleeps (`DRAIN_AFTER_ANNOUNCED`) were announced since the last read
    /// ([`Doorbell::note_announced`]), and always when the peer hung up (the
    /// drain then reports it). A lazy wake-up reports one byte.
    pub async fn readable(&self, rings: Rings) -> io::Result<Drained> {
        let mut guard = self.fd.readable().await?;
        if rings == Rings::OnDemand
            && !guard.ready().is_read_closed()
            && self.announced.load(Ordering::Relaxed) < DRAIN_AFTER_ANNOUNCED
        {
            guard.clear_ready();
            return Ok(Drained { bytes: 1, peer_gone: false });
        }
        self.announced.store(0, Ordering::Relaxed);
        let d = drain_fd(self.fd.get_ref().as_fd());
        if !d.peer_gone {
            // Drained (a short read or EAGAIN): the event we were woken for is
            // used up. (A newer event keeps its readiness: tokio clears by
            // event tick.)
            guard.clear_ready();
        }
        Ok(d)
    }

    /// Shuts the socket down in both directions: the peer reads end-of-file,
    /// and our own waiters wake and see it too (used to declare a peer dead).
    pub fn shutdown(&self) {
        // SAFETY: shutdown on a descriptor we own; no memory is passed.
        unsafe { libc::shutdown(self.fd.get_ref().as_raw_fd(), libc::SHUT_RDWR) };
    }

    /// Shuts down our sending direction only: the peer reads end-of-file (we
    /// are gone), and we can still read, so we see when the peer goes too.
    pub fn shutdown_write(&self) {
        // SAFETY: shutdown on a descriptor we own; no memory is passed.
        unsafe { libc::shutdown(self.fd.get_ref().as_raw_fd(), libc::SHUT_WR) };
    }

    /// Waits until the peer has closed its end (it exited, however it died),
    /// discarding any signals it sends meanwhile. Cancel-safe.
    pub async fn wait_for_hang_up(&self) {
        loop {
            match self.readable_drain().await {
                Ok(d) if !d.peer_gone => {}
                _ => return,
            }
        }
    }

    /// Bytes waiting to be read (`FIONREAD`).
    pub fn pending_bytes(&self) -> io::Result<usize> {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int to `n`.
        if unsafe { libc::ioctl(self.fd.get_ref().as_raw_fd(), libc::FIONREAD, &mut n) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n.max(0) as usize)
    }

    /// Whether the peer's end is closed, found by a non-blocking peek. A peek
    /// sees only the first queued byte: with signals still pending in front
    /// of the hang-up it answers `false`. Use [`Doorbell::drain`] (its
    /// `peer_gone`) when the pending signals may be consumed.
    pub fn is_peer_dead(&self) -> bool {
        let mut b = 0u8;
        // SAFETY: `b` is valid for writing one byte.
        let rc = unsafe {
            libc::recv(
                self.fd.get_ref().as_raw_fd(),
                (&mut b as *mut u8).cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        rc == 0
            || (rc < 0 && !matches!(io::Error::last_os_error().raw_os_error(), Some(libc::EAGAIN) | Some(libc::EINTR)))
    }
}

impl AsRawFd for Doorbell {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.get_ref().as_raw_fd()
    }
}

fn drain_fd(fd: BorrowedFd<'_>) -> Drained {
    let mut buf = [0u8; 64];
    let mut out = Drained::default();
    loop {
        // SAFETY: `buf` is valid for writing `buf.len()` bytes.
        let rc = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if rc > 0 {
            out.bytes += rc as usize;
            if (rc as usize) < buf.len() {
                // A short read of a stream socket took everything queued: it is
                // drained without the extra `recv` that would say `EAGAIN` (one
                // system call less per wake-up). Clearing tokio's readiness on
                // this is what tokio's own sockets do with edge-triggered epoll:
                // a byte that arrives after this read raises a new edge, and a
                // hang-up stays visible because tokio never clears "closed".
                return out;
            }
            continue;
        }
        if rc == 0 {
            out.peer_gone = true;
            return out;
        }
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EAGAIN) => return out,
            #[allow(unreachable_patterns)]
            Some(libc::EWOULDBLOCK) => return out,
            _ => {
                out.peer_gone = true;
                return out;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn signals_wake_and_coalesce() {
        let (a, b) = create_pair().unwrap();
        let (a, b) = (Doorbell::new(a).unwrap(), Doorbell::new(b).unwrap());
        assert_eq!(a.signal(), SignalResult::Sent);
        assert_eq!(a.signal(), SignalResult::Sent);
        assert_eq!(b.pending_bytes().unwrap(), 2);
        assert_eq!(b.wait().await.unwrap(), 2, "one wait consumes every pending signal");
        assert_eq!(b.drain(), Drained { bytes: 0, peer_gone: false });
        let waiter = tokio::spawn(async move { b.wait().await.map(|_| b) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiter.is_finished(), "no signal, no wake-up");
        a.signal();
        let b = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap().unwrap();
        assert!(!b.is_peer_dead());
    }

    #[tokio::test]
    async fn death_is_eof_and_epipe_without_sigpipe() {
        let (a, b) = create_pair().unwrap();
        let (a, b) = (Doorbell::new(a).unwrap(), Doorbell::new(b).unwrap());
        let waiter = tokio::spawn(async move { b.wait().await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(a);
        let err = tokio::time::timeout(Duration::from_secs(5), waiter).await.unwrap().unwrap().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);

        let (a, b) = create_pair().unwrap();
        let a = Doorbell::new(a).unwrap();
        drop(b);
        assert!(a.is_peer_dead());
        // Without MSG_NOSIGNAL this would kill the test process with SIGPIPE.
        assert_eq!(a.signal(), SignalResult::PeerDead);
        assert!(a.drain().peer_gone);
    }

    #[tokio::test]
    async fn a_full_buffer_coalesces() {
        let (a, b) = create_pair().unwrap();
        let a = Doorbell::new(a).unwrap();
        let mut results = std::collections::HashSet::new();
        for _ in 0..2_000_000 {
            let r = a.signal();
            results.insert(r);
            if r == SignalResult::BufferFull {
                break;
            }
        }
        assert!(results.contains(&SignalResult::BufferFull));
        let b = Doorbell::new(b).unwrap();
        assert!(b.wait().await.unwrap() > 0);
        assert_eq!(a.signal(), SignalResult::Sent, "space again after the drain");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_waiter_wakes_on_one_signal() {
        let (a, b) = create_pair().unwrap();
        let (a, b) = (Doorbell::new(a).unwrap(), std::sync::Arc::new(Doorbell::new(b).unwrap()));
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let b = b.clone();
                tokio::spawn(async move { b.readable_drain().await.unwrap() })
            })
            .collect();
        // Both must be waiting before the signal (one that starts after the
        // byte was taken would rightly wait on); the pause is long enough for
        // that even on a loaded machine.
        tokio::time::sleep(Duration::from_millis(200)).await;
        a.signal();
        let mut total = 0;
        for w in waiters {
            total += tokio::time::timeout(Duration::from_secs(5), w).await.expect("every waiter wakes").unwrap().bytes;
        }
        assert_eq!(total, 1, "exactly one of them consumed the byte");
        a.shutdown();
        assert!(b.readable_drain().await.unwrap().peer_gone);
    }

    #[test]
    fn handles_round_trip_through_arguments() {
        let (a, _b) = create_pair().unwrap();
        let arg = a.to_arg();
        let raw = a.into_raw_fd();
        assert_eq!(arg, raw.to_string());
        // SAFETY: `raw` was released by its owner just above.
        let back = unsafe { DoorbellHandle::from_arg(&arg) }.unwrap();
        assert_eq!(back.as_raw_fd(), raw);
        assert!(crate::fd::is_cloexec(back.as_fd()).unwrap(), "adopted ends are close-on-exec again");
        // SAFETY: not a descriptor this process has.
        assert!(unsafe { DoorbellHandle::from_arg("987654") }.is_err());
    }

    #[tokio::test]
    async fn on_demand_wakes_on_every_signal_with_bytes_left_queued() {
        let (a, b) = create_pair().unwrap();
        let (a, b) = (Doorbell::new(a).unwrap(), Doorbell::new(b).unwrap());
        let within = |f| tokio::time::timeout(Duration::from_secs(5), f);
        // The first wake-up reads what was queued before.
        a.signal();
        a.signal();
        assert_eq!(within(b.readable(Rings::OnDemand)).await.unwrap().unwrap().bytes, 2);
        // Then each signal is an edge of its own, though nothing is read.
        for round in 1..DRAIN_AFTER_ANNOUNCED as usize {
            b.note_announced();
            a.signal();
            let d = within(b.readable(Rings::OnDemand)).await.expect("woken").unwrap();
            assert_eq!(d, Drained { bytes: 1, peer_gone: false });
            assert_eq!(b.pending_bytes().unwrap(), round, "left queued");
            let again = tokio::time::timeout(Duration::from_millis(20), b.readable(Rings::OnDemand)).await;
            assert!(again.is_err(), "the readiness was used up");
        }
        // After enough announced sleeps the bytes are read after all.
        b.note_announced();
        a.signal();
        let d = within(b.readable(Rings::OnDemand)).await.unwrap().unwrap();
        assert_eq!(d.bytes, DRAIN_AFTER_ANNOUNCED as usize);
        assert_eq!(b.pending_bytes().unwrap(), 0);
        // A hang-up is reported however few sleeps were announced (behind the
        // bytes still queued in front of it, as a drain reports it).
        a.signal();
        drop(a);
        let d = within(b.readable(Rings::OnDemand)).await.unwrap().unwrap();
        assert_eq!(d, Drained { bytes: 1, peer_gone: false }, "the queued signal, read");
        let d = within(b.readable(Rings::OnDemand)).await.unwrap().unwrap();
        assert!(d.peer_gone, "{d:?}");
    }
}
