//! The machine the figures come from, and how quiet it was while they were taken.
//!
//! Two cores shared with other people's builds: a figure taken while a compiler runs is
//! distorted. Before each section the bench waits (a bounded time) for the machine to be
//! quiet, and a sampler thread charges every process's CPU time either to the benchmark
//! (this process, its children, PostgreSQL, RabbitMQ) or to "foreign" work, so every figure
//! comes with the foreign CPU share measured while it was taken.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// RabbitMQ's processes (the Erlang VM and its helpers).
const RABBITMQ_COMMANDS: [&str; 4] = ["beam.smp", "epmd", "erl_child_setup", "inet_gethost"];

/// CPU ticks per second of `/proc/<pid>/stat` (USER_HZ; 100 on every Linux this runs on).
const TICKS_PER_SECOND: f64 = 100.0;

pub fn cpu_count() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// `utime + stime`, parent pid and command of a process, from `/proc/<pid>/stat`.
fn process_stat(pid: u32) -> Option<(u64, u32, String)> {
    let raw = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = raw.find('(')?;
    let close = raw.rfind(')')?;
    let command = raw[open + 1..close].to_owned();
    let fields: Vec<&str> = raw[close + 2..].split_whitespace().collect();
    // After the command: state(0) ppid(1) … utime(11) stime(12).
    let ppid = fields.get(1)?.parse().ok()?;
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime, ppid, command))
}

fn all_pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// Who used the CPU: this benchmark (itself and its children, e.g. pgbench or a function
/// binary), PostgreSQL, RabbitMQ, or anything else ("foreign").
#[derive(Clone, Copy, Debug, Default)]
pub struct CpuSeconds {
    pub bench: f64,
    pub postgres: f64,
    pub rabbitmq: f64,
    pub foreign: f64,
    pub wall: f64,
}

impl CpuSeconds {
    /// Foreign CPU as a percentage of the whole machine (all cores).
    pub fn foreign_percent(&self) -> f64 {
        100.0 * self.foreign / self.wall.max(0.001) / cpu_count() as f64
    }

    /// Milliseconds of CPU per operation: (bench, PostgreSQL, RabbitMQ).
    pub fn per_operation_ms(&self, operations: u64) -> (f64, f64, f64) {
        let n = operations.max(1) as f64;
        (
            1000.0 * self.bench / n,
            1000.0 * self.postgres / n,
            1000.0 * self.rabbitmq / n,
        )
    }
}

const BENCH: usize = 0;
const POSTGRES: usize = 1;
const RABBITMQ: usize = 2;
const FOREIGN: usize = 3;

/// Charges every process's CPU time to one of the four kinds above, continuously.
#[derive(Clone)]
pub struct ForeignCpu {
    ticks: Arc<[AtomicU64; 4]>,
}

/// A point in time to measure CPU use from.
#[derive(Clone, Copy)]
pub struct Mark {
    ticks: [u64; 4],
    at: Instant,
}

impl Mark {
    pub fn elapsed(&self) -> f64 {
        self.at.elapsed().as_secs_f64()
    }
}

impl ForeignCpu {
    pub fn start() -> Self {
        let ticks: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
        let counters = ticks.clone();
        let me = std::process::id();
        std::thread::spawn(move || {
            let mut seen: HashMap<u32, u64> = HashMap::new();
            let mut first = true;
            loop {
                let mut now_seen = HashMap::new();
                let mut parents: HashMap<u32, u32> = HashMap::new();
                let mut stats = Vec::new();
                for pid in all_pids() {
                    if let Some((ticks, ppid, command)) = process_stat(pid) {
                        parents.insert(pid, ppid);
                        stats.push((pid, ticks, ppid, command));
                    }
                }
                let descends_from_me = |mut pid: u32| {
                    for _ in 0..8 {
                        if pid == me {
                            return true;
                        }
                        match parents.get(&pid) {
                            Some(&parent) if parent > 1 => pid = parent,
                            _ => return false,
                        }
                    }
                    false
                };
                let mut added = [0u64; 4];
                for (pid, ticks, ppid, command) in stats {
                    now_seen.insert(pid, ticks);
                    if pid == 2 || ppid == 2 {
                        // Kernel threads: nobody's in particular.
                        continue;
                    }
                    let kind = if descends_from_me(pid) {
                        BENCH
                    } else if command == "postgres" {
                        POSTGRES
                    } else if RABBITMQ_COMMANDS.contains(&command.as_str()) {
                        RABBITMQ
                    } else {
                        FOREIGN
                    };
                    // A process first seen now started since the last sample (or this is
                    // the first sample, which only sets the baseline).
                    let before = seen
                        .get(&pid)
                        .copied()
                        .unwrap_or(if first { ticks } else { 0 });
                    added[kind] += ticks.saturating_sub(before);
                }
                for (counter, value) in counters.iter().zip(added) {
                    counter.fetch_add(value, Ordering::Relaxed);
                }
                seen = now_seen;
                first = false;
                std::thread::sleep(Duration::from_millis(250));
            }
        });
        Self { ticks }
    }

    pub fn mark(&self) -> Mark {
        Mark {
            ticks: std::array::from_fn(|i| self.ticks[i].load(Ordering::Relaxed)),
            at: Instant::now(),
        }
    }

