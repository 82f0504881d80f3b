//! The iceoryx2 round trip in a build without the `iceoryx2` feature: no
//! case, and an error that says why if one is asked for.

use super::model::{Case, Measured};
use crate::Res;

/// Whether this build has the iceoryx2 case.
pub const BUILT: bool = false;

const MISSING: &str = "this vox-shm was built without its `iceoryx2` feature";

pub fn host(_case: &Case, _cmd: std::process::Command, _sleeps: bool) -> Res<Measured> {
    Err(MISSING.into())
}

pub fn guest(_rest: &[String], _sleeps: bool) -> Res {
    Err(MISSING.into())
}
