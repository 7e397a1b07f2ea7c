//! What a process costs, read from Linux's `/proc`: cpu time and peak
//! resident memory, the whole machine's busy cpu time, and the open-file
//! limit a large run needs.
//!
//! Reading `/proc` instead of calling `getrusage` keeps orch free of unsafe
//! code, and works as well for the manager run as a child process (by pid) as
//! for this process (`self`).

use std::time::Duration;

/// The kernel's clock tick for `/proc/<pid>/stat` times. `USER_HZ` is 100 on
/// every Linux architecture orch builds for; it is part of the kernel ABI.
const USER_HZ: u64 = 100;

/// Cpu and memory use of one process, as far as the kernel has counted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProcStats {
    /// User plus system cpu time.
    pub cpu: Duration,
    /// The peak resident set size (`VmHWM`), in bytes.
    pub peak_rss_bytes: u64,
}

/// Which process to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pid {
    /// This process.
    This,
    /// Another process.
    Other(u32),
}

impl Pid {
    fn dir(self) -> String {
        match self {
            Pid::This => "/proc/self".into(),
            Pid::Other(pid) => format!("/proc/{pid}"),
        }
    }
}

/// Reads a process's cpu time and peak memory; `None` if `/proc` does not
/// have them (another OS, or the process is gone).
pub fn proc_stats(pid: Pid) -> Option<ProcStats> {
    let dir = pid.dir();
    let stat = std::fs::read_to_string(format!("{dir}/stat")).ok()?;
    let status = std::fs::read_to_string(format!("{dir}/status")).ok()?;
    Some(ProcStats {
        cpu: cpu_time(&stat)?,
        peak_rss_bytes: peak_rss(&status)?,
    })
}

/// utime + stime from the text of `/proc/<pid>/stat`. The command name (field
/// 2) may hold spaces and parentheses, so fields are counted after its last
/// closing parenthesis: utime and stime are fields 14 and 15.
fn cpu_time(stat: &str) -> Option<Duration> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    let ticks = utime + stime;
    Some(Duration::from_millis(ticks * 1000 / USER_HZ))
}

/// `VmHWM` from the text of `/proc/<pid>/status`, in bytes.
fn peak_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The cpu time all cores of the machine have spent busy since boot (every
/// state of `/proc/stat`'s `cpu` line but idle and iowait); `None` without
/// `/proc`. The difference of two readings is how many core-seconds went to
/// work between them, whoever did it.
pub fn machine_busy() -> Option<Duration> {
    busy_time(&std::fs::read_to_string("/proc/stat").ok()?)
}

/// Busy time from the text of `/proc/stat`: the first line's fields after
/// `cpu` are user, nice, system, idle, iowait, irq, softirq, steal (and
/// guest time, already counted in user and nice).
fn busy_time(stat: &str) -> Option<Duration> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .take(8)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    let [user, nice, system, _idle, _iowait, irq, softirq, steal] = fields[..] else {
        return None;
    };
    let ticks = user + nice + system + irq + softirq + steal;
    Some(Duration::from_millis(ticks * 1000 / USER_HZ))
}

/// Raises this process's open-file limit to at least `wanted` (the soft
/// limit, and the hard limit too when allowed, as for root); returns the soft
/// limit now in force. Children started afterwards inherit it.
///
/// # Errors
/// If the limit cannot be read or set.
pub fn raise_open_files(wanted: u64) -> std::io::Result<u64> {
    use rlimit::Resource;
    let (soft, hard) = Resource::NOFILE.get()?;
    if soft >= wanted {
        return Ok(soft);
    }
    if hard < wanted && Resource::NOFILE.set(wanted, wanted).is_ok() {
        return Ok(wanted);
    }
    let soft = wanted.min(hard);
    Resource::NOFILE.set(soft, hard)?;
    Ok(soft)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_counts_fields_after_the_command_name() {
        // Fields 14 and 15 are 250 and 50 ticks; the name has a space and a ')'.
        let stat = "4242 (orch bench)) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 3 0";
        assert_eq!(cpu_time(stat), Some(Duration::from_secs(3)));
    }

    #[test]
    fn peak_rss_is_read_in_bytes() {
        let status = "Name:\torchctl\nVmPeak:\t  9000 kB\nVmHWM:\t    2048 kB\nVmRSS:\t 1024 kB\n";
        assert_eq!(peak_rss(status), Some(2 * 1024 * 1024));
    }

    #[test]
    fn busy_time_leaves_out_idle_and_iowait() {
        let stat = "cpu  100 2 30 5000 40 1 2 3 0 0\ncpu0 50 1 15 2500 20 0 1 1 0 0\n";
        // user + nice + system + irq + softirq + steal = 138 ticks.
        assert_eq!(busy_time(stat), Some(Duration::from_millis(1380)));
        assert_eq!(busy_time("cpu0 1 2 3\n"), None);
        assert!(machine_busy().is_some());
    }

    #[test]
    fn this_process_has_stats() {
        let stats = proc_stats(Pid::This).expect("/proc/self");
        assert!(stats.peak_rss_bytes > 0);
    }
}
