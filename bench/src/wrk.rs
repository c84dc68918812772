//! Runs wrk (the load generator) with one of the Lua scripts in `bench/lua`, and
//! reads the JSON line their `done` prints.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// One wrk run's figures.
#[derive(Clone, Debug, Default)]
pub struct Run {
    pub requests: u64,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Answers that were not 2xx/3xx, plus socket errors and timeouts.
    pub errors: u64,
    /// The rest of the JSON line (script-specific counters).
    pub extra: Value,
    /// CPU time of the process under test per request, ms, where it was measured.
    pub cpu_ms: f64,
}

impl Run {
    pub fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    /// The rate with its median and 99th-percentile latency, as the tables show them.
    pub fn figure(&self) -> String {
        format!(
            "{:.0}/s, {:.2}/{:.2} ms",
            self.rate(),
            self.p50_ms,
            self.p99_ms
        )
    }
}

pub struct Load<'a> {
    pub url: String,
    pub script: &'a str,
    pub connections: u32,
    /// wrk threads; refresh chains need one connection per thread.
    pub threads: u32,
    pub seconds: u32,
    pub env: Vec<(&'static str, String)>,
}

pub fn run(lua_dir: &Path, load: &Load) -> Run {
    let output = Command::new("wrk")
        .arg(format!("-t{}", load.threads))
        .arg(format!("-c{}", load.connections))
        .arg(format!("-d{}s", load.seconds))
        .arg("--timeout")
        .arg("10s")
        .arg("-s")
        .arg(lua_dir.join(load.script))
        .arg(&load.url)
        .env("BENCH_LUA_DIR", lua_dir)
        // For scripts that give each thread a share of the tokens (get.lua).
        .env("BENCH_THREADS", load.threads.to_string())
        .envs(load.env.iter().map(|(k, v)| (k, v)))
        .output()
        .expect("running wrk (scripts/bench installs it)");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("BENCH "))
        .unwrap_or_else(|| {
            panic!(
                "wrk printed no result for {}:\n{stdout}\n{}",
                load.url,
                String::from_utf8_lossy(&output.stderr)
            )
        });
    let v: Value = serde_json::from_str(line).expect("wrk result is JSON");
    let n = |k: &str| v[k].as_u64().unwrap_or(0);
    Run {
        requests: n("requests"),
        seconds: n("duration_us") as f64 / 1e6,
        p50_ms: n("p50_us") as f64 / 1000.0,
        p99_ms: n("p99_us") as f64 / 1000.0,
        errors: n("non_2xx") + n("connect") + n("read") + n("write") + n("timeout"),
        extra: v,
        cpu_ms: 0.0,
    }
}
