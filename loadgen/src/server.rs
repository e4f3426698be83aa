//! The server under test, seen from `/proc`: CPU time and resident memory of a process.

/// Clock ticks per second in `/proc/<pid>/stat` (USER_HZ, 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// (user, kernel) clock ticks a process has used.
fn cpu_ticks(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at ") ".
    let rest = &stat[stat.rfind(") ")? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 of `rest`.
    Some((fields.get(11)?.parse().ok()?, fields.get(12)?.parse().ok()?))
}

/// Resident memory of a process.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// CPU time a process used since [`Cpu::start`].
pub struct Cpu {
    pid: Option<u32>,
    at_start: Option<(u64, u64)>,
}

impl Cpu {
    pub fn start(pid: Option<u32>) -> Self {
        Self {
            pid,
            at_start: pid.and_then(cpu_ticks),
        }
    }

    /// (user, kernel) CPU seconds since the start: the kernel share is mostly socket
    /// syscalls, which every server under test pays alike.
    pub fn split(&self) -> Option<(f64, f64)> {
        let (user, kernel) = cpu_ticks(self.pid?)?;
        let (user0, kernel0) = self.at_start?;
        let secs = |now: u64, then: u64| now.saturating_sub(then) as f64 / TICKS_PER_SECOND;
        Some((secs(user, user0), secs(kernel, kernel0)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        assert!(cpu_ticks(me).is_some());
        assert!(rss_bytes(me).unwrap() > 0);
    }
}
