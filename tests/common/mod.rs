//! Cluster harness for the integration tests.
//!
//! One primary cluster per test binary, started on first use in a fresh directory
//! `/tmp/api_key_mgmt/it-<pid>-<name>` on a free port, with the library preloaded. Each
//! test makes its own database ([`TestDb`]), so tests are independent and may run in
//! parallel. Clusters are stopped and their directories removed when the process exits
//! (an `atexit` handler, which also runs when a test fails); clusters left behind by a
//! process that was killed are reaped at the next start (their pid is in the name).
//!
//! initdb refuses root, so as root every server-side program runs as the `postgres` OS
//! user (`runuser -u postgres --`); otherwise it runs as the current user.

#![allow(dead_code)] // each test binary uses a different subset

pub mod keys;
pub mod secrets;
pub mod sql;

use postgres::{Client, NoTls};
use std::ffi::OsStr;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, Once, OnceLock};
use std::time::{Duration, Instant};

/// Parent of every cluster directory of these tests.
pub const WORK: &str = "/tmp/api_key_mgmt";

/// Directory of the PostgreSQL 15 programs (`PG_BIN` overrides).
pub fn pg_bin(program: &str) -> PathBuf {
    let dir = std::env::var_os("PG_BIN").unwrap_or_else(|| "/usr/lib/postgresql/15/bin".into());
    Path::new(&dir).join(program)
}

fn is_root() -> bool {
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// A command for a PostgreSQL program, run as `postgres` when we are root.
pub fn pg_command(program: &str) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(pg_bin(program));
        c
    } else {
        Command::new(pg_bin(program))
    }
}

/// Run to completion; panic with its output unless it succeeded.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A port nobody listens on right now (the OS picks it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Directories of clusters this process started, stopped and removed at exit.
static OWNED: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

extern "C" {
    fn atexit(callback: extern "C" fn()) -> std::ffi::c_int;
}

extern "C" fn cleanup_at_exit() {
    let dirs = std::mem::take(&mut *OWNED.lock().unwrap_or_else(|e| e.into_inner()));
    for dir in dirs.iter().rev() {
        stop_and_remove(dir);
    }
}

