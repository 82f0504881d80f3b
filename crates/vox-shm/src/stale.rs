//! Segment files whose processes are all gone.
//!
//! A named segment file outlives a host killed before it could remove it (the
//! original vox-shm's main user leaked 235 GB that way). Every file
//! [`Segment::create`](crate::Segment::create) makes carries a shared `flock`
//! on its open file description, which the kernel drops when the last process
//! holding that description exits, however it exits. A segment file nobody
//! holds is therefore stale: no host serves it and no guest it spawned is left.
//!
//! Files of vox-shm 0.3.1 (which takes no lock) look stale as soon as they
//! exist, so point [`remove_if_stale`] only at directories where our hosts
//! create their segments.
//!
//! ```
//! use vox_shm::stale::{remove_if_stale, FileState};
//! match remove_if_stale(std::path::Path::new("/run/my-app/seg.shm")) {
//!     FileState::Stale { bytes } => println!("removed a stale segment of {bytes} bytes"),
//!     FileState::InUse => println!("a live process uses it"),
//!     other => println!("left alone: {other:?}"),
//! }
//! ```

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

pub use shm_primitives::mmap::lock_if_unheld;
use shm_primitives::mmap::MmapRegion;
use shm_primitives::validate::identify;

use crate::segment::AttachError;

/// What a segment file was found to be.
#[derive(Debug)]
pub enum FileState {
    /// A live process holds it: a host, or a guest it passed the descriptor to.
    InUse,
    /// Nobody holds it. From [`remove_if_stale`]: it has been removed.
    Stale {
        /// Its size.
        bytes: u64,
    },
    /// Not a readable vox segment file; never touched.
    NotASegment(AttachError),
    /// Its liveness cannot be told (the file system refuses `flock`); never
    /// touched.
    Unknown(io::Error),
}

/// Whether the segment file at `path` is in use, without changing anything.
pub fn check(path: &Path) -> FileState {
    examine(path, false)
}

/// Removes the segment file at `path` if no process holds it.
///
/// Only a valid segment file that nobody holds is removed, and only if `path`
/// still names the very file examined (a host that re-created the path in the
/// meantime keeps its new file). Removing a name never disturbs a mapping: a
/// process that still maps the file keeps its memory.
pub fn remove_if_stale(path: &Path) -> FileState {
    examine(path, true)
}

/// Whether `path` holds a vox segment, judged by its header's identity only:
/// a guest that scribbled over its rings or the pool before its host died
/// must not make the file look foreign and keep it from being cleaned.
fn is_segment(path: &Path) -> Result<(), AttachError> {
    let map = MmapRegion::attach_read_only(path)?;
    identify(map.region()).map(|_| ()).map_err(AttachError::from)
}

fn examine(path: &Path, remove: bool) -> FileState {
    // Identify before judging liveness, so foreign files are reported as such.
    if let Err(e) = is_segment(path) {
        return FileState::NotASegment(e);
    }
    let file = match lock_if_unheld(path) {
        Ok(Some(file)) => file,
        Ok(None) => return FileState::InUse,
        Err(e) => return FileState::Unknown(e),
    };
    // We now hold the exclusive lock: no host can be using this file.
    let meta = match file.metadata() {
        Ok(m) => m,
        Err(e) => return FileState::Unknown(e),
    };
    if remove {
        let same = std::fs::metadata(path).is_ok_and(|m| m.dev() == meta.dev() && m.ino() == meta.ino());
        if !same {
            // Replaced since we opened it: the new file is someone else's.
            return FileState::InUse;
        }
        if let Err(e) = std::fs::remove_file(path) {
            return FileState::Unknown(e);
        }
    }
    FileState::Stale { bytes: meta.len() }
}
