//! The process's own resources, from `/proc/self` (Linux).

/// Resident memory and open descriptors of this process.
#[derive(Debug, Clone, Copy, Default)]
pub struct Process {
    /// Resident set size in bytes.
    pub rss_bytes: u64,
    /// Open file descriptors.
    pub fds: u64,
    /// Of those, sockets.
    pub sockets: u64,
}

/// Read them now; what cannot be read stays 0.
pub fn sample() -> Process {
    let mut out = Process::default();
    if let Ok(status) = std::fs::read_to_string("/proc/self/status") {
        out.rss_bytes = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024);
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        for entry in dir.flatten() {
            out.fds += 1;
            if std::fs::read_link(entry.path())
                .is_ok_and(|target| target.to_string_lossy().starts_with("socket:"))
            {
                out.sockets += 1;
            }
        }
    }
    out
}
