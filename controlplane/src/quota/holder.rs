//! One sidecar process's standing in one bucket: what it has reported, the
//! leases it may hold, and what it was charged when they expired.
//!
//! Counts are cumulative call numbers of that process: the sidecar's `n`-th
//! call admitted under a lease is number `n`. `admitted` (a_rep) is the
//! highest number reported; `top` is the highest number any lease the
//! sidecar holds or may still receive lets it reach. The calls numbered
//! `(admitted, top]` are the holder's **reservation**.

use std::time::Duration;

use tokio::time::Instant;

use super::consumed::{Consumed, Used, within};
use super::{HolderKey, Report};

/// Leases sent and not yet acknowledged that are kept one by one; beyond
/// this, the two oldest are merged.
const OUTSTANDING: usize = 4;

/// Leases sent with `first_seq ..= last_seq`, none above `granted_total`
/// nor above `fallback`, none sent before `sent_at`.
#[derive(Debug, Clone, Copy)]
struct Sent {
    first_seq: u64,
    last_seq: u64,
    granted_total: u64,
    fallback: u64,
    sent_at: Instant,
}

/// Leases sent whose seq is above the acknowledged one: the sidecar may
/// still receive any of them.
#[derive(Debug, Clone, Default)]
struct Outstanding {
    sent: [Option<Sent>; OUTSTANDING],
    len: usize,
}

impl Outstanding {
    fn iter(&self) -> impl Iterator<Item = &Sent> {
        self.sent.iter().take(self.len).flatten()
    }

    fn push(&mut self, seq: u64, granted_total: u64, fallback: u64, sent_at: Instant) {
        if self.len == OUTSTANDING
            && let (Some(a), Some(b)) = (self.sent[0], self.sent[1])
        {
            // The merged range keeps the larger total and fallback and the
            // earlier send: bounds for every lease in it, so a reservation is
            // only ever overestimated.
            self.sent[0] = Some(Sent {
                first_seq: a.first_seq,
                last_seq: b.last_seq,
                granted_total: a.granted_total.max(b.granted_total),
                fallback: a.fallback.max(b.fallback),
                sent_at: a.sent_at.min(b.sent_at),
            });
            self.sent.copy_within(2..OUTSTANDING, 1);
            self.len -= 1;
        }
        self.sent[self.len] = Some(Sent {
            first_seq: seq,
            last_seq: seq,
            granted_total,
            fallback,
            sent_at,
        });
        self.len += 1;
    }

    fn top(&self) -> u64 {
        self.iter().map(|s| s.granted_total).max().unwrap_or(0)
    }

    fn fallback(&self) -> u64 {
        self.iter().map(|s| s.fallback).max().unwrap_or(0)
    }

    fn find(&self, seq: u64) -> Option<Sent> {
        self.iter()
            .find(|s| s.first_seq <= seq && seq <= s.last_seq)
            .copied()
    }

    /// The sidecar holds `seq`: it will never take a lease at or below it.
    fn acked(&mut self, seq: u64) {
        let mut kept = 0;
        for i in 0..self.len {
            if self.sent[i].is_some_and(|s| s.last_seq > seq) {
                self.sent[kept] = self.sent[i];
                kept += 1;
            }
        }
        self.len = kept;
    }

    fn clear(&mut self) {
        self.len = 0;
    }
}

/// Consumption charged when a holder's leases expired unreported.
#[derive(Debug, Clone, Copy)]
struct Charge {
    /// The consumption entry holding it (`None` when nothing was charged).
    entry: Option<u64>,
    /// Calls up to this number are charged (at `at` or earlier stamps).
    through: u64,
    /// The accounting expiry the charge is stamped at.
    at: Instant,
}

#[derive(Debug, Clone, Copy)]
enum Standing {
    /// Leases outstanding or held, reservation counted.
    Live,
    /// Every lease ended unreported; the calls it could have admitted are
    /// charged at the expiry.
    Expired { charge: Charge },
    /// Reported again after the expiry and sent lease `resume_seq`. That
    /// report may have been sent just before the expiry and miss calls made
    /// after its sending: the part of the charge above its count moved from
    /// the charge into the reservation (`floor`), where it stays until a
    /// report proves it was sent after the expiry (it holds `resume_seq` or
    /// later).
    Reviving {
        charge: Charge,
        /// `charge.through` if the charge was still in the window when the
        /// holder came back, else 0 (calls from before are out of every
        /// window to come).
        floor: u64,
        resume_seq: u64,
        /// The largest total sent since the expiry: calls numbered above it
        /// can only have been made before the expiry.
        post_top: u64,
    },
}

