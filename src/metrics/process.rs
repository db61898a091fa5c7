//! The process's own resource use, under the names every Prometheus client
//! library uses (`process_*`, as client_golang's process collector), read
//! from `/proc/self` at each scrape. On systems without `/proc` the values
//! stay at zero.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// What `/proc/self` says.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
pub struct Sample {
    /// CPU time used, user and system, in seconds.
    pub cpu_seconds: f64,
    /// Resident set size, in bytes.
    pub resident_bytes: i64,
    /// Virtual memory size, in bytes.
    pub virtual_bytes: i64,
    /// Open file descriptors.
    pub open_fds: i64,
    /// The soft limit on open file descriptors.
    pub max_fds: i64,
    /// Threads.
    pub threads: i64,
}

/// `VmRSS`, `VmSize` and `Threads` of a `/proc/PID/status` text.
fn from_status(text: &str, s: &mut Sample) {
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(key), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Ok(n) = value.parse::<i64>() else {
            continue;
        };
        match key {
            "VmRSS:" => s.resident_bytes = n.saturating_mul(1024),
            "VmSize:" => s.virtual_bytes = n.saturating_mul(1024),
            "Threads:" => s.threads = n,
            _ => {}
        }
    }
}

/// The soft limit of the `Max open files` line of `/proc/PID/limits`.
fn max_open_files(limits: &str) -> Option<i64> {
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .trim_start_matches("Max open files")
        .split_whitespace()
        .next()?;
    soft.parse().ok()
}

/// CPU seconds from `/proc/PID/stat`: `utime` and `stime` (fields 14 and
/// 15) are in clock ticks, 100 a second on every Linux this runs on (the
/// kernel's USER_HZ).
fn cpu_from_stat(stat: &str) -> Option<f64> {
    // The command name (field 2) is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, index 11.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / 100.0)
}

/// Read this process's figures.
pub fn sample() -> Sample {
    let mut s = Sample::default();
    if let Ok(text) = std::fs::read_to_string("/proc/self/status") {
        from_status(&text, &mut s);
    }
    if let Some(cpu) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|t| cpu_from_stat(&t))
    {
        s.cpu_seconds = cpu;
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        s.open_fds = i64::try_from(dir.count()).unwrap_or(i64::MAX);
    }
    if let Some(max) = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| max_open_files(&t))
    {
        s.max_fds = max;
    }
    s
}

/// The `process_*` metrics, registered once and set at each scrape.
pub struct ProcessMetrics {
    cpu_seconds: Counter<f64, AtomicU64>,
    resident_bytes: Gauge,
    virtual_bytes: Gauge,
    open_fds: Gauge,
    max_fds: Gauge,
    threads: Gauge,
    start_time_seconds: Gauge<f64, AtomicU64>,
}

impl ProcessMetrics {
    /// Register them in `r`.
    pub fn register(r: &mut Registry) -> Self {
        let m = Self {
            cpu_seconds: Counter::default(),
            resident_bytes: Gauge::default(),
            virtual_bytes: Gauge::default(),
            open_fds: Gauge::default(),
            max_fds: Gauge::default(),
            threads: Gauge::default(),
            start_time_seconds: Gauge::default(),
        };
        r.register(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds",
            m.cpu_seconds.clone(),
        );
        r.register(
            "process_resident_memory_bytes",
            "Resident memory size in bytes",
            m.resident_bytes.clone(),
        );
        r.register(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes",
            m.virtual_bytes.clone(),
        );
        r.register(
            "process_open_fds",
            "Number of open file descriptors",
            m.open_fds.clone(),
        );
        r.register(
            "process_max_fds",
            "Maximum number of open file descriptors",
            m.max_fds.clone(),
        );
        r.register(
            "process_threads",
            "Number of OS threads in the process",
            m.threads.clone(),
        );
        r.register(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            m.start_time_seconds.clone(),
        );
        m
    }

    /// Set them from a fresh [`sample`].
    pub fn refresh(&self) {
        let s = sample();
        // A counter only goes up: add what was used since the last scrape.
        let seen = self.cpu_seconds.get();
        if s.cpu_seconds > seen {
            self.cpu_seconds.inc_by(s.cpu_seconds - seen);
        }
        self.resident_bytes.set(s.resident_bytes);
        self.virtual_bytes.set(s.virtual_bytes);
        self.open_fds.set(s.open_fds);
        self.max_fds.set(s.max_fds);
        self.threads.set(s.threads);
        self.start_time_seconds
            .set(crate::domain::time::process_start_micros() as f64 / 1e6);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_texts() {
        let mut s = Sample::default();
        from_status(
            "Name:\topscore\nVmSize:\t  123456 kB\nVmRSS:\t   2048 kB\nThreads:\t7\n",
            &mut s,
        );
        assert_eq!(
            (s.virtual_bytes, s.resident_bytes, s.threads),
            (123_456 * 1024, 2048 * 1024, 7)
        );
        let limits = "Limit                     Soft Limit           Hard Limit           Units\n\
                      Max open files            1024                 524288               files\n";
        assert_eq!(max_open_files(limits), Some(1024));
        let stat =
            "4242 (tokio (worker) 1) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 9 0";
        assert_eq!(cpu_from_stat(stat), Some(3.0));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process() {
        let s = sample();
        assert!(
            s.resident_bytes > 0 && s.virtual_bytes >= s.resident_bytes,
            "{s:?}"
        );
        assert!(s.open_fds > 0 && s.max_fds >= s.open_fds, "{s:?}");
        assert!(s.threads >= 1, "{s:?}");
    }
}
