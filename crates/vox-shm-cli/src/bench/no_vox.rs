//! `bench --rpc` in a build without the `vox` feature: no cases, and an
//! error that says why.

use super::model::{Case, Measured};
use crate::Res;

pub const MISSING: &str = "this vox-shm was built without its `vox` feature, so `bench --rpc` is not available";

pub fn cases(_quick: bool) -> Vec<Case> {
    Vec::new()
}

pub async fn host(_case: &Case, _cmd: std::process::Command) -> Res<Measured> {
    Err(MISSING.into())
}

pub async fn guest(_case: &Case, _rest: Vec<String>) -> Res {
    Err(MISSING.into())
}