/// One sidecar process (node id and epoch) in one bucket.
#[derive(Debug, Clone)]
pub(super) struct Holder {
    pub(super) node_id: String,
    pub(super) epoch: u64,
    /// The epoch this holder replaced: its late reports are refused.
    pub(super) closed_epoch: Option<u64>,
    /// Its stream is open.
    pub(super) connected: bool,
    /// Calls it expects to want in the next lease period (0 when disconnected).
    pub(super) demand: u64,
    /// Calls it asks for with no call behind them (0 when disconnected).
    pub(super) standby: u64,
    /// Calls it denied, summed over its reports (operator view only).
    pub(super) denied: u64,
    /// a_rep: the highest `admitted_total` reported.
    admitted: u64,
    /// The highest `unleased_total` reported.
    unleased: u64,
    acked_seq: u64,
    /// g_ack: the `granted_total` of the lease it says it holds, or
    /// `admitted` when it holds none.
    acked_total: u64,
    outstanding: Outstanding,
    /// The seq its next lease gets: above every seq this allocator sent
    /// before (see [`Holder::order_after`]) and every seq it reports.
    next_seq: u64,
    /// Accounting expiry: the last lease's send time + ttl + grace.
    expires: Instant,
    standing: Standing,
    /// The largest fallback capacity among the lease it holds and those it
    /// may still receive (kept through an expiry: its sidecar falls back on
    /// the last lease it took).
    fallback: u64,
    /// From when its sidecar may be on fallback, as far as the reservation
    /// goes: a lifetime after the send of the newest lease it acknowledged
    /// (or of its first lease). Its sidecar admits on fallback only
    /// `fallback_after` after receiving its newest lease, later still.
    fallback_from: Option<Instant>,
    /// When the last of its fallback calls is out of every window: its last
    /// lease's end + `fallback_after` + `fallback_for` + the window.
    fallback_until: Instant,
    /// Its fallback reservation as its bucket last settled: one that grew
    /// since lifts the bucket's ceiling.
    pub(super) noticed_fallback: u64,
}

impl Holder {
    /// A holder first seen in `report`, received at `now`, its counts taken
    /// as they are. While learning, a lease it says it holds (from the
    /// allocator that ran before) is taken as reported; it ends within
    /// `lifetime` of `now`. After learning no lease this allocator does not
    /// know of is live, and every call made under one is out of the window
    /// (a holder is forgotten a horizon after its leases expired): the holder
    /// starts as expired with its charge gone, so that a late report of such
    /// calls is not counted as new. Account `report` then.
    pub(super) fn arrive(
        now: Instant,
        key: &HolderKey,
        report: &Report,
        lifetime: Duration,
        learning: bool,
    ) -> Self {
        let acked_seq = report.held.map_or(0, |h| h.seq);
        let (acked_total, standing) = if learning {
            let held = report.held.map(|h| h.granted_total);
            (held.unwrap_or(report.admitted_total), Standing::Live)
        } else {
            // Any number it reaches under those leases is covered.
            let charge = Charge {
                entry: None,
                through: u64::MAX,
                at: now,
            };
            (report.admitted_total, Standing::Expired { charge })
        };
        Self {
            node_id: key.node_id.clone(),
            epoch: key.epoch,
            closed_epoch: None,
            connected: true,
            demand: report.demand,
            standby: report.standby,
            denied: 0,
            admitted: report.admitted_total,
            unleased: report.unleased_total,
            acked_seq,
            acked_total,
            outstanding: Outstanding::default(),
            next_seq: acked_seq.saturating_add(1),
            expires: now + lifetime,
            standing,
            fallback: 0,
            fallback_from: None,
            fallback_until: now,
            noticed_fallback: 0,
        }
    }

    pub(super) fn admitted(&self) -> u64 {
        self.admitted
    }

    pub(super) fn unleased(&self) -> u64 {
        self.unleased
    }

    pub(super) fn expires(&self) -> Instant {
        self.expires
    }

