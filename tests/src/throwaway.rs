//! Postgres and Redis servers of a test's own, started from the installed binaries on
//! free ports, for the fault scenarios that kill or restart them: the machine's shared
//! servers are never touched. Same approach as `scripts/services.sh`.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Process, TempDir, free_port};

/// A `redis-server` on a free port, keeping nothing on disk (as the project's Redis
/// is configured to: a restart comes back empty).
pub struct ThrowawayRedis {
    pub port: u16,
    process: Process,
    dir: TempDir,
}

impl ThrowawayRedis {
    pub fn start() -> ThrowawayRedis {
        let dir = TempDir::new("redis");
        let port = free_port();
        let process = spawn_redis(port, &dir.0);
        ThrowawayRedis { port, process, dir }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// SIGKILL: no shutdown, no save.
    pub fn kill(&mut self) {
        self.process.stop();
    }

    /// A new, empty server on the same port.
    pub fn restart(&mut self) {
        self.process.stop();
        self.process = spawn_redis(self.port, &self.dir.0);
    }
}

fn spawn_redis(port: u16, dir: &std::path::Path) -> Process {
    let mut command = Command::new("redis-server");
    command
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no", "--dir"])
        .arg(dir);
    let process = Process::spawn("redis-server", command);
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "redis-server did not listen on {port}: {}",
            process.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    process
}

/// A Postgres cluster in a temporary directory, on a free port, with durability on
/// (a restart must keep what was committed). initdb and postgres refuse to run as
/// root, so as root they run as the `postgres` user, like `scripts/services.sh`.
pub struct ThrowawayPostgres {
    pub port: u16,
    bin: PathBuf,
    dir: PathBuf,
}

impl ThrowawayPostgres {
    pub fn start() -> ThrowawayPostgres {
        let bin = postgres_bindir();
        let dir = std::env::temp_dir().join(format!("e2e-pg-{}", crate::random_hex()));
        // Under /tmp so the postgres user can reach it when we are root.
        let dir = if is_root() {
            PathBuf::from("/tmp").join(dir.file_name().unwrap())
        } else {
            dir
        };
        std::fs::create_dir_all(&dir).unwrap();
        if is_root() {
            run_ok(Command::new("chown").arg("postgres:").arg(&dir));
        }
        let pg = ThrowawayPostgres {
            port: free_port(),
            bin,
            dir,
        };
        let mut initdb = pg.command("initdb");
        initdb.arg("-D").arg(pg.dir.join("data")).args([
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
        ]);
        run_ok(&mut initdb);
        pg.pg_ctl_start();
        pg
    }

    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn pg_ctl_start(&self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -p {} -k {} -c max_connections=200",
            self.port,
            self.dir.display()
        );
        let mut start = self.command("pg_ctl");
        start
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("postgres.log"))
            .args(["-w", "-t", "60", "-o", &options, "start"]);
        run_ok(&mut start);
    }

    /// `pg_ctl stop -m fast`: open connections are terminated, as in a real restart.
    pub fn stop(&self) {
        let mut stop = self.command("pg_ctl");
        stop.arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "-w", "-t", "60", "stop"]);
        run_ok(&mut stop);
    }

    pub fn start_again(&self) {
        self.pg_ctl_start();
    }
}

impl Drop for ThrowawayPostgres {
    fn drop(&mut self) {
        if self.dir.join("data/postmaster.pid").exists() {
            let mut stop = self.command("pg_ctl");
            stop.arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", "immediate", "-w", "-t", "30", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            let _ = stop.status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

fn postgres_bindir() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    dirs.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop().expect(
        "Postgres server binaries under /usr/lib/postgresql/*/bin (apt-get install postgresql)",
    )
}

fn run_ok(command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Resident memory of a process, KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
