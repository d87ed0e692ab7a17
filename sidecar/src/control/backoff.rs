//! Reconnect delays: exponential backoff with full jitter.
//!
//! Attempt `n` (from 0) waits a uniformly random time in
//! `[0, min(cap, base · 2^n)]` ("full jitter"), so a fleet that lost its
//! control plane at the same instant does not reconnect in lockstep when it
//! comes back. The attempt count is reset only when the caller says a stream
//! delivered a response ([`Backoff::reset`]), not when a connection opens: a
//! control plane that accepts and then fails every stream must still be
//! backed off from.

use std::time::Duration;

/// The delays' shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// The ceiling of the first delay.
    pub base: Duration,
    /// The largest ceiling.
    pub cap: Duration,
}

impl Default for BackoffConfig {
    /// About 1 s doubling to 30 s (ARCHITECTURE.md §4).
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(30),
        }
    }
}

/// Where the jitter comes from: a number in `[0, 1]` per call.
pub trait Jitter: Send {
    /// A uniform sample in `[0, 1]`.
    fn unit(&mut self) -> f64;
}

/// Jitter from `fastrand` (a per-backoff generator, seeded from the OS).
#[derive(Debug)]
pub struct Random(fastrand::Rng);

impl Default for Random {
    fn default() -> Self {
        Self(fastrand::Rng::new())
    }
}

impl Jitter for Random {
    fn unit(&mut self) -> f64 {
        self.0.f64()
    }
}

/// The backoff state of one reconnecting client.
#[derive(Debug)]
pub struct Backoff<J = Random> {
    config: BackoffConfig,
    attempt: u32,
    jitter: J,
}

impl Backoff<Random> {
    /// A backoff with OS-seeded jitter.
    pub fn new(config: BackoffConfig) -> Self {
        Self::with_jitter(config, Random::default())
    }
}

impl<J: Jitter> Backoff<J> {
    /// A backoff with the given jitter source (tests inject a fixed one).
    pub fn with_jitter(config: BackoffConfig, jitter: J) -> Self {
        Self {
            config,
            attempt: 0,
            jitter,
        }
    }

    /// How many delays were taken since the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The upper bound of the next delay: `min(cap, base · 2^attempt)`.
    pub fn ceiling(&self) -> Duration {
        // 2^31 s overflows nothing here: checked_mul saturates to the cap.
        let factor = 1u32.checked_shl(self.attempt).unwrap_or(u32::MAX);
        self.config
            .base
            .checked_mul(factor)
            .map_or(self.config.cap, |d| d.min(self.config.cap))
    }

    /// The next delay, in `[0, ceiling()]`; advances the attempt count.
    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        let unit = self.jitter.unit().clamp(0.0, 1.0);
        self.attempt = self.attempt.saturating_add(1);
        ceiling.mul_f64(unit)
    }

    /// Jumps to the cap: the next delays have the largest ceiling. Used when
    /// the control plane refused us for a reason a quick retry cannot fix.
    pub fn saturate(&mut self) {
        while self.ceiling() < self.config.cap && self.attempt < 32 {
            self.attempt += 1;
        }
    }

    /// Starts over from `base`: call only after a stream delivered a response.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Sleeps for [`Backoff::next_delay`] and returns how long that was.
    pub async fn wait(&mut self) -> Duration {
        let d = self.next_delay();
        tokio::time::sleep(d).await;
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Always the same sample.
    struct Fixed(f64);
    impl Jitter for Fixed {
        fn unit(&mut self) -> f64 {
            self.0
        }
    }

    fn config() -> BackoffConfig {
        BackoffConfig::default()
    }

    #[test]
    fn ceilings_double_from_base_to_cap() {
        let mut b = Backoff::with_jitter(config(), Fixed(1.0));
        let got: Vec<u64> = (0..9).map(|_| b.next_delay().as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 30, 30, 30, 30]);
        // Far past 2^32: no overflow, still the cap.
        for _ in 0..100 {
            assert_eq!(b.next_delay(), Duration::from_secs(30));
        }
    }

    #[test]
    fn full_jitter_reaches_zero() {
        let mut b = Backoff::with_jitter(config(), Fixed(0.0));
        for _ in 0..10 {
            assert_eq!(b.next_delay(), Duration::ZERO);
        }
        let mut b = Backoff::with_jitter(config(), Fixed(0.5));
        assert_eq!(b.next_delay(), Duration::from_millis(500));
        assert_eq!(b.next_delay(), Duration::from_secs(1));
        // Out-of-range samples are clamped rather than trusted.
        let mut b = Backoff::with_jitter(config(), Fixed(7.0));
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }

    #[test]
    fn random_delays_stay_within_each_attempts_bounds() {
        for seed in 0..50 {
            let mut b = Backoff::with_jitter(config(), Random(fastrand::Rng::with_seed(seed)));
            for n in 0..12u32 {
                let ceiling = Duration::from_secs(1u64 << n.min(5)).min(Duration::from_secs(30));
                assert_eq!(b.ceiling(), ceiling, "attempt {n}");
                let d = b.next_delay();
                assert!(d <= ceiling, "attempt {n}: {d:?} > {ceiling:?}");
            }
        }
    }

    #[test]
    fn reset_starts_over_and_only_reset_does() {
        let mut b = Backoff::with_jitter(config(), Fixed(1.0));
        for _ in 0..4 {
            b.next_delay();
        }
        assert_eq!(b.ceiling(), Duration::from_secs(16));
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert_eq!(b.next_delay(), Duration::from_secs(1));
        assert_eq!(b.next_delay(), Duration::from_secs(2));
    }

    #[test]
    fn saturate_jumps_to_the_cap() {
        let mut b = Backoff::with_jitter(config(), Fixed(1.0));
        b.saturate();
        assert_eq!(b.next_delay(), Duration::from_secs(30));
        b.reset();
        assert_eq!(b.next_delay(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn wait_sleeps_exactly_the_delay_in_paused_time() {
        let mut b = Backoff::with_jitter(config(), Fixed(0.25));
        let start = tokio::time::Instant::now();
        assert_eq!(b.wait().await, Duration::from_millis(250));
        assert_eq!(b.wait().await, Duration::from_millis(500));
        assert_eq!(start.elapsed(), Duration::from_millis(750));
    }
}
