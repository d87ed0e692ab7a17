//! Fleet quota: leases that let every sidecar decide each call locally while
//! a limit of `max` calls per sliding `window` holds across the whole fleet.
//!
//! This module is the allocator alone: no I/O, no gRPC, no clock. Callers
//! pass the time (`tokio::time::Instant`, never going backwards) with every
//! call; the quota stream adapts it to the network. One [`Allocator`] keeps a
//! bucket per [`BucketKey`] (server, counter, scope key) and in it a holder
//! per sidecar process ([`HolderKey`]: node id and epoch).
//!
//! # The sidecar's side
//!
//! Leases are **cumulative**. A sidecar process counts, per bucket, `A`: the
//! calls it admitted under leases since it started counting, and:
//!
//! 1. admits a call under the lease it holds only while `A < granted_total`,
//!    and only until `ttl` after it sent the report the lease answers (the
//!    quota stream's rule; a sidecar that starts the ttl on receipt instead
//!    is covered if leases reach it within `grace`);
//! 2. takes a lease that arrives on its current stream only if its `seq` is
//!    greater than the last one it took there (a new stream starts afresh;
//!    the lease it holds stays valid);
//! 3. reports `admitted_total = A`, `unleased_total`, and `held` (the lease
//!    it admits under, `None` once that has run out) as they are when the
//!    report is sent; reports of one process are handled in the order sent;
//! 4. never lets a count go down, except by starting a bucket again (an idle
//!    one it forgot, with no live lease and nothing in its window): then it
//!    takes no lease answering a report sent before it started again.
//!
//! Leases and reports may take any time.
//!
//! # Why the limit holds
//!
//! Per bucket, at every instant: `consumed_in_window(now) + Σ reservation ≤
//! max`, where `consumed` counts calls admitted under leases (what the
//! limit bounds) and a holder's reservation is `top − a_rep`: `a_rep` the
//! highest `admitted_total` reported, `top` the largest `granted_total` among
//! the lease it acknowledged holding and the leases sent with a greater seq.
//!
//! - A reported call is consumption stamped with the report's receipt: no
//!   earlier than the call, so it counts against every window it fell in.
//! - An unreported call of a live holder is numbered in `(a_rep, top]`: by
//!   rules 2 and 3 the sidecar holds the acknowledged lease or a later one,
//!   and by rule 1 never passes its total. A smaller lease therefore frees
//!   nothing until a report says the sidecar holds it. The acknowledged
//!   lease counts at the total this allocator sent under its seq, whatever
//!   the report says; a seq never sent to the holder acknowledges nothing.
//!   A report's `demand` and `standby` count at most `max`.
//! - At the accounting expiry (last send + ttl + grace) no lease is usable
//!   (rule 1): the reservation is charged as consumption stamped at the
//!   expiry, no earlier than any call it covers.
//! - A grant raises a holder's reservation to at most `max − consumed −
//!   others' reservations` (calls admitted without a lease count in
//!   `consumed` there too), so the sum never passes `max`.
//!
//! Hence the calls in any window `(t − window, t]` number at most
//! `consumed_in_window(t) + Σ reservation(t) ≤ max`.
//!
//! **Coming back after an expiry.** The holder's first report after it can
//! only count calls made before the expiry (no lease was sent since): those
//! stay in the charge. The report may have been sent just before the expiry,
//! though, and miss calls made after its sending: the rest of the charge is
//! not refunded but moved into the holder's reservation (a *floor*), until a
//! report proves it was sent after the expiry by holding a lease sent since.
//! Meanwhile, calls numbered above every lease sent since the expiry, or
//! reported while holding an older lease, can only be from before it and go
//! back into the charge; the rest may be new and are stamped at receipt.
//!
//! **Seqs** come from one counter per allocator, so a holder forgotten (a
//! horizon after its expiry) and seen again never gets a seq its sidecar
//! took before. After learning, a holder the allocator does not know holds
//! no live lease, and every call it made under one is out of the window: it
//! starts as expired with its charge gone, so late reports of such calls
//! are not counted as new. A holder whose counts go down started that bucket
//! again (rule 4): it is closed and seen as new.
//!
//! **Unleased calls** (`unleased_total`) are consumption too, so grants
//! leave room for them. Calls `allow` lets through are outside every bound.
//!
//! # Partitions: fallback within `max`
//!
//! A sidecar cut off from the control plane once its lease has ended may,
//! under `fallback`, admit calls on its own. For the fleet to stay within
//! `max` then, those calls need capacity the others cannot be granted, and
//! it must be there before the first of them: a window in which the other
//! sidecars spent `max` before the cut must not also hold fallback calls.
//! Every [`Lease`] therefore bounds fallback in rate and in time, and the
//! allocator reserves it over that time ([`Lease::fallback`] `F` = `max ÷
//! holders`, `lifetime` = ttl + grace, `W` the window):
//!
//! 5. (sidecar) it admits on fallback at most `F` calls in any window, only
//!    from `fallback_after = 2 × lifetime + W` after receiving its newest
//!    lease, and only until `fallback_after + fallback_for` after that
//!    lease's end (`fallback_for`: [`AllocatorConfig::fallback_horizon`]);
//!    before its first lease it admits nothing on fallback.
//! 6. (allocator) a holder's **fallback reservation** is `F` (the largest it
//!    was sent among the lease it acknowledged and later ones) from
//!    `R = lifetime` after the send of the newest lease it acknowledged
//!    holding (or of its first lease), until its accounting expiry +
//!    `fallback_after + fallback_for + W`. It counts in `Σ reservation` and
//!    so in every grant's room. While the holder keeps reporting, `R` stays
//!    ahead of the clock and nothing is reserved.
//!
//! Why connected and cut-off sidecars stay within `max` together: by rule
//! 2 the sidecar's newest lease is the acknowledged one or later, received
//! no earlier than its send, so its first fallback call comes at `R +
//! lifetime + W` or later. Every lease sent before `R` ends by `R + ttl`, and
//! every charge or consumption stamped before `R + lifetime` is out of the
//! window by then; a window holding a fallback call therefore holds, beside
//! it, only calls under leases sent from `R` on, each granted with `F` in
//! the sum (a reservation that begins may lift the sum above `max`: as
//! after a shrink, nothing new is granted until it is back under). Its
//! fallback calls number at most `F` per window (rule 5), its
//! last is made before its last lease's end + `fallback_after +
//! fallback_for`, at most its accounting expiry + the same, so they are out
//! of every window when the reservation ends. When it reports again its
//! fallback calls become consumption stamped at receipt (no earlier than
//! the calls), and once it acknowledges a new lease `R` moves ahead again.
//! A holder replaced by a new process of its node has its reservation
//! charged as consumption at that moment. A reservation that begins or grows
//! (a larger `F` sent) lifts the ceiling as above; so does a renewal while
//! re-learning (bounded by the earlier control plane's sum, not by this
//! one's fallback reservations), whose leases end before any holder here
//! may fall back.
//!
//! The price: a cut-off sidecar refuses for `fallback_after` before falling
//! back, and stops after `fallback_for`; a holder that is gone (or cut off)
//! keeps `F` out of the others' reach until its fallback could no longer be
//! in any window. A zero horizon turns fallback off: `F = 0`, nothing
//! reserved. The argument assumes the sidecars' and control plane's clocks
//! run at the same rate, as leases already do.
//!
//! **Spec changes.** A bucket takes the [`LimitSpec`] of the newest policy
//! version reported. If `max` shrinks or the window grows, nothing new is
//! granted until the sum is back under the new `max`; a window spanning the
//! change is bounded by the larger of the two limits.
//!
//! **Calls from outside the grants.** A holder first seen brings its
//! trailing-window count as consumption: calls made under a predecessor's
//! leases, or on fallback, or — when its report arrives after the allocator
//! forgot it, a horizon past its expiry — calls already counted once. They
//! may lift the sum above `max`; as after a shrink, nothing new is granted
//! until it has drained back under.
//!
//! # Sharing
//!
//! Capacity follows reported demand. On every report the holder's next
//! lease is its max-min fair share of what the window has left (`max −
//! consumed`), over the `demand`s of the connected holders with live leases,
//! within what is free. A holder with no demand gets nothing new, so idle
//! capacity comes back at its next renewal; a newcomer is served at once
//! from what is free, and from the others' shares as they renew. Units the
//! integer share leaves over go one each to the next holders to renew.
//!
//! A `standby` ask (calls with no call behind them, so that a bucket's
//! first call finds a lease) is served only from what is free and no other
//! holder's demand wants beyond what it holds. While the pool is contended
//! an idle holder's renewal therefore covers what it admitted and nothing
//! more: its lease shrinks to zero, and its capacity is free once it says
//! it holds the smaller lease (two renewals after a busy holder's demand).
//! However many holders are idle, a busy one is held back only that long;
//! a node without a lease is served one round trip after its first call, if
//! anything is free. Standby grants stay within what is free, so they
//! change nothing in why the limit holds. Work per report is O(holders in
//! the bucket).
//!
//! # Restarts
//!
//! A new [`Allocator`] knows nothing of its predecessor's leases and starts
//! in **learning** mode for `lease_ttl + grace`, by which time every lease the
//! predecessor sent has run out ([`Allocator::resume`] learns only until the
//! predecessor's leases end, which the control plane notes in its data dir
//! before sending them, and not at all when none can be in use; a holder first
//! seen after learning brings its trailing-window count as consumption too).
//! While learning, a holder is re-created from
//! its first report (`a_rep = admitted_total`, its trailing-window count
//! `window_admitted` pushed as consumption) and renewed at the total it says
//! it holds, never more; one holding nothing gets nothing. Every call made
//! after the predecessor stopped is thus within what that predecessor had
//! reserved, and the learned sum is within `max` too. This is exact for every
//! sidecar that reports before learning ends. One silent throughout (cut off,
//! or a process that ended shortly before the restart) may have admitted,
//! under an old lease, calls no report will tell;
//! [`AllocatorConfig::learn_whole_window`] extends learning by one window, so
//! that such calls are out of every window before anything new is granted,
//! at the cost of one window without new capacity.
//!
//! **Fallback calls.** Once the predecessor's leases have ended, its nodes
//! may still have admitted calls on fallback that only their reports tell.
//! [`Allocator::await_nodes`] names the nodes the predecessor served (the
//! control plane keeps them in its data dir): nothing new is granted until
//! each has reported, so the first node back is not granted from a window
//! that looks emptier than it is. A new allocator does not know its
//! predecessor's fallback reservations, so a node still silent once the
//! first deadline has passed is waited for as long as it may admit fallback
//! calls counted in a window: [`Allocator::await_fallback`] takes `E`, when
//! the predecessor's last lease ended (the marker in the data dir, even long
//! past), and a bucket of window `W` grants nothing new while such a node is
//! silent, until `E + fallback_after + fallback_for + W` (rule 5: the node's
//! newest lease ended by `E`, its last fallback call is made before that
//! end + `fallback_after + fallback_for`). While any node is waited for, a
//! holder is renewed at what it admitted, not at the lease it holds: unused
//! room the predecessor granted before it reserved a cut-off node's fallback
//! must not outlive the predecessor's leases. Only calls under the
//! predecessor's own leases (which end by `E`, as under the predecessor)
//! and the silent nodes' fallback calls (each within the `F` the
//! predecessor reserved for it) are made meanwhile, so the argument above
//! holds across the restart. This assumes the predecessor ran with the same
//! ttl, grace, horizon and windows; a window that shrank across the restart
//! is waited for at its new length. Which buckets a silent node held, and its
//! `F`, are not kept, so the wait holds every bucket, not only the node's.
//! The control plane keeps a node written down while it may still admit
//! such calls (its fallback reservation here, or the wait above for the
//! longest window it knows).

