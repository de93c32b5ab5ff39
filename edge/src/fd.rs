//! The open-file limit: every connection is a file descriptor, so a
//! process that keeps the usual soft limit (often 1024) runs out long
//! before its connection bounds. Raised to the hard limit at start.

/// Raise the soft `RLIMIT_NOFILE` to the hard limit; the limit now.
pub fn raise_nofile() -> std::io::Result<u64> {
    rlimit::increase_nofile_limit(u64::MAX)
}

/// The soft open-file limit now (0 when unknown).
pub fn nofile() -> u64 {
    rlimit::getrlimit(rlimit::Resource::NOFILE).map_or(0, |(soft, _)| soft)
}
