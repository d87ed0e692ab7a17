//! Admission for opening policy streams: a fleet reconnecting at once (after
//! a control-plane restart, a network partition healing) is let in a few
//! hundred at a time instead of all at once, and the queue in front of the
//! door is bounded too.
//!
//! A stream holds a permit from admission until its opening handshake is
//! done (first request read, refusals remembered, first answer queued).
//! Without a free permit it waits, up to `wait`; without room among the
//! `max_waiting` waiters it is refused at once. A refused sidecar retries
//! with its backoff, so the refusal spreads the storm out in time.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Streams in their opening handshake at once (at least 1).
    pub opening: usize,
    /// Streams waiting for one of those places; more are refused at once.
    pub waiting: usize,
    /// How long a stream waits before it is refused.
    pub wait: Duration,
}

/// Why a stream was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Every waiting place was taken.
    #[error(
        "the control plane is admitting many streams and its queue is full; retry with backoff"
    )]
    QueueFull,
    /// No opening place came free within the wait.
    #[error(
        "the control plane is admitting many streams; none came free in time, retry with backoff"
    )]
    TimedOut,
}

/// The admission gate (see the module doc).
#[derive(Debug)]
pub struct StreamAdmission {
    opening: Arc<Semaphore>,
    waiting: AtomicUsize,
    limits: Limits,
}

impl StreamAdmission {
    pub fn new(limits: Limits) -> Self {
        Self {
            opening: Arc::new(Semaphore::new(limits.opening.max(1))),
            waiting: AtomicUsize::new(0),
            limits,
        }
    }

    /// A place in the opening handshake, held until the permit is dropped.
    pub async fn admit(&self) -> Result<OwnedSemaphorePermit, Refused> {
        if let Ok(permit) = self.opening.clone().try_acquire_owned() {
            return Ok(permit);
        }
        let _waiting = Waiter::enter(&self.waiting, self.limits.waiting)?;
        match tokio::time::timeout(self.limits.wait, self.opening.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; treat it like a timeout anyway.
            Ok(Err(_)) | Err(_) => Err(Refused::TimedOut),
        }
    }

    /// Streams waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }
}

/// One of the bounded waiting places, given back on drop.
struct Waiter<'a>(&'a AtomicUsize);

impl<'a> Waiter<'a> {
    fn enter(count: &'a AtomicUsize, max: usize) -> Result<Self, Refused> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .map(|_| Self(count))
            .map_err(|_| Refused::QueueFull)
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn admission(opening: usize, waiting: usize) -> Arc<StreamAdmission> {
        Arc::new(StreamAdmission::new(Limits {
            opening,
            waiting,
            wait: Duration::from_secs(5),
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn beyond_the_opening_places_streams_wait_and_beyond_the_queue_are_refused() {
        let gate = admission(2, 3);
        let held = [
            gate.admit().await.expect("first"),
            gate.admit().await.expect("second"),
        ];
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let gate = gate.clone();
                tokio::spawn(async move { gate.admit().await.map(drop) })
            })
            .collect();
        tokio::task::yield_now().await;
        assert_eq!(gate.waiting(), 3);
        // The queue is full: refused at once, without waiting.
        let started = tokio::time::Instant::now();
        assert_eq!(gate.admit().await.err(), Some(Refused::QueueFull));
        assert_eq!(started.elapsed(), Duration::ZERO);

        // Places coming free let the waiters in, in turn.
        drop(held);
        for w in waiters {
            assert_eq!(w.await.expect("task"), Ok(()));
        }
        assert_eq!(gate.waiting(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_is_refused_after_the_wait_and_gives_its_place_back() {
        let gate = admission(1, 1);
        let _held = gate.admit().await.expect("first");
        let started = tokio::time::Instant::now();
        assert_eq!(gate.admit().await.err(), Some(Refused::TimedOut));
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        assert_eq!(gate.waiting(), 0);
        // Its waiting place is free again.
        let gate2 = gate.clone();
        let next = tokio::spawn(async move { gate2.admit().await.map(drop) });
        tokio::task::yield_now().await;
        assert_eq!(gate.waiting(), 1);
        drop(_held);
        assert_eq!(next.await.expect("task"), Ok(()));
    }
}
