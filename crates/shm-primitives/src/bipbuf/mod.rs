//! The BipBuffer (spec A3): a single-producer, single-consumer byte ring whose
//! grants are always contiguous.
//!
//! The producer owns `write` (and sets `watermark` when it wraps); the consumer
//! owns `read` (and clears `watermark` once it has drained the tail). Each side
//! keeps its own index in a local copy and only ever loads the other side's, so a
//! peer scribbling over *our* index in shared memory cannot confuse us. Every
//! index loaded from shared memory is checked against the capacity we were
//! built with (never the capacity stored in the ring header), and a bad value is
//! a [`RingError`], not a panic or an out-of-bounds access.
//!
//! ```
//! use shm_primitives::bipbuf::BipBuf;
//! use shm_primitives::HeapRegion;
//!
//! let heap = HeapRegion::new_zeroed(128 + 64);
//! // SAFETY: the heap region is exclusively ours and outlives the ring.
//! let ring = unsafe { BipBuf::init(heap.region(), 0, 64) }.unwrap();
//! // SAFETY: exactly one producer and one consumer exist for this ring.
//! let (mut tx, mut rx) = unsafe { (ring.producer(), ring.consumer()) };
//!
//! assert!(tx.try_grant(5).unwrap().is_some());
//! tx.granted_mut().unwrap().copy_from_slice(b"hello");
//! tx.commit(5).unwrap();
//!
//! let got = rx.try_read().unwrap().unwrap();
//! let mut buf = [0u8; 5];
//! got.copy_to(0, &mut buf).unwrap();
//! assert_eq!(&buf, b"hello");
//! rx.release(5).unwrap();
//! assert!(ring.is_empty());
//! ```

mod consumer;
mod header;
mod producer;
mod ring;
#[cfg(all(test, not(loom)))]
mod tests;

pub use consumer::{BipBufConsumer, ReadRegion};
pub use header::{offsets, BipBufHeader, RingError, BIPBUF_HEADER_SIZE};
pub use producer::BipBufProducer;
pub use ring::BipBuf;
