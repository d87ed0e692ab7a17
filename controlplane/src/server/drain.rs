//! The shutdown latch and the count of open long-lived streams (policy
//! streams, status watches), so a stopping control plane can end every
//! stream itself and know when the last one is gone.
//!
//! Long-lived streams never finish on their own, so a server waiting for
//! in-flight requests would wait forever; instead each stream watches the
//! latch and ends cleanly (status OK) when it is set.

use std::time::Duration;

use tokio::sync::watch;

/// See the module doc.
#[derive(Debug)]
pub struct Drain {
    draining: watch::Sender<bool>,
    open: watch::Sender<usize>,
}

/// A stream counted as open until dropped.
#[derive(Debug)]
pub struct Tracked {
    open: watch::Sender<usize>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.open.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Drain {
    pub fn new() -> Self {
        Self {
            draining: watch::Sender::new(false),
            open: watch::Sender::new(0),
        }
    }

    /// Counts a new stream as open; `None` once draining (refuse it).
    pub fn track(&self) -> Option<Tracked> {
        if self.is_draining() {
            return None;
        }
        self.open.send_modify(|n| *n += 1);
        Some(Tracked {
            open: self.open.clone(),
        })
    }

    /// A handle that resolves [`Latch::set`] once draining starts.
    pub fn latch(&self) -> Latch {
        Latch(self.draining.subscribe())
    }

    pub fn is_draining(&self) -> bool {
        *self.draining.borrow()
    }

    /// Starts draining: every stream holding a [`Latch`] ends.
    pub fn start(&self) {
        self.draining.send_replace(true);
    }

    /// Streams still open.
    pub fn open(&self) -> usize {
        *self.open.borrow()
    }

    /// Waits until no stream is open, up to `limit`; whether that happened.
    pub async fn idle(&self, limit: Duration) -> bool {
        let mut open = self.open.subscribe();
        tokio::time::timeout(limit, open.wait_for(|n| *n == 0))
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

impl Default for Drain {
    fn default() -> Self {
        Self::new()
    }
}

/// One stream's view of the shutdown latch.
#[derive(Debug, Clone)]
pub struct Latch(watch::Receiver<bool>);

impl Latch {
    /// Resolves once draining has started (at once if it already has).
    pub async fn set(&mut self) {
        // The sender lives in the control plane, which outlives its streams;
        // should it go anyway, treat that as the end too.
        let _ = self.0.wait_for(|d| *d).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn streams_end_on_the_latch_and_idle_waits_for_the_last() {
        let drain = Drain::new();
        assert!(drain.idle(Duration::ZERO).await);
        let a = drain.track().expect("open");
        let b = drain.track().expect("open");
        let mut latch = drain.latch();
        let ended = tokio::spawn(async move { latch.set().await });
        tokio::task::yield_now().await;
        assert!(!ended.is_finished());

        drain.start();
        ended.await.expect("the latch resolves");
        assert!(drain.track().is_none(), "no new stream while draining");
        assert_eq!(drain.open(), 2);
        drop(a);
        assert!(!drain.idle(Duration::from_secs(1)).await);
        drop(b);
        assert!(drain.idle(Duration::ZERO).await);
    }
}
