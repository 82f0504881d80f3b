//! `vox-shm clean`: remove segment files that no process holds any more.

use std::path::PathBuf;

use vox_shm::stale::{check, remove_if_stale, FileState};

use crate::Res;

/// Examines each path (a directory: each file directly in it) and removes the
/// stale segment files, or only lists them with `dry_run`.
pub fn run(paths: &[PathBuf], dry_run: bool) -> Res {
    if paths.is_empty() {
        return Err("name at least one segment file or directory".into());
    }
    let (mut removed, mut bytes, mut in_use) = (0u64, 0u64, 0u64);
    for path in paths {
        // A path that does not exist is a mistake to report, not a file to skip.
        std::fs::symlink_metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let named = !path.is_dir();
        let files: Vec<PathBuf> = if named {
            vec![path.clone()]
        } else {
            let mut v = std::fs::read_dir(path)
                .map_err(|e| format!("{}: {e}", path.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect::<Vec<_>>();
            v.sort();
            v
        };
        for file in files {
            let state = if dry_run { check(&file) } else { remove_if_stale(&file) };
            match state {
                FileState::Stale { bytes: b } => {
                    removed += 1;
                    bytes += b;
                    let verb = if dry_run { "stale (would remove)" } else { "removed" };
                    println!("{verb:<21} {}  ({})", file.display(), human(b));
                }
                FileState::InUse => {
                    in_use += 1;
                    println!("{:<21} {}", "in use", file.display());
                }
                // Inside a directory, other files are none of our business.
                FileState::NotASegment(e) if named => println!("{:<21} {}: {e}", "not a segment", file.display()),
                FileState::NotASegment(_) => {}
                FileState::Unknown(e) => println!("{:<21} {}: {e}", "left alone", file.display()),
            }
        }
    }
    let verb = if dry_run { "stale" } else { "removed" };
    println!("{verb}: {removed} segment file(s), {}; in use: {in_use}", human(bytes));
    Ok(())
}

use crate::demo::human_bytes as human;

#[cfg(test)]
mod tests {
    use super::human;

    #[test]
    fn sizes_read_like_a_person_would_write_them() {
        assert_eq!(human(512), "512 B");
        assert_eq!(human(2886656), "2.8 MiB");
        assert_eq!(human(235 << 30), "235.0 GiB");
    }
}
