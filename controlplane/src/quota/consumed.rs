//! What a bucket has consumed: calls known to be admitted, each stamped no
//! earlier than it happened, merged into about 64 slots per window.
//!
//! Merging only ever moves a stamp later (never earlier), so a call still
//! counts against every window it truly falls in; the price is that its
//! capacity comes back up to one slot (`window / 64`) late. Memory is bounded
//! by the slots inside the horizon, whatever the number of reports.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Slots per window.
const SLOTS: u32 = 64;

/// Calls consumed, split by how they were admitted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct Used {
    /// Admitted under a lease: what the fleet limit bounds exactly.
    pub(super) leased: u64,
    /// Admitted without a valid lease (fallback): outside the guarantee, but
    /// counted so that grants leave room for them.
    pub(super) unleased: u64,
}

impl Used {
    pub(super) fn leased(n: u64) -> Self {
        Self {
            leased: n,
            unleased: 0,
        }
    }

    pub(super) fn total(self) -> u64 {
        self.leased.saturating_add(self.unleased)
    }

    fn is_zero(self) -> bool {
        self.leased == 0 && self.unleased == 0
    }

    fn add(&mut self, other: Self) {
        self.leased = self.leased.saturating_add(other.leased);
        self.unleased = self.unleased.saturating_add(other.unleased);
    }
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// Names the entry for a later refund of an expiry charge.
    id: u64,
    /// The latest stamp merged into the entry.
    latest: Instant,
    used: Used,
}

/// A bucket's consumption, oldest first and sorted by `latest`.
#[derive(Debug, Clone)]
pub(super) struct Consumed {
    entries: VecDeque<Entry>,
    /// Slot boundaries are counted from here.
    origin: Instant,
    width: Duration,
    next_id: u64,
}

/// True while a stamp at `at` counts against the window of length `span`
/// ending at `now`, that is while `at > now - span`.
pub(super) fn within(at: Instant, span: Duration, now: Instant) -> bool {
    at.checked_add(span).is_none_or(|end| end > now)
}

impl Consumed {
    pub(super) fn new(origin: Instant, window: Duration) -> Self {
        let mut consumed = Self {
            entries: VecDeque::new(),
            origin,
            width: Duration::ZERO,
            next_id: 0,
        };
        consumed.set_window(window);
        consumed
    }

    /// Slots follow the bucket's current window.
    pub(super) fn set_window(&mut self, window: Duration) {
        self.width = (window / SLOTS).max(Duration::from_nanos(1));
    }

    fn slot(&self, at: Instant) -> u128 {
        at.saturating_duration_since(self.origin).as_nanos() / self.width.as_nanos()
    }

    /// Records `used` stamped at `at` (or, merged, a little later). Returns
    /// the id of the entry it went into, `None` if there was nothing to add.
    pub(super) fn push(&mut self, at: Instant, used: Used) -> Option<u64> {
        if used.is_zero() {
            return None;
        }
        let slot = self.slot(at);
        let p = self.entries.partition_point(|e| e.latest <= at);
        // A later entry of the same slot takes it at its own, later stamp.
        if let Some(later) = self.entries.get(p).map(|e| e.latest)
            && self.slot(later) == slot
            && let Some(e) = self.entries.get_mut(p)
        {
            e.used.add(used);
            return Some(e.id);
        }
        // An earlier entry of the same slot moves its stamp up to `at`; the
        // entry after it is later still, so the order holds.
        if p > 0
            && let Some(earlier) = self.entries.get(p - 1).map(|e| e.latest)
            && self.slot(earlier) == slot
            && let Some(e) = self.entries.get_mut(p - 1)
        {
            e.latest = at;
            e.used.add(used);
            return Some(e.id);
        }
        let id = self.next_id;
        self.next_id += 1;
        self.entries.insert(
            p,
            Entry {
                id,
                latest: at,
                used,
            },
        );
        Some(id)
    }

    /// Takes back up to `leased` calls from entry `id` (if still kept).
    pub(super) fn refund(&mut self, id: u64, leased: u64) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.id == id) {
            e.used.leased = e.used.leased.saturating_sub(leased);
        }
    }

    /// Puts back up to `leased` calls into entry `id` (if still kept): calls
    /// known to be no later than its stamp.
    pub(super) fn restore(&mut self, id: u64, leased: u64) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.id == id) {
            e.used.leased = e.used.leased.saturating_add(leased);
        }
    }

    /// Forgets entries that no window of length up to `horizon` ending at
    /// `now` or later can count.
    pub(super) fn expire(&mut self, now: Instant, horizon: Duration) {
        while let Some(front) = self.entries.front() {
            if within(front.latest, horizon, now) {
                break;
            }
            self.entries.pop_front();
        }
    }

    /// What counts against the window of length `window` ending at `now`.
    pub(super) fn in_window(&self, now: Instant, window: Duration) -> Used {
        let mut sum = Used::default();
        for e in self.entries.iter().rev() {
            if !within(e.latest, window, now) {
                break;
            }
            sum.add(e.used);
        }
        sum
    }

    pub(super) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