fn stop_and_remove(dir: &Path) {
    let data = dir.join("data");
    if data.join("postmaster.pid").exists() {
        let _ = pg_command("pg_ctl")
            .arg("-D")
            .arg(&data)
            .args(["-m", "fast", "-w", "-t", "60", "stop"])
            .output();
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Whether `pid` is a live integration-test process (conservatively true when unsure).
fn test_process_alive(pid: u32) -> bool {
    let proc_dir = PathBuf::from(format!("/proc/{pid}"));
    if !proc_dir.exists() {
        return false;
    }
    match std::fs::read_link(proc_dir.join("exe")) {
        Ok(exe) => exe
            .file_name()
            .and_then(OsStr::to_str)
            // Every test binary using this harness (tests/integration.rs, tests/tenancy.rs).
            .is_some_and(|n| n.starts_with("integration") || n.starts_with("tenancy")),
        Err(_) => true,
    }
}

/// Stop and remove clusters of integration runs that died without cleaning up.
fn reap_stale_clusters() {
    let Ok(entries) = std::fs::read_dir(WORK) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("it-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !test_process_alive(pid) {
            eprintln!("integration harness: reaping stale cluster {name}");
            stop_and_remove(&entry.path());
        }
    }
}

/// A PostgreSQL cluster in `dir/data`, logging to `dir/server.log`, listening on
/// 127.0.0.1:`port` and on a socket in `dir`.
pub struct Cluster {
    pub dir: PathBuf,
    pub port: u16,
}

impl Cluster {
    /// A fresh directory `/tmp/api_key_mgmt/it-<pid>-<name>`, owned by the server's user
    /// and removed at exit.
    fn make_dir(name: &str) -> PathBuf {
        harness_init();
        let dir = Path::new(WORK).join(format!("it-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create cluster directory");
        if is_root() {
            run(Command::new("chown").arg("postgres:").arg(&dir));
        }
        OWNED.lock().unwrap().push(dir.clone());
        dir
    }

    /// initdb a new cluster (not started).
    pub fn init(name: &str) -> Cluster {
        let dir = Self::make_dir(name);
        let data = dir.join("data");
        run(pg_command("initdb")
            .arg("-D")
            .arg(&data)
            .args(["-U", "postgres", "-A", "trust", "--no-sync"])
            .args(["--encoding=UTF8", "--locale=C", "--no-instructions"]));
        // The port and socket directory are given at start (-p, -k), so a standby made
        // by pg_basebackup can reuse this file as is.
        let conf = "\n# integration harness\n\
             listen_addresses = '127.0.0.1'\n\
             shared_preload_libraries = 'api_key_mgmt'\n\
             fsync = off\n\
             max_connections = 200\n\
             log_statement = 'none'\n\
             # The tests' databases are not the maintenance worker's (it serves postgres),\n\
             # so durable audited reads would fail closed there: they audit in the reading\n\
             # transaction. tests/it/audit.rs sets the other modes on clusters of its own.\n\
             api_key_mgmt.audit_read_mode = 'transaction'\n";
        append(&data.join("postgresql.conf"), conf);
        Cluster { dir, port: 0 }
    }

    /// A standby of `primary`, made with `pg_basebackup -R` (not started).
    pub fn standby_of(primary: &Cluster, name: &str) -> Cluster {
        let dir = Self::make_dir(name);
        run(pg_command("pg_basebackup")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &primary.port.to_string(),
                "-U",
                "postgres",
            ])
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-R", "-X", "stream", "-c", "fast", "--no-sync"]));
        Cluster { dir, port: 0 }
    }

    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// Start on a free port (retried with another port if that one was taken meanwhile)
    /// and wait until it accepts connections.
    pub fn start(&mut self) {
        let mut last_err = String::new();
        for _ in 0..5 {
            let port = free_port();
            let out = pg_command("pg_ctl")
                .arg("-D")
                .arg(self.data())
                .arg("-l")
                .arg(self.log_path())
                .args(["-w", "-t", "120", "-o"])
                .arg(format!("-p {port} -k {}", self.dir.display()))
                .arg("start")
                .output()
                .expect("run pg_ctl start");
            if out.status.success() {
                self.port = port;
                return;
            }
            last_err = String::from_utf8_lossy(&out.stderr).into_owned();
            let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
            if !log.contains("could not bind") && !log.contains("already in use") {
                break;
            }
        }
        panic!(
            "cannot start the cluster in {}: {last_err}\nserver log:\n{}",
            self.dir.display(),
            std::fs::read_to_string(self.log_path()).unwrap_or_default()
        );
    }

    /// Stop (fast) and remove the directory.
    pub fn destroy(&self) {
        stop_and_remove(&self.dir);
        OWNED.lock().unwrap().retain(|d| d != &self.dir);
    }

    /// The whole server log so far.
    pub fn log(&self) -> Vec<u8> {
        std::fs::read(self.log_path()).expect("read the server log")
    }

    /// Connection options for `user` to `dbname` over TCP.
    pub fn conninfo(&self, dbname: &str, user: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} dbname={dbname} \
             application_name=integration options='-c statement_timeout=120s'",
            self.port
        )
    }

    pub fn connect_as(&self, dbname: &str, user: &str) -> Client {
        let info = self.conninfo(dbname, user);
        Client::connect(&info, NoTls).unwrap_or_else(|e| panic!("connect {info}: {e}"))
    }

    pub fn connect(&self, dbname: &str) -> Client {
        self.connect_as(dbname, "postgres")
    }

    /// A command for a client program (pg_dump, createdb, ...) aimed at this cluster.
    pub fn client_command(&self, program: &str) -> Command {
        let mut c = pg_command(program);
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
        ]);
        c
    }
}

fn append(path: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    f.write_all(text.as_bytes())
        .expect("append to postgresql.conf");
}

/// Once per process, before the first cluster: reap stale clusters, arrange cleanup.
fn harness_init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        reap_stale_clusters();
        // SAFETY: registering a plain extern "C" fn with libc's atexit.
        let rc = unsafe { atexit(cleanup_at_exit) };
        assert_eq!(rc, 0, "atexit");
    });
}

/// The cluster shared by every test of this binary, started on first use.
pub fn primary() -> &'static Cluster {
    static PRIMARY: OnceLock<Cluster> = OnceLock::new();
    PRIMARY.get_or_init(|| {
        let t = Instant::now();
        let mut c = Cluster::init("primary");
        c.start();
        eprintln!(
            "integration harness: cluster {} on port {} ready in {:?}",
            c.dir.display(),
            c.port,
            t.elapsed()
        );
        c
    })
}

/// A database of its own on the shared cluster, with the extension created.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    /// `CREATE DATABASE <name>; CREATE EXTENSION api_key_mgmt` (name: lower-case, unique
    /// per test).
    pub fn new(name: &str) -> TestDb {
        assert!(name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        let cluster = primary();
        let mut admin = cluster.connect("postgres");
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let db = TestDb { name: name.into() };
        db.connect()
            .batch_execute("CREATE EXTENSION api_key_mgmt")
            .expect("CREATE EXTENSION api_key_mgmt");
        db
    }

    pub fn cluster(&self) -> &'static Cluster {
        primary()
    }

    pub fn connect(&self) -> Client {
        primary().connect(&self.name)
    }

    pub fn connect_as(&self, user: &str) -> Client {
        primary().connect_as(&self.name, user)
    }
}

/// Poll `cond` every 50 ms until it holds; panic with `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
