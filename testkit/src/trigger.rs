//! `feeds-server local-trigger` (the local stand-in for Lambda's SQS trigger) as a child process,
//! and what its log says about each batch it delivered.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::server::Stoppable;
use crate::services::{sqs_endpoint, var, ROOT};

/// A running trigger; it stops when dropped.
pub struct Trigger {
    pub log: PathBuf,
    process: Stoppable,
}

/// One batch as the trigger logged it.
#[derive(Debug, Clone)]
pub struct Batch {
    /// `(message id, receive count)` of each message, as the function received them.
    pub messages: Vec<(String, u32)>,
    /// The function answered; `false`: the whole batch failed (`error` says why).
    pub answered: bool,
    /// The ids the function reported failed.
    pub failed: Vec<String>,
    pub deleted: u64,
    pub error: Option<String>,
}

impl Batch {
    pub fn holds(&self, id: &str) -> bool {
        self.messages.iter().any(|(m, _)| m == id)
    }
}

impl Trigger {
    /// Starts `bin local-trigger` on `queue_url` (with the local SQS server and the template) with
    /// `args`; answers once it polls.
    pub fn start(bin: impl AsRef<Path>, queue_url: &str, args: &[&str]) -> Trigger {
        let log = std::env::temp_dir().join(format!("{}.log", crate::unique("feeds-trigger")));
        let file = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(bin.as_ref());
        cmd.arg("local-trigger")
            .arg("--template")
            .arg(format!("{ROOT}/template.yaml"))
            .args(args)
            .env("FEEDS_QUEUE_URL", queue_url)
            .env("FEEDS_SQS_ENDPOINT", sqs_endpoint())
            .env("AWS_REGION", var("AWS_REGION", "us-east-1"))
            .env("AWS_ACCESS_KEY_ID", var("AWS_ACCESS_KEY_ID", "local"))
            .env(
                "AWS_SECRET_ACCESS_KEY",
                var("AWS_SECRET_ACCESS_KEY", "local"),
            )
            .env("FEEDS_LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(file.try_clone().unwrap())
            .stderr(file);
        let mut trigger = Trigger {
            process: Stoppable::spawn(cmd).expect("feeds-server local-trigger"),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while trigger.settings().is_none() {
            if let Some(status) = trigger.process.exited() {
                panic!("local-trigger exited with {status}:\n{}", trigger.text());
            }
            assert!(
                Instant::now() < deadline,
                "local-trigger did not poll: {}",
                trigger.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        trigger
    }

    fn text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn lines(&self) -> Vec<Value> {
        self.text()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// What it logged when it began to poll: the queue's and the mapping's settings.
    pub fn settings(&self) -> Option<Value> {
        self.lines().into_iter().find(|l| l["message"] == "polling")
    }

    /// Every batch so far, in order.
    pub fn batches(&self) -> Vec<Batch> {
        let words = |v: &Value| -> Vec<String> {
            v.as_str()
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        };
        self.lines()
            .into_iter()
            .filter(|l| l["message"] == "batch delivered" || l["message"] == "batch failed")
            .map(|l| Batch {
                messages: words(&l["messages"])
                    .iter()
                    .map(|m| {
                        let (id, count) = m.rsplit_once(':').unwrap();
                        (id.to_owned(), count.parse().unwrap())
                    })
                    .collect(),
                answered: l["message"] == "batch delivered",
                failed: words(&l["failed"]),
                deleted: l["deleted"].as_u64().unwrap_or(0),
                error: l["error"].as_str().map(str::to_owned),
            })
            .collect()
    }
}
