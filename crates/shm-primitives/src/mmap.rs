//! File-backed shared mappings: the segment file and the large-payload regions.
//!
//! Every descriptor is opened close-on-exec and owned by the [`MmapRegion`] that
//! maps it; dropping the region unmaps it and closes the descriptor.

use std::fs::{File, OpenOptions, Permissions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use crate::region::Region;

/// What happens to a segment file's directory entry.
///
/// | variant | on create | on drop of the creating region | after a crash |
/// |---|---|---|---|
/// | `Manual` | file stays | file stays | file stays |
/// | `UnlinkOnDrop` | file stays | file removed | file stays |
/// | `Auto` | removed at once | — | nothing left |
///
/// With `Auto` the file has no name once created, so peers can only attach
/// through its descriptor (fd passing). `UnlinkOnDrop` is what vox-shm 0.3.1
/// called `Manual`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FileCleanup {
    /// Keep the file; whoever created it removes it.
    Manual,
    /// Remove the file when the region that created it is dropped.
    #[default]
    UnlinkOnDrop,
    /// Remove the file's name right after mapping it; the memory lives as long
    /// as some process keeps it mapped or open.
    Auto,
}

/// Default permission bits of a created segment file: owner read/write only.
pub const DEFAULT_FILE_MODE: u32 = 0o600;

/// A shared, read-write mapping of a whole file.
pub struct MmapRegion {
    map: Mapping,
    file: File,
    path: Option<PathBuf>,
    cleanup: FileCleanup,
    /// True only for the region that created the file (it alone unlinks).
    owner: bool,
}

// SAFETY: the mapping and the descriptor are owned by this value; access to the
// mapped bytes goes through `Region` views whose users synchronise via atomics.
unsafe impl Send for MmapRegion {}
// SAFETY: `&MmapRegion` only exposes the pointer (as a `Region`) and the fd.
unsafe impl Sync for MmapRegion {}

impl std::fmt::Debug for MmapRegion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmapRegion")
            .field("len", &self.map.len)
            .field("fd", &self.file.as_raw_fd())
            .field("path", &self.path)
            .field("cleanup", &self.cleanup)
            .finish()
    }
}

fn map_shared(file: &File, len: usize) -> io::Result<Mapping> {
    map_with(file, len, libc::PROT_READ | libc::PROT_WRITE)
}

fn map_with(file: &File, len: usize, prot: libc::c_int) -> io::Result<Mapping> {
    if len == 0 {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "cannot map zero bytes"));
    }
    // SAFETY: a fresh mapping chosen by the kernel (addr = NULL) cannot alias any
    // Rust object; the fd is valid for the duration of the call.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, libc::MAP_SHARED, file.as_raw_fd(), 0) };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let ptr = NonNull::new(p.cast()).ok_or_else(|| io::Error::other("mmap returned NULL"))?;
    Ok(Mapping { ptr, len })
}

fn unmap(ptr: NonNull<u8>, len: usize) {
    // SAFETY: (ptr, len) is exactly a mapping created by `map_with` and not yet
    // unmapped (only `Mapping::drop` calls this, once); views into it must not
    // outlive it (the `Region` contract).
    let rc = unsafe { libc::munmap(ptr.as_ptr().cast(), len) };
    debug_assert_eq!(rc, 0, "munmap failed: {}", io::Error::last_os_error());
}

fn file_len(file: &File) -> io::Result<usize> {
    let meta = file.metadata()?;
    if !meta.file_type().is_file() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
    }
    usize::try_from(meta.len()).map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "file too large"))
}

