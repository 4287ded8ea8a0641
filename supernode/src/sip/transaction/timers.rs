//! Deadline queue for all transaction timers.
//!
//! With ~640,000 live transactions (20,000 REGISTER/s × 32 s of Timer J) the driver must learn
//! the next deadline without scanning, so deadlines live in one binary heap. Cancelling a timer
//! does not touch the heap: each transaction records the deadline each of its two timer slots
//! is armed for, and an entry whose slot no longer holds that deadline (or whose transaction
//! is gone) is stale and skipped when it surfaces ("lazy deletion"). Stale entries are bounded
//! by the timers armed in the last 64·T1, because every entry surfaces by its deadline.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Which of a transaction's two timer slots an entry belongs to.
///
/// RFC 3261 §17 never runs more than two timers at once per transaction: one that retransmits
/// (A, E, G, or the 200 ms `100 Trying` timer of §17.2.1) and one that ends a state
/// (B, D, F, H, I, J, K, and RFC 6026's L and M).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Slot {
    Retransmit,
    Expire,
}

/// One armed deadline. Field order gives the heap order: earliest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Entry {
    pub at: Instant,
    pub index: u32,
    pub generation: u32,
    pub slot: Slot,
}

/// Min-heap of deadlines with lazy deletion.
#[derive(Debug, Default)]
pub(super) struct TimerQueue {
    heap: BinaryHeap<Reverse<Entry>>,
}

impl TimerQueue {
    pub fn push(&mut self, entry: Entry) {
        self.heap.push(Reverse(entry));
    }

    /// Earliest entry, possibly stale.
    pub fn peek(&self) -> Option<&Entry> {
        self.heap.peek().map(|Reverse(e)| e)
    }

    /// Removes and returns the earliest entry if it is due at `now`.
    pub fn pop_due(&mut self, now: Instant) -> Option<Entry> {
        if self.peek()?.at <= now {
            self.heap.pop().map(|Reverse(e)| e)
        } else {
            None
        }
    }

    /// Drops entries from the top while `is_stale` says so, so that `peek` reports a live
    /// deadline and the driver does not wake up for cancelled timers.
    pub fn prune(&mut self, mut is_stale: impl FnMut(&Entry) -> bool) {
        while let Some(Reverse(top)) = self.heap.peek() {
            if is_stale(top) {
                self.heap.pop();
            } else {
                break;
            }
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.heap.len()
    }
}
