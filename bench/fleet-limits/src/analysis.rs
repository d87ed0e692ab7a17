//! What the admission log says: the fullest trailing window, and how much of
//! the limit each window used. Pure functions over times on one clock.

use std::time::Duration;

/// One call a simulated sidecar made.
#[derive(Debug, Clone, Copy)]
pub struct Call {
    /// When it was decided: the `now` passed to `acquire`, on the shared clock.
    pub at: Duration,
    pub admitted: bool,
}

/// The fullest trailing window over the admission times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Worst {
    /// Admissions in `(end − window, end]`.
    pub admitted: u64,
    pub end: Duration,
}

/// The most admissions in any window `(t − window, t]` (the limit's own
/// reading: a call exactly `window` before `t` is out). Only windows ending at
/// an admission need checking: moving the end to the next admission loses
/// nothing. `times` must be sorted.
pub fn worst_window(times: &[Duration], window: Duration) -> Worst {
    let mut worst = Worst {
        admitted: 0,
        end: Duration::ZERO,
    };
    let mut first = 0;
    for (last, &t) in times.iter().enumerate() {
        while times[first] + window <= t {
            first += 1;
        }
        let n = (last - first + 1) as u64;
        if n > worst.admitted {
            worst = Worst {
                admitted: n,
                end: t,
            };
        }
    }
    worst
}

/// One fixed window of the run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowUse {
    /// Calls made in it (admitted or not).
    pub demand: u64,
    pub admitted: u64,
    /// `admitted ÷ min(max, demand)`; 1 when nothing was asked.
    pub utilisation: f64,
}

/// The run cut into `count` consecutive windows from `start`:
/// `[start + k·window, start + (k+1)·window)`. Calls outside them are ignored.
pub fn windows(
    calls: &[Call],
    start: Duration,
    window: Duration,
    count: usize,
    max: u64,
) -> Vec<WindowUse> {
    let mut demand = vec![0u64; count];
    let mut admitted = vec![0u64; count];
    for c in calls {
        let Some(since) = c.at.checked_sub(start) else {
            continue;
        };
        let k = (since.as_nanos() / window.as_nanos().max(1)) as usize;
        if k < count {
            demand[k] += 1;
            admitted[k] += u64::from(c.admitted);
        }
    }
    demand
        .into_iter()
        .zip(admitted)
        .map(|(demand, admitted)| {
            let fillable = max.min(demand);
            WindowUse {
                demand,
                admitted,
                utilisation: if fillable == 0 {
                    1.0
                } else {
                    admitted as f64 / fillable as f64
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: &[u64]) -> Vec<Duration> {
        v.iter().map(|&m| Duration::from_millis(m)).collect()
    }

    #[test]
    fn a_call_exactly_one_window_back_is_out_of_the_window() {
        let w = Duration::from_millis(100);
        assert_eq!(worst_window(&ms(&[0, 100, 200]), w).admitted, 1);
        assert_eq!(worst_window(&ms(&[0, 99, 100]), w).admitted, 2);
        let worst = worst_window(&ms(&[0, 10, 20, 150, 160, 170, 180]), w);
        assert_eq!(worst.admitted, 4);
        assert_eq!(worst.end, Duration::from_millis(180));
        assert_eq!(worst_window(&[], w).admitted, 0);
    }

    #[test]
    fn utilisation_is_against_what_could_have_been_admitted() {
        let call = |m, admitted| Call {
            at: Duration::from_millis(m),
            admitted,
        };
        let calls = [
            call(5, true),
            call(10, true),
            call(12, false),
            call(15, true),
            call(25, false),
            call(99, true),
        ];
        let w = windows(
            &calls,
            Duration::from_millis(10),
            Duration::from_millis(10),
            3,
            2,
        );
        // [10, 20): 3 asked, 2 admitted, max 2; [20, 30): 1 asked, none admitted; [30, 40): idle.
        assert_eq!((w[0].demand, w[0].admitted, w[0].utilisation), (3, 2, 1.0));
        assert_eq!((w[1].demand, w[1].admitted, w[1].utilisation), (1, 0, 0.0));
        assert_eq!((w[2].demand, w[2].utilisation), (0, 1.0));
    }
}