/// Marks `file` as in use: a shared `flock` on its open file description.
///
/// The lock lives exactly as long as some process keeps that description open
/// (the creator, or a guest it passed a duplicate of the descriptor to) and
/// the kernel drops it when the last of them exits, `kill -9` included. So a
/// named segment file nobody holds is one whose users are all gone.
fn hold_shared(file: &File) -> io::Result<()> {
    // SAFETY: `flock` on a descriptor `file` owns; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Tries to take an exclusive `flock` on `file` without waiting: `Ok(true)`
/// if taken (nobody holds the file: see how [`MmapRegion::create`] marks it),
/// `Ok(false)` if another open description holds a lock on it. The lock goes
/// when `file` is closed.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    // SAFETY: `flock` on a descriptor `file` owns; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// The file at `path`, opened and locked exclusively, if no live process
/// holds it (`Ok(None)` if one does). Nothing about its contents is checked;
/// the lock goes when the returned file is closed.
pub fn lock_if_unheld(path: &Path) -> io::Result<Option<File>> {
    let file = File::open(path)?;
    Ok(try_lock_exclusive(&file)?.then_some(file))
}

impl MmapRegion {
    /// Creates the file at `path` with `size` zero bytes and maps it.
    ///
    /// An existing file at `path` is unlinked first (never truncated: a process
    /// that still maps the old file keeps its memory intact). Permissions are set
    /// to `mode` explicitly, independent of the umask. The new file is marked in
    /// use with a shared `flock` for as long as its descriptor is open here or
    /// in a process it was passed to, so a file left behind by a crash can be
    /// told apart from a live one ([`try_lock_exclusive`]).
    pub fn create(path: &Path, size: usize, cleanup: FileCleanup, mode: u32) -> io::Result<Self> {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let file = OpenOptions::new().read(true).write(true).create_new(true).mode(mode).open(path)?;
        let cleanup_on_error = |e: io::Error| {
            let _ = std::fs::remove_file(path);
            e
        };
        file.set_permissions(Permissions::from_mode(mode)).map_err(cleanup_on_error)?;
        // Best effort: where `flock` is not supported the file still works, its
        // liveness just cannot be told from outside (`try_lock_exclusive` errs).
        let _ = hold_shared(&file);
        file.set_len(size as u64).map_err(cleanup_on_error)?;
        let map = map_shared(&file, size).map_err(cleanup_on_error)?;
        let mut region = Self { map, file, path: Some(path.to_owned()), cleanup, owner: true };
        if cleanup == FileCleanup::Auto {
            std::fs::remove_file(path)?;
            region.path = None;
        }
        Ok(region)
    }

    /// Creates an anonymous file of `size` zero bytes and maps it.
    ///
    /// On Linux this is a `memfd` sealed against shrinking, so a peer holding the
    /// descriptor can never truncate it under our mapping (which would turn our
    /// next access into `SIGBUS`). On macOS it is a POSIX shared memory object,
    /// unlinked at once, which macOS lets a process size only once: the same
    /// protection. Elsewhere it is an unlinked temporary file.
    pub fn create_anonymous(name: &str, size: usize) -> io::Result<Self> {
        let file = anonymous_file(name)?;
        file.set_len(size as u64)?;
        #[cfg(target_os = "linux")]
        seal_against_shrinking(&file)?;
        let map = map_shared(&file, size)?;
        Ok(Self { map, file, path: None, cleanup: FileCleanup::Auto, owner: true })
    }

    /// Opens the file at `path` read-write and maps its whole length.
    pub fn attach(path: &Path) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        let mut region = Self::attach_file(file)?;
        region.path = Some(path.to_owned());
        Ok(region)
    }

    /// Opens the file at `path` read-only and maps its whole length read-only
    /// (for inspection tools: nothing can be written through this mapping).
    /// Only ever load from the returned memory; a store would fault.
    pub fn attach_read_only(path: &Path) -> io::Result<Mapping> {
        let file = File::open(path)?;
        let len = file_len(&file)?;
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "file is empty"));
        }
        map_with(&file, len, libc::PROT_READ)
    }

    /// Maps the whole length of an open file descriptor (read-write).
    pub fn attach_fd(fd: OwnedFd) -> io::Result<Self> {
        Self::attach_file(File::from(fd))
    }

    /// Maps exactly `len` bytes of an open descriptor, after checking that it
    /// is a regular file at least that long (a mapping region received from a
    /// peer: its announced length is untrusted).
    pub fn attach_fd_with_len(fd: OwnedFd, len: usize) -> io::Result<Self> {
        let file = File::from(fd);
        let have = file_len(&file)?;
        if len == 0 || have < len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("file holds {have} bytes, {len} were announced"),
            ));
        }
        let map = map_shared(&file, len)?;
        Ok(Self { map, file, path: None, cleanup: FileCleanup::Manual, owner: false })
    }

    fn attach_file(file: File) -> io::Result<Self> {
        let len = file_len(&file)?;
        if len == 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "file is empty"));
        }
        let map = map_shared(&file, len)?;
        Ok(Self { map, file, path: None, cleanup: FileCleanup::Manual, owner: false })
    }

    /// A view of the mapped bytes, borrowing `self` (so it ends before a
    /// remap, which needs `&mut self`, or the unmap).
    pub fn region(&self) -> Region<'_> {
        self.map.region()
    }

    /// Mapped length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True if nothing is mapped (never the case for a constructed region).
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The file's path, if it has one (not for `Auto` or anonymous regions).
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The cleanup policy this region was created with.
    pub fn cleanup(&self) -> FileCleanup {
        self.cleanup
    }

    /// Current size of the underlying file (which may exceed the mapping).
    pub fn file_len(&self) -> io::Result<usize> {
        file_len(&self.file)
    }

    /// Duplicates the descriptor (close-on-exec), e.g. to pass it to a peer.
    pub fn try_clone_fd(&self) -> io::Result<OwnedFd> {
        self.file.as_fd().try_clone_to_owned()
    }

    /// Grows the file to `new_size` and maps the new length. The base address
    /// changes: every `Region` taken before is invalid afterwards, which the
    /// `&mut self` receiver enforces for safe code.
    pub fn resize(&mut self, new_size: usize) -> io::Result<()> {
        if new_size < self.map.len {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "shrinking a mapped region is refused"));
        }
        if new_size == self.map.len {
            return Ok(());
        }
        self.file.set_len(new_size as u64)?;
        self.remap(new_size)
    }

    /// Re-maps to `wanted` bytes if the file has grown to at least that size and
    /// the mapping is smaller. Returns whether a remap happened.
    pub fn check_and_remap(&mut self, wanted: usize) -> io::Result<bool> {
        if wanted <= self.map.len {
            return Ok(false);
        }
        let have = file_len(&self.file)?;
        if have < wanted {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("file is {have} bytes, {wanted} were announced"),
            ));
        }
        self.remap(wanted)?;
        Ok(true)
    }

    fn remap(&mut self, new_len: usize) -> io::Result<()> {
        // The old mapping is unmapped when it is replaced.
        self.map = map_shared(&self.file, new_len)?;
        Ok(())
    }
}

