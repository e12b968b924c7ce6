//! What /proc says about a process: CPU time (user + system, all threads) and memory high-water mark.

use std::time::Duration;

use anyhow::Context as _;

fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// utime + stime of `pid` ("self" for this process).
pub fn cpu_time(pid: &str) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("read /proc/{pid}/stat"))?;
    // The command name is in parentheses and may hold spaces: count fields after the last ')'.
    let rest = stat
        .rsplit_once(')')
        .map(|(_, r)| r)
        .context("malformed stat")?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is fields[0]; utime is field 14, stime field 15.
    let ticks: u64 = fields
        .get(11)
        .zip(fields.get(12))
        .and_then(|(u, s)| Some(u.parse::<u64>().ok()? + s.parse::<u64>().ok()?))
        .context("no utime/stime in stat")?;
    Ok(Duration::from_secs_f64(
        ticks as f64 / clock_ticks_per_second() as f64,
    ))
}

/// A `Vm*` line of /proc/PID/status, in KiB.
pub fn status_kib(pid: &str, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("read /proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .with_context(|| format!("no {field} in /proc/{pid}/status"))
}

/// Number of threads of `pid`.
pub fn threads(pid: &str) -> u64 {
    status_kib(pid, "Threads").unwrap_or(0)
}

/// CPU time of a process over a span of wall time.
pub struct CpuMeter {
    pid: String,
    cpu: Duration,
    wall: std::time::Instant,
}

impl CpuMeter {
    pub fn start(pid: &str) -> anyhow::Result<Self> {
        Ok(Self {
            pid: pid.to_owned(),
            cpu: cpu_time(pid)?,
            wall: std::time::Instant::now(),
        })
    }

    /// (CPU seconds used, CPU seconds per wall second).
    pub fn stop(&self) -> anyhow::Result<(f64, f64)> {
        let used = cpu_time(&self.pid)?.saturating_sub(self.cpu).as_secs_f64();
        Ok((used, used / self.wall.elapsed().as_secs_f64()))
    }
}
