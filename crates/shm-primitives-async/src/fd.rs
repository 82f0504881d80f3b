//! Small, owned-descriptor helpers: close-on-exec, non-blocking, validation.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Sets or clears `FD_CLOEXEC`.
pub fn set_cloexec(fd: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on a borrowed, open descriptor; no memory is passed.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) })?;
    let new = if on { flags | libc::FD_CLOEXEC } else { flags & !libc::FD_CLOEXEC };
    if new != flags {
        // SAFETY: as above.
        cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, new) })?;
    }
    Ok(())
}

/// Clears `FD_CLOEXEC`, making the descriptor inheritable by `exec`.
///
/// Prefer [`clear_cloexec_raw`] inside a `pre_exec` hook, so that only the one
/// child meant to inherit the descriptor does.
pub fn clear_cloexec(fd: BorrowedFd<'_>) -> io::Result<()> {
    set_cloexec(fd, false)
}

/// True if `FD_CLOEXEC` is set.
pub fn is_cloexec(fd: BorrowedFd<'_>) -> io::Result<bool> {
    // SAFETY: fcntl query on a borrowed, open descriptor.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) })?;
    Ok(flags & libc::FD_CLOEXEC != 0)
}

/// Clears `FD_CLOEXEC` on a raw descriptor number. Async-signal-safe (a pair
/// of `fcntl` calls, no allocation), so it may run in a `pre_exec` hook.
pub fn clear_cloexec_raw(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl takes no memory; an invalid fd yields EBADF, not UB.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    // SAFETY: as above.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) })?;
    Ok(())
}

/// Sets `O_NONBLOCK`.
pub fn set_nonblocking(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fcntl on a borrowed, open descriptor; no memory is passed.
    let flags = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
    if flags & libc::O_NONBLOCK == 0 {
        // SAFETY: as above.
        cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    }
    Ok(())
}

/// Checks that `fd` is an open descriptor.
pub fn validate_fd(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl query; an invalid number yields EBADF.
    cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) }).map(|_| ())
}

/// The socket type (`SOCK_STREAM`, `SOCK_DGRAM`, ...) of a Unix socket, or an
/// error if `fd` is not a Unix-domain socket.
pub fn unix_socket_type(fd: BorrowedFd<'_>) -> io::Result<libc::c_int> {
    let get = |opt| {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `v` and `len` are valid for writes of the sizes given.
        cvt(unsafe {
            libc::getsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, opt, (&mut v as *mut libc::c_int).cast(), &mut len)
        })?;
        Ok::<_, io::Error>(v)
    };
    #[cfg(target_os = "linux")]
    {
        if get(libc::SO_DOMAIN)? != libc::AF_UNIX {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a Unix-domain socket"));
        }
    }
    get(libc::SO_TYPE)
}

/// Takes ownership of an inherited descriptor named by number (for example
/// from a command-line argument), after checking that it is open and, if
/// `socket_type` is given, a Unix socket of that type.
///
/// # Safety
/// The descriptor must not be owned by anything else in this process (it was
/// inherited for us, and this is the only place that adopts it).
pub unsafe fn adopt_fd(fd: RawFd, socket_type: Option<libc::c_int>) -> io::Result<OwnedFd> {
    check_inherited(fd, socket_type)?;
    // SAFETY: open (just checked) and unowned (caller's contract).
    let owned = unsafe { OwnedFd::from_raw_fd(fd) };
    // Ours now: never leak it into a later exec.
    set_cloexec(std::os::fd::AsFd::as_fd(&owned), true)?;
    if socket_type.is_some() {
        no_sigpipe(std::os::fd::AsFd::as_fd(&owned))?;
    }
    Ok(owned)
}

/// Checks, without taking it, that descriptor number `fd` is open and, if
/// `socket_type` is given, a Unix socket of that type. A descriptor that
/// fails is left as it was (not closed).
pub fn check_inherited(fd: RawFd, socket_type: Option<libc::c_int>) -> io::Result<()> {
    validate_fd(fd)?;
    if let Some(want) = socket_type {
        // SAFETY: open (just checked); the borrow ends with this call.
        let got = unix_socket_type(unsafe { BorrowedFd::borrow_raw(fd) })?;
        if got != want {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("fd {fd} has socket type {got}, expected {want}"),
            ));
        }
    }
    Ok(())
}