impl MmapRegion {
    /// Keeps only the mapping: closes the descriptor (a mapping stays valid
    /// without it). No file is unlinked by the result.
    pub fn into_mapping(mut self) -> Mapping {
        self.owner = false; // nothing to unlink on the way out
        let placeholder = Mapping { ptr: NonNull::dangling(), len: 0 };
        std::mem::replace(&mut self.map, placeholder)
    }
}

/// A shared mapping whose descriptor has been closed; unmapped on drop.
#[derive(Debug)]
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: as for `MmapRegion`: the mapping is owned by this value and accessed
// through `Region` views whose users synchronise via atomics.
unsafe impl Send for Mapping {}
// SAFETY: see `Send`.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// A view of the mapped bytes, borrowing `self`.
    pub fn region(&self) -> Region<'_> {
        // SAFETY: page-aligned (mmap) and mapped until `self` is dropped, which
        // the returned lifetime borrows.
        unsafe { Region::from_raw(self.ptr, self.len) }
    }

    /// Mapped length.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if nothing is mapped (never for a constructed mapping).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        if self.len != 0 {
            unmap(self.ptr, self.len);
        }
    }
}

impl AsFd for MmapRegion {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }
}

impl AsRawFd for MmapRegion {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl Drop for MmapRegion {
    fn drop(&mut self) {
        // The mapping unmaps itself (field drop).
        if self.owner && self.cleanup == FileCleanup::UnlinkOnDrop {
            if let Some(path) = &self.path {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

#[cfg(target_os = "linux")]
fn anonymous_file(name: &str) -> io::Result<File> {
    use std::ffi::CString;
    let cname = CString::new(name).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in name"))?;
    // SAFETY: `cname` is a valid NUL-terminated string for the duration of the call.
    let fd = unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create just returned this fd; nothing else owns it.
    Ok(File::from(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) }))
}

#[cfg(target_os = "macos")]
fn anonymous_file(_name: &str) -> io::Result<File> {
    use std::ffi::CString;
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Names are at most 31 bytes on macOS: "/vox-" + pid + "-" + 8 hex digits.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    for _ in 0..64 {
        let n = NEXT.fetch_add(1, Ordering::Relaxed).wrapping_mul(2_654_435_761) ^ nanos;
        let name = CString::new(format!("/vox-{}-{n:08x}", std::process::id())).expect("no NUL");
        // SAFETY: a valid C string; O_EXCL never opens someone else's object.
        let fd = unsafe { libc::shm_open(name.as_ptr(), libc::O_RDWR | libc::O_CREAT | libc::O_EXCL, 0o600) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EEXIST) {
                continue;
            }
            return Err(e);
        }
        // SAFETY: shm_open just returned this fd; nothing else owns it.
        let file = File::from(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
        // Nameless from here on: only descriptors reach it.
        // SAFETY: the same valid C string.
        unsafe { libc::shm_unlink(name.as_ptr()) };
        // SAFETY: plain fcntl on a descriptor we own.
        if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok(file);
    }
    Err(io::Error::new(io::ErrorKind::AlreadyExists, "no free shared memory object name"))
}

#[cfg(not(any(target_os = "linux", target_os = "macos")))]
fn anonymous_file(_name: &str) -> io::Result<File> {
    tempfile::tempfile()
}

#[cfg(target_os = "linux")]
fn seal_against_shrinking(file: &File) -> io::Result<()> {
    // SAFETY: plain fcntl on a descriptor we own.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Seals `fd` against shrinking if it is not sealed yet and can be (a memfd
/// created with sealing allowed whose seals are not sealed). Returns whether it
/// is sealed now: only then may a peer's file be mapped, since a peer that can
/// truncate it would turn our next read into `SIGBUS`. On macOS, true for a
/// shared memory object that has been sized (macOS refuses to resize one);
/// false elsewhere.
pub fn try_seal_against_shrinking(fd: BorrowedFd<'_>) -> bool {
    #[cfg(target_os = "linux")]
    {
        if !is_sealed_against_shrinking(fd) {
            // SAFETY: plain fcntl on a borrowed, open descriptor; failure
            // (EPERM: sealing not allowed, EINVAL: not a memfd) is reported below.
            unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, libc::F_SEAL_SHRINK) };
        }
    }
    is_sealed_against_shrinking(fd)
}

/// True if `fd` is a memfd sealed against shrinking (so mapping it is safe from
/// a peer truncating it later). On macOS: a shared memory object that refuses
/// to be resized (see [`try_seal_against_shrinking`]). False elsewhere.
pub fn is_sealed_against_shrinking(fd: BorrowedFd<'_>) -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain fcntl query on a borrowed, open descriptor.
        let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
        seals >= 0 && seals & libc::F_SEAL_SHRINK != 0
    }
    #[cfg(target_os = "macos")]
    {
        // macOS sizes a POSIX shared memory object once; every later
        // ftruncate fails with EINVAL, through any descriptor. A descriptor
        // open for writing whose same-size ftruncate fails so is such an
        // object (a regular file takes it as a no-op), so no peer can shrink
        // it. A descriptor that is not writable proves nothing.
        let raw = fd.as_raw_fd();
        // SAFETY: plain fcntl query on a borrowed, open descriptor.
        let writable = unsafe { libc::fcntl(raw, libc::F_GETFL) } & libc::O_ACCMODE == libc::O_RDWR;
        // SAFETY: `stat` is plain integers; all zeroes is a valid value.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fstat writes one `stat` into `st`.
        if !writable || unsafe { libc::fstat(raw, &mut st) } != 0 {
            return false;
        }
        // SAFETY: ftruncate to the current size: no change for any file that
        // accepts it.
        let rc = unsafe { libc::ftruncate(raw, st.st_size) };
        rc != 0 && io::Error::last_os_error().raw_os_error() == Some(libc::EINVAL)
    }
    #[cfg(not(any(target_os = "linux", target_os = "macos")))]
    {
        let _ = fd;
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn write_byte(r: &Region<'_>, off: u64, v: u8) {
        let p = r.range(off, 1).unwrap();
        // SAFETY: checked in bounds; the test owns the mapping.
        unsafe { p.as_ptr().write_volatile(v) }
    }
    fn read_byte(r: &Region<'_>, off: u64) -> u8 {
        let p = r.range(off, 1).unwrap();
        // SAFETY: checked in bounds; the test owns the mapping.
        unsafe { p.as_ptr().read_volatile() }
    }

    #[test]
    fn create_uses_mode_0600_by_default_regardless_of_umask() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let r = MmapRegion::create(&path, 4096, FileCleanup::Manual, DEFAULT_FILE_MODE).unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert_eq!(meta.len(), 4096);
        drop(r);
        let path2 = dir.path().join("seg2");
        let _r = MmapRegion::create(&path2, 4096, FileCleanup::Manual, 0o666).unwrap();
        assert_eq!(std::fs::metadata(&path2).unwrap().mode() & 0o777, 0o666);
    }

