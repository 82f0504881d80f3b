//! The two transports under test, behind one small interface: vox-shm links
//! and a tokio `UnixStream` with a 4-byte little-endian length prefix.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use vox_shm::{ShmLinkRx, ShmLinkTx, WriteSlot};

use super::wire::{consume, stamp};

pub enum Tx {
    Shm(ShmLinkTx),
    Uds { sock: OwnedWriteHalf, buf: Vec<u8> },
}

pub enum Rx {
    Shm(ShmLinkRx),
    Uds { sock: BufReader<OwnedReadHalf>, buf: Vec<u8> },
}

fn bad(e: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

impl Tx {
    /// Sends message `seq` of `size` bytes (the payload is written in place).
    pub async fn send(&mut self, seq: u64, size: usize) -> io::Result<()> {
        match self {
            Tx::Shm(tx) => {
                let permit = tx.reserve().await?;
                let mut slot = permit.alloc(size)?;
                stamp(seq, slot.as_mut_slice());
                slot.commit();
            }
            Tx::Uds { sock, buf } => {
                // One write per message: the message is on its way when this
                // returns, as with a vox-shm commit.
                buf.resize(4 + size, 0);
                buf[..4].copy_from_slice(&(size as u32).to_le_bytes());
                stamp(seq, &mut buf[4..]);
                sock.write_all(buf).await?;
            }
        }
        Ok(())
    }

    /// Ends the sending direction.
    pub async fn close(self) -> io::Result<()> {
        match self {
            Tx::Shm(tx) => Ok(tx.close().await?),
            Tx::Uds { mut sock, .. } => sock.shutdown().await,
        }
    }
}

impl Rx {
    /// The next message's sequence number (every byte read and checked), or
    /// `None` at end of stream.
    pub async fn recv(&mut self) -> io::Result<Option<u64>> {
        match self {
            Rx::Shm(rx) => match rx.recv().await.map_err(io::Error::other)? {
                Some(m) => consume(m.as_bytes()).map(Some).map_err(bad),
                None => Ok(None),
            },
            Rx::Uds { sock, buf } => {
                let mut len = [0u8; 4];
                match sock.read_exact(&mut len).await {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
                    Err(e) => return Err(e),
                }
                buf.resize(u32::from_le_bytes(len) as usize, 0);
                sock.read_exact(buf).await?;
                consume(buf).map(Some).map_err(bad)
            }
        }
    }

    /// Receives and checks that it is message `want`.
    pub async fn expect(&mut self, want: u64) -> io::Result<()> {
        match self.recv().await? {
            Some(got) if got == want => Ok(()),
            Some(got) => Err(bad(format!("expected message {want}, got {got}: lost, duplicated or reordered"))),
            None => Err(bad(format!("end of stream while waiting for message {want}"))),
        }
    }
}
