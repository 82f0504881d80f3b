//! The echo service the tests and the guest binary share (the code the
//! `#[vox::service]` macro generates has no docs of its own).
#![allow(missing_docs)]

/// Echoes numbers and byte blobs.
#[vox::service]
pub trait Echo {
    /// Returns `value`.
    async fn echo(&self, value: u64) -> u64;
    /// Returns `blob` as it came (the benchmark's blob echo).
    async fn echo_bytes(&self, blob: Vec<u8>) -> Vec<u8>;
    /// Returns `blob` reversed (so a reply is not the request's bytes).
    async fn reverse(&self, blob: Vec<u8>) -> Vec<u8>;
    /// Sleeps `ms` milliseconds, then returns it (a call that is pending
    /// while the test kills the guest).
    async fn slow(&self, ms: u64) -> u64;
}

/// The implementation.
#[derive(Debug, Clone)]
pub struct EchoService;

impl Echo for EchoService {
    async fn echo(&self, value: u64) -> u64 {
        value
    }

    async fn echo_bytes(&self, blob: Vec<u8>) -> Vec<u8> {
        blob
    }

    async fn reverse(&self, mut blob: Vec<u8>) -> Vec<u8> {
        blob.reverse();
        blob
    }

    async fn slow(&self, ms: u64) -> u64 {
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        ms
    }
}
