//! The lease marker (`quota-leases-until`): until when the leases a
//! control plane sent may be in use, so that its successor re-learns that
//! long before granting anything new.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// A file in the data dir naming (in Unix milliseconds) a time by which every
/// lease this control plane sent has ended. It is written before the leases
/// it covers are sent, a few seconds ahead so that it is rewritten at most
/// every couple of seconds.
pub(in crate::server) struct LeaseMarker {
    path: PathBuf,
    /// What the file says (or the Unix epoch).
    until: SystemTime,
}

/// How far past the latest lease's end the marker is set.
const MARKER_SLACK: Duration = Duration::from_secs(2);
/// A marker further ahead than this is not believed (a clock set back).
const MARKER_HORIZON: Duration = Duration::from_secs(3600);

impl LeaseMarker {
    pub fn open(path: PathBuf) -> Self {
        let until = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .map_or(UNIX_EPOCH, |ms| UNIX_EPOCH + Duration::from_millis(ms));
        Self { path, until }
    }

    /// When the earlier control plane's leases end (or ended: a time
    /// before `now` once they have), on this process's clock; `None` with
    /// no marker.
    pub fn prior_end(&self, now: Instant) -> Option<Instant> {
        if self.until == UNIX_EPOCH {
            return None;
        }
        match self.until.duration_since(SystemTime::now()) {
            Ok(left) => Some(now + left.min(MARKER_HORIZON)),
            // Earlier than this clock can tell: `now` is later than the
            // true time, which only makes waits on it longer.
            Err(past) => Some(now.checked_sub(past.duration()).unwrap_or(now)),
        }
    }

    /// Makes the file say at least `until`.
    pub fn cover(&mut self, until: SystemTime) -> std::io::Result<()> {
        if until <= self.until {
            return Ok(());
        }
        let target = until + MARKER_SLACK;
        let ms = target
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let tmp = self.path.with_extension("tmp");
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            writeln!(f, "{ms}")?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        self.until = target;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_is_written_ahead_and_read_back_as_a_learning_end() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(super::super::QUOTA_MARKER);
        let now = Instant::now();
        // No file: nothing to re-learn.
        let mut m = LeaseMarker::open(path.clone());
        assert_eq!(m.prior_end(now), None);
        m.cover(SystemTime::now() + Duration::from_secs(10))
            .expect("write");
        let written = std::fs::read_to_string(&path).expect("read");
        assert!(written.trim().parse::<u64>().is_ok(), "{written:?}");
        // A later process reads it: about 12 s (10 s + the slack) to re-learn.
        let end = LeaseMarker::open(path.clone())
            .prior_end(now)
            .expect("leases in use");
        let left = end - now;
        assert!(
            left > Duration::from_secs(11) && left <= Duration::from_secs(12),
            "{left:?}"
        );
        // Covered already: no rewrite.
        let before = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .expect("mtime");
        m.cover(SystemTime::now() + Duration::from_secs(5))
            .expect("no-op");
        let after = std::fs::metadata(&path)
            .and_then(|m| m.modified())
            .expect("mtime");
        assert_eq!(before, after);
        // A marker in the past: nothing to re-learn, but the successor
        // still learns when the last lease ended.
        let ended = SystemTime::now() - Duration::from_secs(60);
        let ms = ended
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis();
        std::fs::write(&path, format!("{ms}\n")).expect("write");
        let end = LeaseMarker::open(path)
            .prior_end(now)
            .expect("the last lease's end");
        assert!(end < now, "{end:?} {now:?}");
        let ago = now - end;
        assert!(
            ago > Duration::from_secs(59) && ago <= Duration::from_secs(61),
            "{ago:?}"
        );
    }
}
