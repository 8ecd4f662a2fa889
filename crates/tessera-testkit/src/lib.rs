//! Test support: a real PostgreSQL cluster started on loopback (Debian's binaries), a fresh
//! database per test, and paths to the real `tessera` binary's helpers.
//!
//! The cluster is shared by every test process of a run (a file lock guards its start) and is
//! left running afterwards so the next run starts fast. Tests never skip PostgreSQL silently:
//! without a server the test fails, unless `TESSERA_SKIP_POSTGRES=1` says so explicitly.

use std::fs::{self, File};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// Where the shared test cluster lives.
fn cluster_dir() -> PathBuf {
    std::env::var_os("TESSERA_TEST_PG_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp/tessera-test-pg"))
}

fn pg_bin(name: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = fs::read_dir("/usr/lib/postgresql")
        .map(|rd| rd.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.sort();
    dirs.reverse();
    for d in dirs {
        let p = d.join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

fn is_root() -> bool {
    // `id -u` rather than libc::geteuid: this crate forbids unsafe code.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Runs a PostgreSQL binary, as the `postgres` user when we are root (PostgreSQL refuses root).
fn run_pg(bin: &str, args: &[&str]) -> std::process::Output {
    let path = pg_bin(bin);
    let mut cmd = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(&path);
        c
    } else {
        Command::new(&path)
    };
    cmd.args(args);
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn ensure_cluster() -> u16 {
    start_cluster(&cluster_dir(), None)
}

/// The superuser password of the password-checking test cluster.
pub const PG_ADMIN_PASSWORD: &str = "tessera-test-admin-password";

/// Starts (once) the cluster in `dir`: `trust` authentication, or with `password` set, SCRAM
/// password authentication for every connection (for tests where a password must really count).
fn start_cluster(dir: &std::path::Path, password: Option<&str>) -> u16 {
    let dir = dir.to_path_buf();
    fs::create_dir_all(&dir).expect("create the test cluster folder");
    let pwfile = dir.join("pwfile");
    if let Some(p) = password {
        fs::write(&pwfile, p).expect("write the password file");
    }
    let lock = File::create(dir.with_extension("lock")).expect("lock file");
    lock.lock().expect("lock the test cluster");
    let data = dir.join("data");
    let port_file = dir.join("port");
    if is_root() {
        let _ = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(&dir)
            .status();
    }
    if !data.join("PG_VERSION").exists() {
        let pw_arg = format!("--pwfile={}", pwfile.display());
        let mut args = vec![
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-instructions",
        ];
        if password.is_some() {
            args.extend(["--auth=scram-sha-256", pw_arg.as_str()]);
        } else {
            args.push("--auth=trust");
        }
        let out = run_pg("initdb", &args);
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let running = run_pg("pg_ctl", &["-D", data.to_str().unwrap(), "status"])
        .status
        .success();
    if running {
        if let Ok(p) = fs::read_to_string(&port_file) {
            if let Ok(p) = p.trim().parse() {
                return p;
            }
        }
        let _ = run_pg(
            "pg_ctl",
            &["-D", data.to_str().unwrap(), "stop", "-m", "fast"],
        );
    }
    let port = free_port();
    let opts = format!(
        "-p {port} -k {} -c listen_addresses=127.0.0.1 -c max_connections=300",
        dir.display()
    );
    let log = dir.join("server.log");
    let out = run_pg(
        "pg_ctl",
        &[
            "-D",
            data.to_str().unwrap(),
            "-o",
            &opts,
            "-l",
            log.to_str().unwrap(),
            "-w",
            "start",
        ],
    );
    assert!(
        out.status.success(),
        "PostgreSQL did not start: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        fs::read_to_string(&log).unwrap_or_default()
    );
    fs::write(&port_file, port.to_string()).expect("write port file");
    port
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A fresh database in a cluster that checks passwords (SCRAM): `(url without credentials,
/// superuser name, superuser password)`. For dynamic credentials, whose passwords must matter.
pub fn postgres_password_database() -> Option<(String, String, String)> {
    if std::env::var("TESSERA_SKIP_POSTGRES").as_deref() == Ok("1") {
        eprintln!("TESSERA_SKIP_POSTGRES=1: skipping the PostgreSQL half of this test");
        return None;
    }
    let dir = cluster_dir().with_file_name("tessera-test-pg-scram");
    let port = start_cluster(&dir, Some(PG_ADMIN_PASSWORD));
    let name = format!(
        "tessera_dyn_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    );
    let base = format!("postgres://postgres@127.0.0.1:{port}");
    let out = Command::new("psql")
        .args([base.as_str(), "-v", "ON_ERROR_STOP=1", "-qc"])
        .arg(format!("CREATE DATABASE {name}"))
        .env("PGPASSWORD", PG_ADMIN_PASSWORD)
        .output()
        .expect("psql (the postgresql-client package) is needed for the PostgreSQL tests");
    assert!(
        out.status.success(),
        "CREATE DATABASE failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some((
        format!("postgres://127.0.0.1:{port}/{name}"),
        "postgres".into(),
        PG_ADMIN_PASSWORD.into(),
    ))
}

/// A URL to a fresh, empty PostgreSQL database, or `None` when the run opted out explicitly.
pub fn postgres_database() -> Option<String> {
    if std::env::var("TESSERA_SKIP_POSTGRES").as_deref() == Ok("1") {
        eprintln!("TESSERA_SKIP_POSTGRES=1: skipping the PostgreSQL half of this test");
        return None;
    }
    let base = match std::env::var("TESSERA_TEST_DATABASE_URL") {
        Ok(url) => url,
        Err(_) => format!("postgres://postgres@127.0.0.1:{}", ensure_cluster()),
    };
    let name = format!(
        "tessera_test_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos()
    );
    let out = Command::new("psql")
        .args([base.as_str(), "-v", "ON_ERROR_STOP=1", "-qc"])
        .arg(format!("CREATE DATABASE {name}"))
        .output()
        .expect("psql (the postgresql-client package) is needed for the PostgreSQL tests");
    assert!(
        out.status.success(),
        "CREATE DATABASE failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(format!("{base}/{name}"))
}

/// A temporary data folder for a server.
pub fn data_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("tessera-test-")
        .tempdir()
        .expect("temp dir")
}

/// A child process started by a test; killed when dropped.
pub struct Proc {
    pub child: std::process::Child,
    /// The value after `url=` (or `socket=`) on the ready line.
    pub ready: String,
    /// The whole ready line.
    pub line: String,
    pub stderr_path: PathBuf,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proc {
    /// What the process wrote on stderr so far (for assertion messages).
    pub fn stderr(&self) -> String {
        fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().unwrap()
    }
}

/// Starts `cmd` and waits (at most 30 s) for a stdout line starting with `prefix`.
pub fn spawn_ready(mut cmd: Command, prefix: &str) -> Proc {
    use std::io::BufRead;
    let stderr_path = tempfile::Builder::new()
        .prefix("tessera-stderr-")
        .tempfile()
        .unwrap()
        .into_temp_path()
        .keep()
        .unwrap();
    cmd.stdout(std::process::Stdio::piped())
        .stderr(File::create(&stderr_path).unwrap());
    let mut child = cmd.spawn().expect("spawn");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let wanted = prefix.to_owned();
    std::thread::spawn(move || {
        let mut lines = std::io::BufReader::new(stdout).lines();
        while let Some(Ok(line)) = lines.next() {
            if line.starts_with(&wanted) {
                let _ = tx.send(line);
                break;
            }
        }
        // Keep draining so the child never blocks on a full pipe.
        for _ in lines {}
    });
    match rx.recv_timeout(std::time::Duration::from_secs(30)) {
        Ok(line) => {
            let ready = line
                .split_once('=')
                .map(|(_, v)| v.split_whitespace().next().unwrap_or("").to_owned())
                .unwrap_or_default();
            Proc {
                child,
                ready,
                line,
                stderr_path,
            }
        }
        Err(_) => {
            let _ = child.kill();
            let status = child.wait();
            panic!(
                "no ready line `{prefix}` within 30 s ({status:?}); stderr:\n{}",
                fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
    }
}

/// Debian's SoftHSM2 module: a real PKCS#11 library, software inside.
pub const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

/// A SoftHSM2 installation of its own (its own config and token folder) holding any number of
/// tokens, each with user PIN `1234`. Processes reach it through `SOFTHSM2_CONF` (see
/// [`SoftHsm::env`]); the test's own environment is never changed.
pub struct SoftHsm {
    pub dir: tempfile::TempDir,
    pub conf: PathBuf,
    pub pin: String,
}

impl SoftHsm {
    /// Panics when SoftHSM2 is missing: `.ci/run` installs it (Debian `softhsm2`).
    pub fn new() -> Self {
        assert!(
            Path::new(SOFTHSM_MODULE).exists(),
            "SoftHSM2 is not installed (`apt-get install softhsm2 opensc`)"
        );
        let dir = tempfile::Builder::new()
            .prefix("tessera-hsm-")
            .tempdir()
            .unwrap();
        let tokens = dir.path().join("tokens");
        fs::create_dir_all(&tokens).unwrap();
        let conf = dir.path().join("softhsm2.conf");
        fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        Self {
            dir,
            conf,
            pin: "1234".into(),
        }
    }

    /// Initialises a fresh token labelled `label`.
    pub fn add_token(&self, label: &str) {
        let out = Command::new("softhsm2-util")
            .args(["--init-token", "--free", "--label", label])
            .args(["--pin", &self.pin, "--so-pin", "5678"])
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "softhsm2-util: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// What a process needs to see these tokens (and the PIN, in `TEST_HSM_PIN`).
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            ("SOFTHSM2_CONF".into(), self.conf.display().to_string()),
            ("TEST_HSM_PIN".into(), self.pin.clone()),
        ]
    }

    /// `pkcs11-tool` (OpenSC), logged in to token `label`, with `args`.
    pub fn tool(&self, label: &str, args: &[&str]) -> std::process::Output {
        Command::new("pkcs11-tool")
            .args(["--module", SOFTHSM_MODULE, "--token-label", label])
            .args(["--login", "--pin", &self.pin])
            .args(args)
            .env("SOFTHSM2_CONF", &self.conf)
            .output()
            .unwrap()
    }

    /// The `[pkcs11]` table of a server config for token `label` holding `keys`.
    pub fn config(&self, label: &str, keys: &[&str]) -> String {
        let keys: Vec<String> = keys.iter().map(|k| format!("\"{k}\"")).collect();
        format!(
            "[pkcs11]\nmodule = \"{SOFTHSM_MODULE}\"\ntoken_label = \"{label}\"\npin_env = \"TEST_HSM_PIN\"\nkeys = [{}]\n",
            keys.join(", ")
        )
    }
}

impl Default for SoftHsm {
    fn default() -> Self {
        Self::new()
    }
}