    /// The highest call number it may reach unreported: any lease it holds
    /// or may receive allows no more (nor, while reviving, its floor).
    pub(super) fn top(&self) -> u64 {
        let leases = self.acked_total.max(self.outstanding.top());
        match self.standing {
            Standing::Expired { .. } => self.admitted,
            Standing::Live => leases,
            Standing::Reviving { floor, .. } => leases.max(floor),
        }
    }

    /// `top - admitted`: calls it may admit (or has admitted) unreported.
    pub(super) fn reservation(&self) -> u64 {
        self.top().saturating_sub(self.admitted)
    }

    /// Calls per window its sidecar may admit on fallback and not yet
    /// report, as reserved at `now`: its fallback capacity from
    /// `fallback_from` until `fallback_until`, else nothing.
    pub(super) fn fallback_reservation(&self, now: Instant) -> u64 {
        match self.fallback_from {
            Some(from) if now >= from && now < self.fallback_until => self.fallback,
            _ => 0,
        }
    }

    /// Until when it must be kept for its fallback reservation (`None`:
    /// it has no fallback capacity).
    pub(super) fn fallback_until(&self) -> Option<Instant> {
        (self.fallback > 0).then_some(self.fallback_until)
    }

    /// When its leases expired unreported, if they did.
    pub(super) fn expired_at(&self) -> Option<Instant> {
        match self.standing {
            Standing::Expired { charge } => Some(charge.at),
            Standing::Live | Standing::Reviving { .. } => None,
        }
    }

    /// Wants capacity: connected, leases live, demand above 0.
    pub(super) fn is_active(&self) -> bool {
        self.connected && self.demand > 0 && self.expired_at().is_none()
    }

    /// What its demand asks beyond what it already holds (0 unless active).
    pub(super) fn unmet(&self) -> u64 {
        if self.is_active() {
            self.demand.saturating_sub(self.reservation())
        } else {
            0
        }
    }

    /// At the accounting expiry, the reservation becomes consumption stamped
    /// at the expiry: every call it covers happened before (a sidecar admits
    /// nothing under a lease past ttl after the report it answers, which was
    /// sent before the lease was).
    pub(super) fn expire(&mut self, now: Instant, consumed: &mut Consumed) {
        if self.expired_at().is_some() || now < self.expires {
            return;
        }
        let through = self.top().max(self.admitted);
        let entry = consumed.push(self.expires, Used::leased(through - self.admitted));
        self.standing = Standing::Expired {
            charge: Charge {
                entry,
                through,
                at: self.expires,
            },
        };
        self.acked_total = self.admitted;
        self.outstanding.clear();
    }

    /// The process is gone (a newer epoch of its node reported at `now`):
    /// whatever it may have admitted unreported happened before `now`, and
    /// before its accounting expiry.
    /// Fallback calls it may have made are in windows after `now` too: its
    /// fallback reservation becomes consumption stamped `now`.
    pub(super) fn close(&mut self, now: Instant, consumed: &mut Consumed) {
        if self.expired_at().is_none() {
            consumed.push(now.min(self.expires), Used::leased(self.reservation()));
        }
        let unleased = self.fallback_reservation(now);
        consumed.push(
            now,
            Used {
                leased: 0,
                unleased,
            },
        );
    }

