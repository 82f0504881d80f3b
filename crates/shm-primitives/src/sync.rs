//! Atomics used by the structures that are model-checked with loom.
//!
//! Under `--cfg loom` these are loom's instrumented atomics (which are not
//! layout-compatible with the wire format, so such builds only ever place the
//! structures in memory they construct themselves). Everything else uses std.

#[cfg(loom)]
pub(crate) use loom::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
#[cfg(not(loom))]
pub(crate) use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

/// Builds an array of zeroed atomics (loom atomics are not `const`).
#[cfg(not(loom))]
pub(crate) const fn zeroed_u32s<const N: usize>() -> [AtomicU32; N] {
    [const { AtomicU32::new(0) }; N]
}