    /// CPU used since `mark`, by kind. Sampled every 250 ms: call it a moment after the
    /// work ends for the last slice to be counted.
    pub fn used_since(&self, mark: Mark) -> CpuSeconds {
        let seconds = |i: usize| {
            (self.ticks[i].load(Ordering::Relaxed) - mark.ticks[i]) as f64 / TICKS_PER_SECOND
        };
        CpuSeconds {
            bench: seconds(BENCH),
            postgres: seconds(POSTGRES),
            rabbitmq: seconds(RABBITMQ),
            foreign: seconds(FOREIGN),
            wall: mark.at.elapsed().as_secs_f64(),
        }
    }

    /// Foreign CPU since `mark`, as a percentage of the whole machine (all cores).
    pub fn since(&self, mark: Mark) -> f64 {
        self.used_since(mark).foreign_percent()
    }
}

/// CPU used since `mark`, once the sampler has seen the last of it.
pub async fn settle(monitor: &ForeignCpu, mark: Mark) -> CpuSeconds {
    let wall = mark.elapsed();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut cpu = monitor.used_since(mark);
    cpu.wall = wall;
    cpu
}

/// Points measured while foreign work took more than this share of the machine are
/// measured again (at most `ATTEMPTS` times in all; the quietest attempt is kept).
pub const REMEASURE_ABOVE_PERCENT: f64 = 10.0;
pub const ATTEMPTS: usize = 3;

/// Whether a point measured with `foreign` percent of foreign CPU should be measured again.
pub fn remeasure(label: &str, foreign: f64, attempt: usize) -> bool {
    if foreign <= REMEASURE_ABOVE_PERCENT {
        return false;
    }
    if attempt < ATTEMPTS {
        eprintln!(
            "[{label}] other work took {foreign:.0}% of the machine during the measurement: measuring again"
        );
        true
    } else {
        eprintln!(
            "[{label}] WARNING: other work took {foreign:.0}% of the machine in every attempt; keeping the quietest"
        );
        false
    }
}

/// Busy share of all CPUs over `window`, from `/proc/stat`.
fn machine_busy(window: Duration) -> f64 {
    fn read() -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let line = stat.lines().next()?;
        let values: Vec<u64> = line
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        let idle = values.get(3)? + values.get(4).copied().unwrap_or(0);
        Some((values.iter().sum(), idle))
    }
    let before = read();
    std::thread::sleep(window);
    match (before, read()) {
        (Some((total0, idle0)), Some((total1, idle1))) if total1 > total0 => {
            100.0 * (1.0 - (idle1 - idle0) as f64 / (total1 - total0) as f64)
        }
        _ => 0.0,
    }
}

pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// Waits until the machine has been quiet (busy below `threshold` percent over a 3 s window,
/// with the benchmark itself idle) or `max_wait` passed. Returns the last busy share seen.
pub async fn wait_until_quiet(label: &str, threshold: f64, max_wait: Duration) -> f64 {
    let start = Instant::now();
    loop {
        let busy = tokio::task::spawn_blocking(|| machine_busy(Duration::from_secs(3)))
            .await
            .unwrap_or(0.0);
        if busy <= threshold {
            eprintln!(
                "[{label}] machine quiet: {busy:.0}% busy, load average {}",
                load_average()
            );
            return busy;
        }
        if start.elapsed() >= max_wait {
            eprintln!(
                "[{label}] WARNING: machine still {busy:.0}% busy after waiting {:.0} s (load average {}); measuring anyway, figures may be distorted",
                max_wait.as_secs_f64(),
                load_average()
            );
            return busy;
        }
        eprintln!(
            "[{label}] machine busy ({busy:.0}% of {} cores, load average {}): waiting for it to calm down",
            cpu_count(),
            load_average()
        );
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
}

fn command_output(program: &str, args: &[&str]) -> Option<String> {
    let output = std::process::Command::new(program)
        .args(args)
        .output()
        .ok()?;
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// CPU model, cores, memory, kernel and the servers' versions.
pub async fn describe(client: &tokio_postgres::Client) -> Value {
    let cpu_model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        })
        .unwrap_or_default();
    let memory_kib: u64 = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    let postgres = match client.query_one("SELECT version()", &[]).await {
        Ok(row) => row.get::<_, String>(0),
        Err(_) => String::new(),
    };
    let settings = client
        .query(
            "SELECT name, setting FROM pg_settings
             WHERE name IN ('fsync', 'synchronous_commit', 'shared_buffers', 'max_connections', 'wal_sync_method')
             ORDER BY name",
            &[],
        )
        .await
        .map(|rows| {
            rows.iter()
                .map(|r| format!("{}={}", r.get::<_, String>(0), r.get::<_, String>(1)))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    json!({
        "cpu": cpu_model,
        "cores": cpu_count(),
        "memoryGiB": (memory_kib as f64 / 1024.0 / 1024.0 * 10.0).round() / 10.0,
        "kernel": command_output("uname", &["-r"]).unwrap_or_default(),
        "postgres": postgres,
        "postgresSettings": settings,
        "rustc": command_output("rustc", &["--version"]).unwrap_or_default(),
        "pgbench": command_output("pgbench", &["--version"]),
        "date": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        "loadAverageAtStart": load_average(),
    })
}
