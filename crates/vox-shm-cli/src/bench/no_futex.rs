//! The sleeping floor off Linux, which has no futex system call: no case,
//! and an error that says why if one is asked for.

use super::model::{Case, Measured};
use crate::Res;

/// Whether this build has the futex case.
pub const BUILT: bool = false;

const MISSING: &str = "the futex floor needs Linux";

pub fn host(_case: &Case, _cmd: std::process::Command) -> Res<Measured> {
    Err(MISSING.into())
}

pub fn guest(_rest: &[String]) -> Res {
    Err(MISSING.into())
}
