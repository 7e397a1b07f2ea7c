//! Machine metrics and capacity, measured with sysinfo.
//!
//! This module only measures; it never talks to the manager or the engine.

use std::path::Path;

use orch::v1::{NodeMetrics, Resources};
use sysinfo::{CpuRefreshKind, Disks, MemoryRefreshKind, RefreshKind, System};

/// Measures this machine. Keeps sysinfo's state between calls, since cpu use
/// is the difference between two refreshes.
pub struct Meter {
    system: System,
    disks: Disks,
}

impl Default for Meter {
    fn default() -> Self {
        Self::new()
    }
}

impl Meter {
    /// A meter with a first cpu refresh done.
    pub fn new() -> Self {
        let system = System::new_with_specifics(
            RefreshKind::nothing()
                .with_cpu(CpuRefreshKind::nothing().with_cpu_usage())
                .with_memory(MemoryRefreshKind::nothing().with_ram()),
        );
        Self {
            system,
            disks: Disks::new_with_refreshed_list(),
        }
    }

    /// The machine's whole capacity: every core, all memory, the size of the
    /// disk Docker keeps its data on.
    pub fn capacity(&self) -> Resources {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1);
        Resources {
            milli_cpus: i64::try_from(cores * 1000).unwrap_or(i64::MAX),
            memory_bytes: i64::try_from(self.system.total_memory()).unwrap_or(i64::MAX),
            disk_bytes: self.data_disk().map(|(total, _)| total).unwrap_or(i64::MAX),
        }
    }

    /// Fresh metrics.
    pub fn sample(&mut self) -> NodeMetrics {
        self.system.refresh_cpu_usage();
        self.system.refresh_memory();
        self.disks.refresh(true);
        let load = System::load_average();
        NodeMetrics {
            cpu_percent: f64::from(self.system.global_cpu_usage()),
            memory_used_bytes: i64::try_from(self.system.used_memory()).unwrap_or(i64::MAX),
            memory_total_bytes: i64::try_from(self.system.total_memory()).unwrap_or(i64::MAX),
            disk_free_bytes: self.data_disk().map(|(_, free)| free).unwrap_or(0),
            load_1m: load.one,
            load_5m: load.five,
            load_15m: load.fifteen,
        }
    }

    /// (total, free) bytes of the disk holding Docker's data, or the root disk:
    /// the mount point that is the longest prefix of /var/lib/docker.
    fn data_disk(&self) -> Option<(i64, i64)> {
        let target = Path::new("/var/lib/docker");
        self.disks
            .list()
            .iter()
            .filter(|d| target.starts_with(d.mount_point()))
            .max_by_key(|d| d.mount_point().as_os_str().len())
            .map(|d| {
                (
                    i64::try_from(d.total_space()).unwrap_or(i64::MAX),
                    i64::try_from(d.available_space()).unwrap_or(i64::MAX),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_and_metrics_are_plausible() {
        let mut meter = Meter::new();
        let cap = meter.capacity();
        assert!(cap.milli_cpus >= 1000);
        assert!(cap.memory_bytes > 0);
        let m = meter.sample();
        assert!((0.0..=100.0).contains(&m.cpu_percent), "{}", m.cpu_percent);
        assert!(m.memory_used_bytes > 0 && m.memory_used_bytes <= m.memory_total_bytes);
        assert_eq!(m.memory_total_bytes, cap.memory_bytes);
        assert!(m.load_1m >= 0.0);
    }
}
