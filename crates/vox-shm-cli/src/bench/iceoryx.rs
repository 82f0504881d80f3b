//! The 64 B round trip over iceoryx2 0.10 (feature `iceoryx2`), so a user can
//! set vox-shm beside it on their own machine: two publish-subscribe
//! services (ping, pong) of `[u8; 64]`, each side either polling its
//! subscriber without sleeping, as iceoryx2's own latency benchmark does, or
//! (`sleeps`) asleep on an event service of its own until the sender's
//! notifier wakes it, as iceoryx2's event-based examples do: the row to set
//! beside vox-shm's park. The payload is stamped and read in full, as for the
//! other transports.

use std::process::{Child, Command};
use std::time::{Duration, Instant};

use iceoryx2::prelude::*;

use super::model::{reap_guest, time_round_trips, Case, Measured};
use super::wire::{consume, stamp};
use crate::Res;

/// Whether this build has the iceoryx2 case.
pub const BUILT: bool = true;

/// The payload: iceoryx2's typed API needs the size at compile time.
const SIZE: usize = 64;
type Payload = [u8; SIZE];
/// The host's last message: the guest stops.
const STOP: u64 = u64::MAX;
/// Polls between checks that the other process is still there.
const CHECK_EVERY: u64 = 1 << 20;
/// A side that receives nothing for this long gives up.
const PATIENCE: Duration = Duration::from_secs(30);
/// The longest one sleep lasts before the sleeper checks on the other side.
const NAP: Duration = Duration::from_millis(100);

/// The event ports of a side that sleeps: it notifies the other side after
/// each send and waits on its own listener for the other's.
struct Wake {
    notifier: iceoryx2::port::notifier::Notifier<ipc::Service>,
    listener: iceoryx2::port::listener::Listener<ipc::Service>,
}

struct Ports {
    tx: iceoryx2::port::publisher::Publisher<ipc::Service, Payload, ()>,
    rx: iceoryx2::port::subscriber::Subscriber<ipc::Service, Payload, ()>,
    wake: Option<Wake>,
    _node: Node<ipc::Service>,
}

impl Ports {
    /// Opens (or creates) the services `{base}/ping` and `{base}/pong` (and,
    /// if it `sleeps`, the event services `{base}/ping-event` and
    /// `{base}/pong-event`); the host sends on ping, the guest on pong.
    fn open(base: &str, host: bool, sleeps: bool) -> Res<Ports> {
        set_log_level(LogLevel::Error); // not "no config file was loaded"
        let node = NodeBuilder::new().create::<ipc::Service>()?;
        let name = |dir: &str| -> Res<ServiceName> { Ok(format!("{base}/{dir}").as_str().try_into()?) };
        let service = |dir: &str| -> Res<_> {
            // No history: a subscriber that connects late must not get
            // a message twice.
            Ok(node.service_builder(&name(dir)?).publish_subscribe::<Payload>().history_size(0).open_or_create()?)
        };
        let event = |dir: &str| -> Res<_> { Ok(node.service_builder(&name(dir)?).event().open_or_create()?) };
        let (out, inp) = if host { ("ping", "pong") } else { ("pong", "ping") };
        // The listener before the subscriber: once the other side's send
        // reaches our subscriber, its notifications reach us too.
        let wake = if sleeps {
            let listener = event(&format!("{inp}-event"))?.listener_builder().create()?;
            let notifier = event(&format!("{out}-event"))?.notifier_builder().create()?;
            Some(Wake { notifier, listener })
        } else {
            None
        };
        let (out, inp) = (service(out)?, service(inp)?);
        let rx = inp.subscriber_builder().create()?;
        let tx = out.publisher_builder().create()?;
        Ok(Ports { tx, rx, wake, _node: node })
    }

    /// Sends `seq` (and wakes the other side, if it sleeps); the number of
    /// subscribers it reached.
    fn send(&self, seq: u64) -> Res<usize> {
        let mut sample = self.tx.loan_uninit()?.write_payload([0; SIZE]);
        stamp(seq, sample.payload_mut());
        let reached = sample.send()?;
        if let Some(w) = &self.wake {
            w.notifier.notify()?;
        }
        Ok(reached)
    }

    /// Polls, or sleeps between looks, until a message arrives; `alive` is
    /// asked now and then. A notification sent between a look and the sleep
    /// is kept by the listener, so the sleep returns at once.
    fn recv(&self, mut alive: impl FnMut() -> Res) -> Res<u64> {
        let (mut polls, since) = (0u64, Instant::now());
        loop {
            if let Some(sample) = self.rx.receive()? {
                return Ok(consume(sample.payload())?);
            }
            let check = match &self.wake {
                Some(w) => w.listener.timed_wait(|_| {}, NAP)? == 0,
                None => {
                    polls += 1;
                    polls % CHECK_EVERY == 0
                }
            };
            if check {
                alive()?;
                if since.elapsed() > PATIENCE {
                    return Err("iceoryx2: nothing received for 30 s".into());
                }
            }
        }
    }
}

fn still_running(child: &mut Child) -> Res {
    match child.try_wait()? {
        Some(status) => Err(format!("guest exited mid-run: {status}").into()),
        None => Ok(()),
    }
}

/// The host: spawns `cmd` (the guest) and times `case.count` round trips
/// after a warm-up, as the other round trips; both sides sleep between
/// messages if `sleeps`, else poll.
pub fn host(case: &Case, mut cmd: Command, sleeps: bool) -> Res<Measured> {
    if case.size != SIZE {
        return Err(format!("the iceoryx2 round trip is {SIZE} B only").into());
    }
    let base = format!("vox-shm-bench/{}", std::process::id());
    let ports = Ports::open(&base, true, sleeps)?;
    let mut child = cmd.arg(format!("--iceoryx2-service={base}")).spawn()?;
    // Until the guest's subscriber is there a message reaches nobody.
    while ports.send(STOP - 1)? == 0 {
        still_running(&mut child)?;
        std::thread::sleep(Duration::from_millis(1));
    }
    if ports.recv(|| still_running(&mut child))? != STOP - 1 {
        return Err("iceoryx2: the guest's first answer is not the first message".into());
    }
    let m = time_round_trips(case.count, |seq| {
        ports.send(seq)?;
        match ports.recv(|| still_running(&mut child))? {
            got if got == seq => Ok(()),
            got => Err(format!("iceoryx2: expected message {seq}, got {got}").into()),
        }
    })?;
    ports.send(STOP)?;
    reap_guest(child)?;
    Ok(m)
}

/// The guest: echoes every message until the host's last, sleeping between
/// them if `sleeps`.
pub fn guest(rest: &[String], sleeps: bool) -> Res {
    let base = rest
        .iter()
        .find_map(|a| a.strip_prefix("--iceoryx2-service="))
        .ok_or("the iceoryx2 guest needs --iceoryx2-service")?;
    let ports = Ports::open(base, false, sleeps)?;
    loop {
        let seq = ports.recv(|| Ok(()))?;
        if seq == STOP {
            return Ok(());
        }
        ports.send(seq)?;
    }
}
