//! The ring-buffer reader: `EVENTS` via `AsyncFd` → decoded batches on the pipeline channel.

use std::{future::Future, time::Duration};

use anyhow::Context;
use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{Interest, unix::AsyncFd},
    sync::mpsc,
};
use vmatrace_common::{Event, event::EVENT_SIZE};

use super::{counters, load::Loaded, stacks::StackResolver};
use crate::pipeline::{SourceItem, push_unfolded};

/// Events per `SourceItem::Events` batch: large enough to amortise channel wake-ups,
/// small enough that the pipeline sees a steady flow.
const MAX_BATCH: usize = 4096;
/// How often the kernel counters are sent. Each snapshot is ~60 system calls (16 per-CPU
/// map lookups, each program's fdinfo for its skipped runs); with the drain timer below,
/// the timers were most of an idle tracer's CPU under TCG (0.43 s per 11 s with no
/// events at 250 ms / 50 ms; docs/performance.md). Once a second is what the dashboard
/// shows anyway.
const COUNTER_PERIOD: Duration = Duration::from_millis(1000);
/// How often the ring is drained without a wake-up. The programs submit with
/// `BPF_RB_NO_WAKEUP` and force a wake-up only once a quarter of the ring is unread
/// (`vmatrace-ebpf/src/emit.rs`: a wake-up per event cost more than the rest of the
/// program), so below that fill level this timer is what delivers events: it bounds
/// their latency to the dashboard, and nothing waits forever for a wake-up. 200 ms: each
/// tick is a wake-up of this thread whether or not anything arrived (see
/// `COUNTER_PERIOD`), and a fifth of a second is below what a person notices on the
/// dashboard.
pub const DRAIN_PERIOD: Duration = Duration::from_millis(200);
/// Upper bound of batches read per `DRAIN_PERIOD` tick.
const TIMER_BATCHES: usize = 16;

/// Decode one ring-buffer record. `None`: too short, or an unknown kind.
pub fn decode(record: &[u8]) -> Option<Event> {
    if record.len() < EVENT_SIZE {
        return None;
    }
    Event::from_bytes(record).filter(|e| e.kind().is_some())
}

/// What one pass over the ring produced.
struct Batch {
    events: Vec<Event>,
    undecodable: u64,
    /// The ring was emptied (as opposed to stopping at `MAX_BATCH`).
    exhausted: bool,
}

fn drain(ring: &mut RingBuf<MapData>) -> Batch {
    let mut b = Batch {
        events: Vec::with_capacity(256),
        undecodable: 0,
        exhausted: false,
    };
    while b.events.len() < MAX_BATCH {
        let Some(item) = ring.next() else {
            b.exhausted = true;
            break;
        };
        match decode(&item) {
            Some(e) => push_unfolded(&mut b.events, e),
            None => b.undecodable += 1,
        }
    }
    b
}

/// Send a batch, preceded by the stacks its slow waits name that were not sent yet;
/// `false` when the receiver is gone.
async fn send(tx: &mpsc::Sender<SourceItem>, b: Batch, stacks: &mut Option<StackResolver>) -> bool {
    // Stacks whose symbols are not parsed yet follow in a later batch (never wait here).
    if let Some(r) = stacks {
        for s in r.new_stacks(&b.events, false) {
            if tx.send(SourceItem::Stack(s)).await.is_err() {
                return false;
            }
        }
    }
    if b.undecodable > 0
        && tx
            .send(SourceItem::Undecodable(b.undecodable))
            .await
            .is_err()
    {
        return false;
    }
    b.events.is_empty() || tx.send(SourceItem::Events(b.events)).await.is_ok()
}

/// Drain up to `max` batches, stopping early once the ring is empty; `false` when the
/// receiver is gone.
async fn drain_batches(
    ring: &mut RingBuf<MapData>,
    tx: &mpsc::Sender<SourceItem>,
    max: usize,
    stacks: &mut Option<StackResolver>,
) -> bool {
    for _ in 0..max {
        let batch = drain(ring);
        let exhausted = batch.exhausted;
        if !send(tx, batch, stacks).await {
            return false;
        }
        if exhausted {
            break;
        }
    }
    true
}

