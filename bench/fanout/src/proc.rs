//! What a process costs, from `/proc/PID/status` and `/proc/PID/stat`
//! (Linux).

/// A process's resident set now and at its peak, in KiB.
#[derive(Debug, Clone, Copy)]
pub struct Rss {
    pub now_kib: u64,
    pub peak_kib: u64,
}

/// Reads `VmRSS` and `VmHWM` of `pid`; `None` if the process is gone or the
/// file is not in the expected shape.
pub fn rss(pid: u32) -> Option<Rss> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    Some(Rss {
        now_kib: field("VmRSS:")?,
        peak_kib: field("VmHWM:")?,
    })
}

/// Clock ticks per second of `/proc/PID/stat` times. It is 100 on every
/// Linux build this runs on (USER_HZ); reading sysconf would need libc.
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU time `pid` has used so far (user + system), in seconds, at the
/// kernel's 10 ms tick resolution.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after its closing
    // parenthesis are space-separated, utime and stime being the 12th and 13th.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SECOND)
}
