//! The standalone server binary as a child process of its own, on a free port of 127.0.0.1. The
//! binary's path comes from the caller: `env!("CARGO_BIN_EXE_feeds-server")` exists only in the
//! server crate's tests, and the benchmark runs a release build.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::services::{sqs_endpoint, var};
use crate::wait::FanoutQueue;
use crate::BoxError;

/// How long a server may take to answer `/health` (a debug build migrating a keyspace is slow).
const START_LIMIT: Duration = Duration::from_secs(90);

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Whether `GET /health` answers `200`.
fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut stream) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let request = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n";
    let mut status = [0u8; 12];
    stream.write_all(request).is_ok()
        && stream.read_exact(&mut status).is_ok()
        && &status == b"HTTP/1.1 200"
}

/// A child process started with `FEEDS_EXIT_ON_STDIN_EOF=1` and its standard input piped: when
/// dropped, its standard input closes, then it is killed if it has not exited within 10 s.
pub struct Stoppable {
    stdin: Option<ChildStdin>,
    child: Child,
}

impl Stoppable {
    /// Spawns `cmd`, piping its standard input.
    pub fn spawn(mut cmd: Command) -> std::io::Result<Stoppable> {
        let mut child = cmd
            .env("FEEDS_EXIT_ON_STDIN_EOF", "1")
            .stdin(Stdio::piped())
            .spawn()?;
        Ok(Stoppable {
            stdin: child.stdin.take(),
            child,
        })
    }

    /// Its exit status, once it has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Stoppable {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A server process; it stops when dropped ([`Stoppable`]).
pub struct Server {
    pub base: String,
    pub log: PathBuf,
    queue: Option<FanoutQueue>,
    process: Stoppable,
}

impl Server {
    /// Starts `bin` with `envs` (over text logs at `warn`), its output into `log`; answers once
    /// `/health` answers `200`.
    pub fn launch(
        bin: impl AsRef<Path>,
        envs: &[(&str, String)],
        log: &Path,
    ) -> Result<Server, BoxError> {
        let bin = bin.as_ref();
        let port = free_port();
        let log_file = std::fs::File::create(log)
            .map_err(|e| format!("cannot create {}: {e}", log.display()))?;
        let mut cmd = Command::new(bin);
        cmd.env("FEEDS_LOG_FORMAT", "text")
            .env("RUST_LOG", "warn")
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .env("FEEDS_BIND", format!("127.0.0.1:{port}"))
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let process =
            Stoppable::spawn(cmd).map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let mut server = Server {
            base: format!("http://127.0.0.1:{port}"),
            log: log.to_owned(),
            queue: None,
            process,
        };
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + START_LIMIT;
        while !healthy(addr) {
            if let Some(status) = server.process.exited() {
                return Err(format!(
                    "{} exited with {status}:\n{}",
                    bin.display(),
                    server.log_text()
                )
                .into());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} did not answer /health within {START_LIMIT:?}; log: {}",
                    bin.display(),
                    log.display()
                )
                .into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(server)
    }

    /// [`Server::launch`] with a log in the temporary directory named after `name`; panics when
    /// the server does not come up.
    pub fn start(bin: impl AsRef<Path>, name: &str, envs: &[(&str, String)]) -> Server {
        let log = std::env::temp_dir().join(format!("feeds-{}.log", crate::unique(name)));
        Server::launch(bin, envs, &log).unwrap_or_else(|e| panic!("feeds-server ({name}): {e}"))
    }

    /// On the embedded default, in a fresh SQLite file (store and queue); answers the file too.
    pub fn embedded(
        bin: impl AsRef<Path>,
        name: &str,
        extra: &[(&str, String)],
    ) -> (Server, PathBuf) {
        let db = std::env::temp_dir().join(format!("feeds-{}.db", crate::unique(name)));
        let mut envs = vec![("FEEDS_SQLITE_PATH", db.display().to_string())];
        envs.extend(extra.iter().cloned());
        let mut server = Server::start(bin, name, &envs);
        server.queue = Some(FanoutQueue::Embedded(db.clone()));
        (server, db)
    }

    /// On Cassandra (`keyspace`, migrated at start) and SQS (`queue_url`), as the local services
    /// are configured (`FEEDS_CASSANDRA_NODES`, `FEEDS_SQS_ENDPOINT`, `AWS_*`).
    pub fn cassandra_sqs(
        bin: impl AsRef<Path>,
        name: &str,
        keyspace: &str,
        queue_url: &str,
        extra: &[(&str, String)],
    ) -> Server {
        let mut envs = cassandra_sqs_envs(keyspace, queue_url);
        envs.extend(extra.iter().cloned());
        let mut server = Server::start(bin, name, &envs);
        server.queue = Some(FanoutQueue::Sqs(queue_url.to_owned()));
        server
    }

    /// The queue the server's fan-out works (known for [`Server::embedded`] and
    /// [`Server::cassandra_sqs`]).
    pub fn queue(&self) -> &FanoutQueue {
        self.queue
            .as_ref()
            .expect("a server started by `embedded` or `cassandra_sqs`")
    }

    /// The server's log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Stops the server now (as dropping it does).
    pub fn stop(self) {
        drop(self);
    }
}

/// The settings of a process on Cassandra (`keyspace`, migrated at start) and SQS (`queue_url`), as
/// the local services are configured (`FEEDS_CASSANDRA_NODES`, `FEEDS_SQS_ENDPOINT`, `AWS_*`).
pub fn cassandra_sqs_envs(keyspace: &str, queue_url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("FEEDS_STORE", "cassandra".to_owned()),
        (
            "FEEDS_CASSANDRA_NODES",
            var("FEEDS_CASSANDRA_NODES", "127.0.0.1:9042"),
        ),
        ("FEEDS_CASSANDRA_KEYSPACE", keyspace.to_owned()),
        ("FEEDS_CASSANDRA_MIGRATE", "true".to_owned()),
        ("FEEDS_QUEUE", "sqs".to_owned()),
        ("FEEDS_SQS_ENDPOINT", sqs_endpoint()),
        ("FEEDS_QUEUE_URL", queue_url.to_owned()),
        ("AWS_REGION", var("AWS_REGION", "us-east-1")),
        ("AWS_ACCESS_KEY_ID", var("AWS_ACCESS_KEY_ID", "local")),
        (
            "AWS_SECRET_ACCESS_KEY",
            var("AWS_SECRET_ACCESS_KEY", "local"),
        ),
    ]
}