mod allocator;
mod bucket;
mod consumed;
mod holder;

use std::time::Duration;

pub use allocator::{Allocator, BucketView, HolderView};

/// A fleet-wide counter: one limit on one server, for one scope key.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BucketKey {
    pub server: String,
    /// The limit's counter id, stable across policy versions.
    pub counter: String,
    /// The grant id, session id, or `""` for pod and global scopes.
    pub scope_key: String,
}

/// One sidecar process: its node id and the random nonce it picked at start.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HolderKey {
    pub node_id: String,
    pub epoch: u64,
}

/// A limit: at most `max` calls in any trailing `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitSpec {
    pub max: u64,
    /// Must not be zero.
    pub window: Duration,
}

/// The lease a sidecar says it admits under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeldLease {
    pub seq: u64,
    pub granted_total: u64,
}

/// What one sidecar process says about one bucket. Totals are cumulative
/// since the process started counting the bucket, as of the report's
/// sending.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The policy version the sidecar enforces; the newest one reported sets
    /// the bucket's spec.
    pub policy_version: u64,
    /// The limit as that version states it: the quota stream looks it up in
    /// the version as the control plane stored it, never in the report.
    pub spec: LimitSpec,
    /// Calls admitted under leases (`A`).
    pub admitted_total: u64,
    /// Calls admitted without a valid lease (fallback while the control
    /// plane was unreachable).
    pub unleased_total: u64,
    /// Calls denied since the previous report.
    pub denied: u64,
    /// The lease it admits under, if it has not expired.
    pub held: Option<HeldLease>,
    /// Calls it expects to want in the next lease period, from the calls it
    /// has seen.
    pub demand: u64,
    /// Calls it asks for with no call behind them (a bucket its bundle
    /// names, kept ready so that a first call is admitted at once): granted
    /// only from capacity no holder's `demand` wants.
    pub standby: u64,
    /// Calls it admitted under leases in its trailing window; read only
    /// while the allocator learns, when it first sees this process.
    pub window_admitted: u64,
}