/// Parses a decimal descriptor number argument.
pub fn parse_fd_arg(s: &str) -> io::Result<RawFd> {
    let n: RawFd = s
        .trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("not a descriptor number: {s:?}")))?;
    if n < 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "negative descriptor number"));
    }
    Ok(n)
}

/// Creates a Unix socket pair of `ty`, both ends non-blocking and close-on-exec.
pub fn socketpair(ty: libc::c_int) -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    let flags = libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC;
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    let flags = 0;
    // SAFETY: `fds` is valid for writing two ints.
    cvt(unsafe { libc::socketpair(libc::AF_UNIX, ty | flags, 0, fds.as_mut_ptr()) })?;
    // SAFETY: socketpair just returned two fresh descriptors that nothing owns.
    let (a, b) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    for fd in [&a, &b] {
        use std::os::fd::AsFd;
        set_nonblocking(fd.as_fd())?;
        set_cloexec(fd.as_fd(), true)?;
        no_sigpipe(fd.as_fd())?;
    }
    Ok((a, b))
}

/// Makes a send to a dead peer an `EPIPE` error instead of a `SIGPIPE`. Our
/// sends pass `MSG_NOSIGNAL` as well, but on macOS the socket option is the
/// documented way (and holds for every descriptor of the socket). A no-op on
/// Linux, where `MSG_NOSIGNAL` is the way.
pub fn no_sigpipe(fd: BorrowedFd<'_>) -> io::Result<()> {
    #[cfg(target_vendor = "apple")]
    {
        let on: libc::c_int = 1;
        // SAFETY: `on` is valid for reading one int for the call.
        cvt(unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_NOSIGPIPE,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        })?;
    }
    #[cfg(not(target_vendor = "apple"))]
    let _ = fd;
    Ok(())
}

/// Registers an owned descriptor with the current tokio reactor.
pub fn register(fd: OwnedFd, interest: tokio::io::Interest) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is open for its whole life and always reports the
    // same number; the `AsyncFd` owns it until it is dropped.
    Ok(unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) }?)
}

/// Number of open descriptors of this process (Linux: `/proc/self/fd`).
pub fn open_fd_count() -> io::Result<usize> {
    Ok(std::fs::read_dir("/proc/self/fd")?.count().saturating_sub(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn socketpairs_are_cloexec_and_nonblocking() {
        let (a, b) = socketpair(libc::SOCK_STREAM).unwrap();
        for fd in [&a, &b] {
            assert!(is_cloexec(fd.as_fd()).unwrap());
            // SAFETY: fcntl query on an open descriptor.
            let fl = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
            assert!(fl & libc::O_NONBLOCK != 0);
        }
        assert_eq!(unix_socket_type(a.as_fd()).unwrap(), libc::SOCK_STREAM);
        clear_cloexec(a.as_fd()).unwrap();
        assert!(!is_cloexec(a.as_fd()).unwrap());
        clear_cloexec_raw(b.as_raw_fd()).unwrap();
        assert!(!is_cloexec(b.as_fd()).unwrap());
    }

    #[test]
    fn adopt_checks_the_descriptor() {
        let (a, _b) = socketpair(libc::SOCK_DGRAM).unwrap();
        let raw = std::os::fd::IntoRawFd::into_raw_fd(a);
        // SAFETY: `raw` was just released by its owner.
        let err = unsafe { adopt_fd(raw, Some(libc::SOCK_STREAM)) }.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        // A failed adoption leaves the descriptor as it was: open, not ours.
        assert!(validate_fd(raw).is_ok());
        // SAFETY: still unowned (the adoption failed); closed once, here.
        drop(unsafe { OwnedFd::from_raw_fd(raw) });
        assert!(validate_fd(raw).is_err());
        assert!(validate_fd(-1).is_err());
        assert!(parse_fd_arg("x").is_err());
        assert!(parse_fd_arg("-3").is_err());
        assert_eq!(parse_fd_arg(" 7 ").unwrap(), 7);
        let file = tempfile::tempfile().unwrap();
        let raw = std::os::fd::IntoRawFd::into_raw_fd(file);
        // SAFETY: `raw` was just released by its owner.
        assert!(unsafe { adopt_fd(raw, Some(libc::SOCK_DGRAM)) }.is_err(), "a file is not a socket");
        // SAFETY: still unowned; closed once, here.
        drop(unsafe { OwnedFd::from_raw_fd(raw) });
    }
}
