//! CPU time and resident memory of a process, from /proc (Linux).

/// User + system CPU time of `pid` so far, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the name.
    let ticks: u64 = [11, 12]
        .iter()
        .filter_map(|&i| fields.get(i)?.parse::<u64>().ok())
        .sum();
    ticks as f64 / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// Resident set size of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Samples the RSS of `pid` every 100 ms until dropped; `max` is the highest seen.
pub struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl RssSampler {
    pub fn start(pid: u32) -> RssSampler {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut max = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                max = max.max(rss_kib(pid));
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            max
        });
        RssSampler {
            stop,
            thread: Some(thread),
        }
    }

    pub fn max_kib(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.take().map_or(0, |t| t.join().unwrap_or(0))
    }
}

/// Fields of `/proc/<pid>/stat` after the command name (which is in parentheses and
/// may hold spaces): index 0 is the state, 1 the parent pid, 11/12 utime/stime and
/// 13/14 the reaped children's cutime/cstime (stat(5) fields 3, 4, 14-17).
fn stat_fields(pid: u32) -> Vec<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    // The state is a letter: kept as 0 so the indexes stay stat(5)'s minus 3.
    rest.split_whitespace()
        .map(|f| f.parse::<u64>().unwrap_or(0))
        .collect()
}

/// CPU seconds of `pid` and every process under it: their own time, and that of the
/// children they already reaped (so a Postgres backend that exited during a run still
/// counts, in its postmaster's cutime).
pub fn tree_cpu_seconds(pid: u32) -> f64 {
    let mut children: std::collections::HashMap<u32, Vec<u32>> = Default::default();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some(&parent) = stat_fields(child).get(1) {
            children.entry(parent as u32).or_default().push(child);
        }
    }
    let mut ticks = 0u64;
    let mut stack = vec![pid];
    while let Some(p) = stack.pop() {
        let fields = stat_fields(p);
        ticks += [11, 12, 13, 14]
            .iter()
            .filter_map(|&i| fields.get(i))
            .sum::<u64>();
        stack.extend(children.get(&p).into_iter().flatten());
    }
    ticks as f64 / clock_ticks_per_second()
}

/// The parent of `pid`.
pub fn parent(pid: u32) -> Option<u32> {
    stat_fields(pid).get(1).map(|&p| p as u32)
}

/// CPU seconds of this process's children that have been waited for (wrk, pgbench,
/// psql: each run is waited for when it ends).
pub fn reaped_children_cpu_seconds() -> f64 {
    rusage_seconds(libc::RUSAGE_CHILDREN)
}

/// CPU seconds of this process (the bench driver, and the do-nothing upstream it
/// serves on a thread).
pub fn own_cpu_seconds() -> f64 {
    rusage_seconds(libc::RUSAGE_SELF)
}

/// CPU seconds of the calling thread (a load generator's own thread).
pub fn thread_cpu_seconds() -> f64 {
    rusage_seconds(libc::RUSAGE_THREAD)
}

/// The postmaster of the server `db` connects to: the parent of its backend.
pub async fn postmaster_pid(db: &sqlx::PgPool) -> u32 {
    let backend: i32 = sqlx::query_scalar("select pg_backend_pid()")
        .fetch_one(db)
        .await
        .expect("asking Postgres for its backend's pid");
    parent(backend as u32).expect("the postmaster")
}

fn rusage_seconds(who: libc::c_int) -> f64 {
    // SAFETY: getrusage writes one rusage into the zeroed struct we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(who, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// The whole machine's CPU time so far, from /proc/stat: (busy, total) seconds over
/// all cores (idle and iowait are not busy).
pub fn machine_cpu_seconds() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|v| v.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest times are inside user).
    let total: u64 = ticks.iter().take(8).sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    let hz = clock_ticks_per_second();
    ((total - idle) as f64 / hz, total as f64 / hz)
}
