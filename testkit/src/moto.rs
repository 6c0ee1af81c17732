//! moto's server (`moto_server`, pinned in `scripts/python-tools.sh`), the stand-in for API
//! Gateway's Management API in tests: it serves `PostToConnection` at `POST /@connections/{id}`
//! for any id (SigV4 with any keys) and records every request it serves. It never answers
//! 410 Gone: a connection that is gone can only be met on AWS.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::Value;

use crate::server::free_port;
use crate::services::{var, ROOT};

/// How long moto may take to answer once started.
const START_LIMIT: Duration = Duration::from_secs(60);

/// A message moto took for a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Posted {
    pub connection: String,
    pub body: String,
}

/// A `moto_server` process on a free port of 127.0.0.1, recording; killed when dropped.
pub struct Moto {
    /// What the Management API client takes as its endpoint (the callback URL).
    pub url: String,
    child: Child,
    dir: PathBuf,
    http: reqwest::Client,
}

/// `moto_server` in the Python tools' venv, installed there first when it is missing.
fn binary() -> PathBuf {
    static INSTALL: Mutex<()> = Mutex::new(());
    let state = var("FEEDS_STATE_DIR", &format!("{ROOT}/.local"));
    let bin = PathBuf::from(state).join("venv/bin/moto_server");
    let _one_at_a_time = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    if !bin.is_file() {
        eprintln!("installing moto: scripts/python-tools.sh (first use: a minute or two)");
        let installed = Command::new("bash")
            .arg(format!("{ROOT}/scripts/python-tools.sh"))
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(installed, "scripts/python-tools.sh failed");
    }
    assert!(bin.is_file(), "{} is missing", bin.display());
    bin
}

impl Moto {
    /// Starts a server of its own, and its recorder.
    pub async fn start() -> Moto {
        let bin = tokio::task::spawn_blocking(binary).await.unwrap();
        let dir = std::env::temp_dir().join(crate::unique("moto"));
        std::fs::create_dir_all(&dir).unwrap();
        let log = std::fs::File::create(dir.join("moto.log")).unwrap();
        let port = free_port();
        let child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            // Its recorder writes to a file, in the working directory unless told otherwise.
            .env("MOTO_RECORDER_FILEPATH", dir.join("recording"))
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("moto_server starts");
        let mut moto = Moto {
            url: format!("http://127.0.0.1:{port}"),
            child,
            dir,
            http: reqwest::Client::new(),
        };
        let deadline = Instant::now() + START_LIMIT;
        loop {
            let answered = moto
                .http
                .get(format!("{}/moto-api/", moto.url))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if answered {
                break;
            }
            if let Ok(Some(status)) = moto.child.try_wait() {
                panic!("moto_server exited ({status}): {}", moto.log());
            }
            assert!(
                Instant::now() < deadline,
                "moto_server did not answer: {}",
                moto.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        moto.api("start-recording").await;
        moto
    }

    async fn api(&self, call: &str) -> String {
        let url = format!("{}/moto-api/recorder/{call}", self.url);
        let request = match call {
            "download-recording" => self.http.get(url),
            _ => self.http.post(url),
        };
        let answer = request.send().await.expect("moto's recorder");
        assert!(answer.status().is_success(), "{call}: {}", answer.status());
        answer.text().await.unwrap()
    }

    /// Every message posted to a connection since the start, in order.
    pub async fn posted(&self) -> Vec<Posted> {
        let recording = self.api("download-recording").await;
        recording
            .lines()
            .filter(|line| !line.trim().is_empty())
            .filter_map(|line| {
                let request: Value = serde_json::from_str(line).expect("a recorded request");
                let path = request["url"].as_str()?.split_once("/@connections/")?.1;
                if request["method"] != "POST" {
                    return None;
                }
                let body = request["body"].as_str().unwrap_or_default();
                let body = match request["body_encoded"].as_bool() {
                    Some(true) => base64::engine::general_purpose::STANDARD
                        .decode(body)
                        .expect("a base64 body"),
                    _ => body.as_bytes().to_vec(),
                };
                Some(Posted {
                    connection: percent_decoded(path),
                    body: String::from_utf8(body).expect("a UTF-8 body"),
                })
            })
            .collect()
    }

    /// The messages posted to `connection`, in order.
    pub async fn posted_to(&self, connection: &str) -> Vec<String> {
        let all = self.posted().await;
        all.into_iter()
            .filter(|p| p.connection == connection)
            .map(|p| p.body)
            .collect()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("moto.log")).unwrap_or_default()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A URL path segment without its `%XX` escapes.
fn percent_decoded(segment: &str) -> String {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