/// The allocator's answer to a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Greater than every seq this allocator sent before, to any holder.
    pub seq: u64,
    /// The sidecar may admit while its `admitted_total < granted_total`.
    pub granted_total: u64,
    /// Valid for this long from receipt.
    pub ttl: Duration,
    /// Report again within this.
    pub refresh: Duration,
    /// Calls per window the sidecar may admit alone once its lease has
    /// expired and the control plane is unreachable, from `fallback_after`
    /// after receiving this lease (its newest) until `fallback_after +
    /// fallback_for` after this lease's end; outside that, nothing.
    pub fallback: u64,
    /// Two lease lifetimes and the window: the time the control plane needs
    /// to reserve the fallback capacity and drain every lease sent before.
    pub fallback_after: Duration,
    /// How long a cut-off sidecar may admit on fallback at most (the
    /// horizon), and so how long its capacity stays reserved for it.
    pub fallback_for: Duration,
}

/// The allocator's timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AllocatorConfig {
    /// A lease's validity from receipt; capped at the bucket's window.
    pub lease_ttl: Duration,
    /// How often sidecars should report.
    pub refresh: Duration,
    /// Added to the ttl for the allocator's own expiry of a lease: margin
    /// for clocks, and the longest a lease may take to reach a sidecar that
    /// starts its ttl on receipt.
    pub grace: Duration,
    /// Learn for a bucket's whole window more after a restart: exact even if
    /// a sidecar stays silent through learning (see the module docs).
    pub learn_whole_window: bool,
    /// The fallback horizon: how long a sidecar cut off from the control
    /// plane may admit on fallback, once it may start (see the module docs).
    /// Its capacity is reserved that long, and a window more.
    pub fallback_horizon: Duration,
}

impl Default for AllocatorConfig {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(10),
            refresh: Duration::from_secs(1),
            grace: Duration::from_secs(1),
            learn_whole_window: false,
            fallback_horizon: Duration::from_secs(300),
        }
    }
}

/// Why a report was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    #[error("limit {counter:?} has a zero-length window; a fleet limit needs a window above zero")]
    ZeroWindow { counter: String },
    #[error(
        "node {node_id:?} reported from process epoch {epoch}, which a newer process of that node replaced; the report is ignored"
    )]
    ClosedEpoch { node_id: String, epoch: u64 },
}

#[cfg(test)]
mod partition_tests;
#[cfg(test)]
mod simulation_tests;