    #[test]
    fn manual_keeps_file_unlink_on_drop_removes_it_auto_removes_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let manual = dir.path().join("manual");
        drop(MmapRegion::create(&manual, 64, FileCleanup::Manual, 0o600).unwrap());
        assert!(manual.exists(), "Manual must keep the file after drop");

        let on_drop = dir.path().join("ondrop");
        let r = MmapRegion::create(&on_drop, 64, FileCleanup::UnlinkOnDrop, 0o600).unwrap();
        assert!(on_drop.exists());
        // An attached (non-owning) region must not remove the file.
        drop(MmapRegion::attach(&on_drop).unwrap());
        assert!(on_drop.exists());
        drop(r);
        assert!(!on_drop.exists(), "UnlinkOnDrop must remove the file on drop");

        let auto = dir.path().join("auto");
        let r = MmapRegion::create(&auto, 64, FileCleanup::Auto, 0o600).unwrap();
        assert!(!auto.exists(), "Auto must unlink right after mapping");
        assert!(r.path().is_none());
        // Still usable through the descriptor.
        let other = MmapRegion::attach_fd(r.try_clone_fd().unwrap()).unwrap();
        write_byte(&r.region(), 10, 0xAB);
        assert_eq!(read_byte(&other.region(), 10), 0xAB);
    }