    /// Accounts a report received at `now`: new calls become consumption
    /// stamped `now`, and the lease it says it holds bounds its reservation.
    /// Returns whether it holds a lease that is still live.
    pub(super) fn account(
        &mut self,
        now: Instant,
        window: Duration,
        lifetime: Duration,
        report: &Report,
        consumed: &mut Consumed,
    ) -> bool {
        self.connected = true;
        self.demand = report.demand;
        self.standby = report.standby;
        self.denied = self.denied.saturating_add(report.denied);

        let admitted = report.admitted_total.max(self.admitted);
        let leased = match self.standing {
            Standing::Expired { charge } => {
                // Its first report since the expiry: no lease was sent since,
                // so its count is of calls made before the expiry, which the
                // charge covers. The charge keeps those; the rest moves to
                // the floor, counted the same while the charge is in the
                // window. Once it is out, calls from before the expiry are
                // out of every window to come: nothing to keep.
                let claimed = admitted.min(charge.through);
                let floor = match charge.entry {
                    Some(entry) if within(charge.at, window, now) => {
                        consumed.refund(entry, charge.through - claimed);
                        charge.through
                    }
                    _ => 0,
                };
                self.standing = Standing::Reviving {
                    charge,
                    floor,
                    resume_seq: self.next_seq,
                    post_top: 0,
                };
                admitted.saturating_sub(charge.through.max(self.admitted))
            }
            Standing::Reviving {
                charge,
                floor,
                resume_seq,
                post_top,
            } => {
                // Calls it can only have made before the expiry: all of a
                // report sent then (it held a lease from before), and any
                // numbered above every lease sent since. They belong to the
                // charge, stamped at the expiry (if it is out of the window,
                // so are they). The rest may be newer: stamped now.
                let sent_before = report.held.is_some_and(|h| h.seq < resume_seq);
                let split = if sent_before {
                    self.admitted
                } else {
                    self.admitted.max(post_top).min(admitted)
                };
                let charged = admitted.min(charge.through.max(split));
                if floor > 0
                    && let Some(entry) = charge.entry
                {
                    consumed.restore(entry, charged - split);
                }
                // Above the charge: past any lease, counted as it comes.
                (split - self.admitted) + (admitted - charged)
            }
            Standing::Live => admitted - self.admitted,
        };
        self.admitted = admitted;
        let unleased = report.unleased_total.saturating_sub(self.unleased);
        self.unleased = self.unleased.max(report.unleased_total);
        consumed.push(now, Used { leased, unleased });

        let Some(held) = report.held else {
            // It holds nothing live; only leases still in flight can let it
            // admit more.
            self.acked_total = self.admitted;
            return false;
        };
        if let Standing::Reviving { resume_seq, .. } = self.standing
            && held.seq < resume_seq
        {
            // Sent before the expiry: every lease up to then is dead.
            self.acked_total = self.admitted;
            return false;
        }
        if held.seq < self.acked_seq {
            return false;
        }
        if held.seq > self.acked_seq {
            // The total is the one this allocator sent under that seq, never
            // the one reported: a report cannot widen its own lease.
            let Some(sent) = self.outstanding.find(held.seq) else {
                // A seq never sent to this holder: not a lease it holds. What
                // it was sent stays reserved.
                return false;
            };
            self.acked_seq = held.seq;
            self.acked_total = sent.granted_total;
            self.outstanding.acked(held.seq);
            // It took that lease, so it falls back on it or a later one: not
            // before its receipt + `fallback_after`. Reserving from a
            // lifetime after its send leaves every lease sent before then a
            // window and more to end and drain.
            self.fallback = sent.fallback.max(self.outstanding.fallback());
            self.fallback_from = self.fallback_from.max(Some(sent.sent_at + lifetime));
            self.next_seq = self.next_seq.max(held.seq.saturating_add(1));
        }
        // Holding a lease sent after the expiry, it sent this report after
        // the expiry too: every call from before is reported, and the floor
        // is no longer needed.
        self.standing = Standing::Live;
        true
    }

    /// Its next lease comes after every lease numbered below `next`: seqs
    /// are the allocator's, so a holder forgotten and seen again never gets
    /// a seq it was sent before (its sidecar would ignore the lease, and a
    /// dead lease could pass for one sent after an expiry).
    pub(super) fn order_after(&mut self, next: u64) {
        self.next_seq = self.next_seq.max(next);
    }

    /// A lease up to `granted_total`, with `fallback` calls per window on
    /// fallback, is sent at `now`; its sidecar's fallback calls are out of
    /// every window by `fallback_until`. Returns its seq.
    pub(super) fn sent(
        &mut self,
        now: Instant,
        granted_total: u64,
        lifetime: Duration,
        fallback: u64,
        fallback_until: Instant,
    ) -> u64 {
        let seq = self.next_seq;
        self.next_seq = seq.saturating_add(1);
        self.outstanding.push(seq, granted_total, fallback, now);
        self.fallback = self.fallback.max(fallback);
        self.fallback_from = self.fallback_from.or(Some(now + lifetime));
        self.fallback_until = self.fallback_until.max(fallback_until);
        if let Standing::Reviving { post_top, .. } = &mut self.standing {
            *post_top = (*post_top).max(granted_total);
        }
        self.expires = now + lifetime;
        seq
    }
}