pub(super) async fn stream(
    loaded: Loaded,
    tx: mpsc::Sender<SourceItem>,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    let Loaded {
        links,
        ring,
        counters: counter_map,
        stacks,
        fallbacks,
        mut ebpf,
        programs,
        _stats,
        link_misses,
    } = loaded;
    // The programs' kernel-side skip counts ride along with every counter snapshot.
    let skips = counters::skip_sources(&ebpf, &programs);
    let mut links = Some(links);
    let mut stacks = stacks.map(StackResolver::new);
    // SAFETY: the RingBuf owns its map fd, which stays open and unchanged until the
    // RingBuf (inside the AsyncFd) is dropped; we never swap the inner value.
    let mut afd = unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(std::io::Error::from)
        .context("registering the EVENTS ring buffer with the runtime")?;
    let mut tick = tokio::time::interval(COUNTER_PERIOD);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut drain_tick = tokio::time::interval(DRAIN_PERIOD);
    drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            biased;
            _ = &mut stop => break,
            guard = afd.readable_mut() => {
                let mut guard = guard.context("waiting on the EVENTS ring buffer")?;
                let batch = drain(guard.get_inner_mut());
                if batch.exhausted {
                    guard.clear_ready();
                }
                drop(guard);
                if !send(&tx, batch, &mut stacks).await {
                    return Ok(());
                }
            }
            _ = drain_tick.tick() => {
                // Unlike the readiness branch this does not touch the readiness flag: a
                // forced wake-up that arrives meanwhile still wakes the branch above,
                // which then finds the ring (partly) drained, which is fine. At most
                // `TIMER_BATCHES` batches per tick so `stop` is seen under a flood (a
                // flood fills a quarter of the ring and forces wake-ups anyway).
                if !drain_batches(afd.get_mut(), &tx, TIMER_BATCHES, &mut stacks).await {
                    return Ok(());
                }
            }
            _ = tick.tick() => {
                let snap = counters::snapshot(&counter_map, fallbacks.as_ref(), &skips, &link_misses);
                if tx.send(SourceItem::Counters(snap)).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
    // Disarm, so a call that starts once its entry probe is gone is not reported as an
    // unmatched return (failing to disarm only costs such counts: go on). Then detach so
    // nothing new arrives, in reverse attach order (return probes were attached first, so
    // they go last), and drain what the programs already wrote.
    if let Err(e) = super::load::set_armed(&mut ebpf, false) {
        eprintln!("vmatrace: {e:#}");
    }
    // The kprobe links' missed counts go with the links: read them one last time.
    link_misses.refresh(&counters::kprobe_ids(&skips));
    if let Some(mut links) = links.take() {
        while let Some(link) = links.pop() {
            drop(link);
        }
    }
    if !drain_batches(afd.get_mut(), &tx, usize::MAX, &mut stacks).await {
        return Ok(());
    }
    // Stacks seen before kallsyms was parsed, if it still is not.
    if let Some(r) = &mut stacks {
        for s in r.new_stacks(&[], true) {
            if tx.send(SourceItem::Stack(s)).await.is_err() {
                return Ok(());
            }
        }
    }
    let snap = counters::snapshot(&counter_map, fallbacks.as_ref(), &skips, &link_misses);
    let _ = tx.send(SourceItem::Counters(snap)).await;
    drop(ebpf);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmatrace_common::EventKind;

    #[test]
    fn decode_checks_length_and_kind() {
        let mut e = Event::ZERO;
        e.kind = EventKind::VmaFree as u16;
        let bytes = *e.as_bytes();
        assert_eq!(decode(&bytes), Some(e));
        assert_eq!(decode(&bytes[..EVENT_SIZE - 1]), None);
        e.kind = 0;
        assert_eq!(decode(e.as_bytes()), None);
        e.kind = 200;
        assert_eq!(decode(e.as_bytes()), None);
        // Longer records (ring-buffer padding) decode from their first 128 bytes.
        let mut long = bytes.to_vec();
        long.extend_from_slice(&[0xff; 8]);
        assert_eq!(
            decode(&long).map(|e| e.kind),
            Some(EventKind::VmaFree as u16)
        );
    }
}
