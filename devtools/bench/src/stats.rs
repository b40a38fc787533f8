//! Latency and throughput of one measured point, and the pass/fail targets of issue 5.

use serde_json::{json, Value};

use crate::machine::CpuSeconds;

/// One measured point: how many operations, over how long, and their latencies.
#[derive(Debug, Clone, Default)]
pub struct Measured {
    pub count: u64,
    pub failures: u64,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub mean_ms: f64,
    pub first_failure: Option<String>,
    /// CPU used while the point ran, by kind (its foreign share says how quiet it was).
    pub cpu: CpuSeconds,
    /// The latencies, sorted (µs), so slices of one point can be merged.
    pub micros: Vec<u64>,
}

impl Measured {
    /// From successful latencies in microseconds.
    pub fn from_micros(mut micros: Vec<u64>, seconds: f64, failures: u64) -> Self {
        micros.sort_unstable();
        let count = micros.len() as u64;
        let mean = if micros.is_empty() {
            0.0
        } else {
            micros.iter().sum::<u64>() as f64 / micros.len() as f64 / 1000.0
        };
        Self {
            count,
            failures,
            seconds,
            p50_ms: percentile(&micros, 0.50),
            p99_ms: percentile(&micros, 0.99),
            mean_ms: mean,
            first_failure: None,
            cpu: CpuSeconds::default(),
            micros,
        }
    }

    /// One point measured in slices (interleaved with another series): all latencies
    /// together, time, failures and CPU summed.
    pub fn merge(parts: Vec<Measured>) -> Self {
        let mut micros = Vec::new();
        let (mut seconds, mut failures) = (0.0, 0);
        let mut cpu = CpuSeconds::default();
        let mut first_failure = None;
        for part in parts {
            micros.extend(part.micros);
            seconds += part.seconds;
            failures += part.failures;
            cpu.bench += part.cpu.bench;
            cpu.postgres += part.cpu.postgres;
            cpu.rabbitmq += part.cpu.rabbitmq;
            cpu.foreign += part.cpu.foreign;
            cpu.wall += part.cpu.wall;
            first_failure = first_failure.or(part.first_failure);
        }
        let mut merged = Self::from_micros(micros, seconds, failures);
        merged.cpu = cpu;
        merged.first_failure = first_failure;
        merged
    }

    pub fn per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.count as f64 / self.seconds
        } else {
            0.0
        }
    }

    /// CPU milliseconds per operation: (bench process and children, PostgreSQL, RabbitMQ).
    pub fn cpu_ms(&self) -> (f64, f64, f64) {
        self.cpu.per_operation_ms(self.count)
    }

    pub fn to_json(&self) -> Value {
        json!({
            "count": self.count,
            "failures": self.failures,
            "seconds": round(self.seconds, 3),
            "perSecond": round(self.per_second(), 1),
            "p50Ms": round(self.p50_ms, 3),
            "p99Ms": round(self.p99_ms, 3),
            "meanMs": round(self.mean_ms, 3),
            "firstFailure": self.first_failure,
            "foreignCpuPercent": round(self.cpu.foreign_percent(), 1),
            "cpuMsPerOperation": {
                "bench": round(self.cpu_ms().0, 3),
                "postgres": round(self.cpu_ms().1, 3),
                "rabbitmq": round(self.cpu_ms().2, 3),
            },
        })
    }
}

/// Nearest-rank percentile of sorted microseconds, in milliseconds.
fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1] as f64 / 1000.0
}

pub fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

pub fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

/// A figure of issue 5 and whether the run met it.
#[derive(Debug, Clone)]
pub struct Target {
    pub name: String,
    pub measured: String,
    pub required: String,
    pub pass: bool,
}

impl Target {
    pub fn new(
        name: impl Into<String>,
        measured: impl Into<String>,
        required: impl Into<String>,
        pass: bool,
    ) -> Self {
        Self {
            name: name.into(),
            measured: measured.into(),
            required: required.into(),
            pass,
        }
    }

    pub fn verdict(&self) -> &'static str {
        if self.pass {
            "PASS"
        } else {
            "FAIL"
        }
    }

    pub fn to_json(&self) -> Value {
        json!({
            "target": self.name,
            "measured": self.measured,
            "required": self.required,
            "pass": self.pass,
        })
    }
}

/// A small, fast pseudo-random generator (xorshift64*), enough to pick products.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

/// Formats a number with thousands separators.
pub fn thousands(value: f64) -> String {
    let rounded = value.round() as i64;
    let digits = rounded.abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    if rounded < 0 {
        format!("-{out}")
    } else {
        out
    }
}