    #[test]
    fn create_replaces_without_truncating_the_old_inode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let old = MmapRegion::create(&path, 4096, FileCleanup::Manual, 0o600).unwrap();
        write_byte(&old.region(), 4095, 7);
        let _new = MmapRegion::create(&path, 128, FileCleanup::Manual, 0o600).unwrap();
        // The old mapping is intact (a truncate would make this access SIGBUS).
        assert_eq!(read_byte(&old.region(), 4095), 7);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 128);
    }

    #[test]
    fn attach_refuses_empty_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        assert_eq!(MmapRegion::attach(&empty).unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert_eq!(MmapRegion::attach(&dir.path().join("missing")).unwrap_err().kind(), io::ErrorKind::NotFound);
        let d = File::open(dir.path()).unwrap();
        assert!(MmapRegion::attach_fd(d.into()).is_err(), "a directory is not a segment");
    }

    #[test]
    fn grow_and_remap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("seg");
        let mut host = MmapRegion::create(&path, 4096, FileCleanup::Manual, 0o600).unwrap();
        let mut guest = MmapRegion::attach(&path).unwrap();
        write_byte(&host.region(), 100, 1);
        assert!(host.resize(100).is_err(), "shrinking is refused");
        host.resize(8192).unwrap();
        assert_eq!(host.len(), 8192);
        assert_eq!(read_byte(&host.region(), 100), 1, "contents survive the remap");
        write_byte(&host.region(), 8000, 9);
        assert!(guest.check_and_remap(16384).is_err(), "cannot map more than the file holds");
        assert!(!guest.check_and_remap(4096).unwrap());
        assert!(guest.check_and_remap(8192).unwrap());
        assert_eq!(read_byte(&guest.region(), 8000), 9);
    }

    #[test]
    fn descriptors_are_close_on_exec() {
        let dir = tempfile::tempdir().unwrap();
        let r = MmapRegion::create(&dir.path().join("s"), 64, FileCleanup::Manual, 0o600).unwrap();
        let anon = MmapRegion::create_anonymous("t", 64).unwrap();
        for fd in [r.as_raw_fd(), anon.as_raw_fd(), r.try_clone_fd().unwrap().as_raw_fd()] {
            // SAFETY: plain fcntl query on an open descriptor.
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            assert!(flags & libc::FD_CLOEXEC != 0);
        }
    }

    #[test]
    fn a_mapping_outlives_its_descriptor() {
        // The file behind a descriptor number, or `None` if it is not open.
        // (Tests run in parallel: the number may be reused by another file.)
        fn identity(fd: RawFd) -> Option<(u64, u64)> {
            // SAFETY: `stat` is plain integers; all zeroes is a valid value.
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: fstat writes one `stat` into `st`; a closed number is EBADF.
            let open = unsafe { libc::fstat(fd, &mut st) } == 0;
            #[allow(clippy::unnecessary_cast, clippy::useless_conversion)] // dev_t is u64 on Linux, i32 on macOS
            open.then_some((st.st_dev as u64, u64::from(st.st_ino)))
        }
        let r = MmapRegion::create_anonymous("t", 4096).unwrap();
        let fd = r.as_raw_fd();
        let ours = identity(fd);
        assert!(ours.is_some());
        write_byte(&r.region(), 7, 42);
        let m = r.into_mapping();
        assert_ne!(identity(fd), ours, "the descriptor is closed");
        assert_eq!(read_byte(&m.region(), 7), 42);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn anonymous_regions_cannot_be_shrunk_by_a_peer() {
        let anon = MmapRegion::create_anonymous("t", 8192).unwrap();
        assert!(is_sealed_against_shrinking(anon.as_fd()));
        let peer = File::from(anon.try_clone_fd().unwrap());
        assert!(peer.set_len(10).is_err(), "the shrink seal must refuse truncation");
        assert!(peer.set_len(16384).is_ok(), "growing stays allowed");
        let dir = tempfile::tempdir().unwrap();
        let plain = MmapRegion::create(&dir.path().join("p"), 64, FileCleanup::Manual, 0o600).unwrap();
        assert!(!is_sealed_against_shrinking(plain.as_fd()));
    }
}
