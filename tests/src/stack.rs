//! The whole system as `make dev` runs it, started by a test: the `local-stack` binary
//! (gateway, event source mapping, relay schedule) over the real function binaries under
//! `cargo lambda watch`, on free ports, a database and broker names of the test's own. Its
//! gateway checks bearer tokens against the checkout's key (`.local-auth/`), which the tests
//! sign theirs with, as `scripts/dev-token.sh` does.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use local_stack::auth::{LocalKey, TokenRequest};
use serde_json::Value;

use crate::{TestBroker, TestDb};

/// How long building and starting the stack may take: a cold build of every function on
/// two cores is several minutes.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(25 * 60);

pub struct LocalStack {
    pub db: TestDb,
    pub broker: TestBroker,
    /// `http://127.0.0.1:<port>` of the gateway.
    pub base_url: String,
    pub invoke_port: u16,
    /// Everything the stack printed, for the failure message.
    pub log_path: PathBuf,
    /// The key the gateway verifies tokens against.
    pub key: LocalKey,
    /// What `get`, `post` and `patch` send: a staff token.
    pub staff_token: String,
    child: Option<Child>,
}

/// The workspace root (this crate's parent).
fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from(".."), Path::to_path_buf)
}

/// The target directory this test binary was built in (`<target>/debug/deps/<test>`), so
/// that the stack and its functions reuse everything `cargo test` already built.
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// A command running cargo without the variables `cargo test` set for this test (its
/// package name, manifest folder, …): build scripts such as ring's watch them, and a nested
/// build seeing them would rebuild those crates instead of reusing what is built.
fn cargo_free_command(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars() {
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || matches!(
                name.as_str(),
                "CARGO_CRATE_NAME"
                    | "CARGO_BIN_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "OUT_DIR"
            )
        {
            command.env_remove(name);
        }
    }
    command
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// A port nobody listens on right now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

impl LocalStack {
    /// Builds and starts the stack and waits for its ready line.
    pub async fn start() -> Self {
        let db = TestDb::with_pool_size(2).await;
        let broker = TestBroker::new().await;
        let root = workspace_root();
        let target = target_dir();
        // From the workspace root, like `scripts/dev.sh` and like the emulator's own
        // `cargo run --bin <function>`: one package selection, so one build serves all.
        let status = cargo_free_command(cargo())
            .args(["build", "--bin", "local-stack", "--bin", "dev-token"])
            .current_dir(&root)
            .env("CARGO_TARGET_DIR", &target)
            .status()
            .expect("cargo runs");
        assert!(status.success(), "cargo build --bin local-stack failed");
        // The stack's default key folder: the one scripts/dev-token.sh signs with too.
        let key = LocalKey::load_or_create(&root.join(local_stack::auth::KEY_DIR))
            .expect("the local issuer's key");
        let staff_token = TokenRequest::staff(&format!("staff-{}", crate::unique_suffix()))
            .issue(&key)
            .expect("a staff token");

        let invoke_port = free_port();
        let log_path = target
            .join("tmp")
            .join(format!("local-stack-{}.log", crate::unique_suffix()));
        if let Some(parent) = log_path.parent() {
            std::fs::create_dir_all(parent).expect("log folder");
        }
        let mut child = cargo_free_command(target.join("debug").join("local-stack"))
            .args(["--port", "0", "--invoke-port"])
            .arg(invoke_port.to_string())
            .arg("--template")
            .arg(root.join("template.yaml"))
            .args(["--no-reload", "--relay-every", "1"])
            .current_dir(&root)
            .env("CARGO_TARGET_DIR", &target)
            .env("DATABASE_URL", &db.app_url)
            .env("DATABASE_MULTIPLEXED", db.multiplexed.to_string())
            .env("DATABASE_POOL_SIZE", "2")
            .env("AMQP_URL", &broker.config.url)
            .env("AMQP_EXCHANGE", &broker.config.exchange)
            .env("AMQP_QUEUE_PREFIX", &broker.config.queue_prefix)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("local-stack starts");

        // Both streams go to the log file; the ready line also comes back here.
        let (ready_tx, ready_rx) = mpsc::channel::<String>();
        let log = std::fs::File::create(&log_path).expect("log file");
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let mut log_out = log.try_clone().expect("log file");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = writeln!(log_out, "{line}");
                if let Some(url) = line.strip_prefix("API ready on ") {
                    let _ = ready_tx.send(url.trim().to_owned());
                }
            }
        });
        let mut log_err = log;
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(log_err, "{line}");
            }
        });

        let started = Instant::now();
        let base_url = loop {
            match ready_rx.recv_timeout(Duration::from_millis(500)) {
                Ok(url) => break url,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        panic!("local-stack exited with {status}\n{}", tail(&log_path));
                    }
                    if started.elapsed() > STARTUP_TIMEOUT {
                        let _ = child.kill();
                        panic!(
                            "local-stack not ready after {STARTUP_TIMEOUT:?}\n{}",
                            tail(&log_path)
                        );
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let status = child.wait().ok();
                    panic!(
                        "local-stack closed its output ({status:?})\n{}",
                        tail(&log_path)
                    );
                }
            }
        };
        eprintln!(
            "local stack ready on {base_url} after {:.1}s (log: {})",
            started.elapsed().as_secs_f64(),
            log_path.display()
        );
        Self {
            db,
            broker,
            base_url,
            invoke_port,
            log_path,
            key,
            staff_token,
            child: Some(child),
        }
    }

    /// A token of the local issuer.
    pub fn token(&self, request: &TokenRequest) -> String {
        request.issue(&self.key).expect("a token")
    }

    /// Runs a bash script in the workspace root, with `cargo` free of this test's variables
    /// (as the stack itself runs), and returns what it did.
    pub fn run_bash(&self, script: &str) -> std::process::Output {
        cargo_free_command("bash")
            .args(["-euo", "pipefail", "-c", script])
            .current_dir(workspace_root())
            .env("CARGO_TARGET_DIR", target_dir())
            .stdin(Stdio::null())
            .output()
            .expect("bash runs")
    }

    /// The end of the stack's log, for assertion messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log_path)
    }

    /// One HTTP/1.1 request to the gateway as staff; the status and the JSON body (`Null`
    /// if none).
    pub async fn request(&self, method: &str, path: &str, body: Option<&Value>) -> HttpResponse {
        let authorization = format!("Bearer {}", self.staff_token);
        self.request_with(method, path, body, Some(&authorization))
            .await
    }

    /// One HTTP/1.1 request with this `Authorization` header, or none.
    pub async fn request_with(
        &self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        authorization: Option<&str>,
    ) -> HttpResponse {
        let url = self.base_url.clone();
        let method = method.to_owned();
        let path = path.to_owned();
        let body = body.map(Value::to_string);
        let authorization = authorization.map(str::to_owned);
        tokio::task::spawn_blocking(move || {
            http(
                &url,
                &method,
                &path,
                body.as_deref(),
                authorization.as_deref(),
            )
        })
        .await
        .expect("the request thread")
    }

    pub async fn get(&self, path: &str) -> HttpResponse {
        self.request("GET", path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> HttpResponse {
        self.request("POST", path, Some(&body)).await
    }

    pub async fn patch(&self, path: &str, body: Value) -> HttpResponse {
        self.request("PATCH", path, Some(&body)).await
    }

    /// Has RabbitMQ close the event source mapping's connection, as a broker restart does
    /// (`CONNECTION_FORCED`). False when `rabbitmqctl` cannot do it (broker elsewhere).
    pub fn force_close_mapping_connection(&self) -> bool {
        // The name local-stack gives the connection (devtools/local-stack/src/mapping.rs).
        let name = format!(
            "local-stack event source mapping for {}",
            self.broker.topology.queue
        );
        let Ok(listing) = Command::new("rabbitmqctl")
            .args(["list_connections", "-q", "pid", "client_properties"])
            .output()
        else {
            return false;
        };
        let listing = String::from_utf8_lossy(&listing.stdout);
        let Some(pid) = listing
            .lines()
            .find(|line| line.contains(&name))
            .and_then(|line| line.split('\t').next())
        else {
            return false;
        };
        Command::new("rabbitmqctl")
            .args(["close_connection", pid, "broker restart (test)"])
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Stops the stack as Ctrl-C would (SIGTERM) and returns whether it exited cleanly
    /// within `within`.
    pub fn stop(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < within {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
        None
    }
}

impl Drop for LocalStack {
    fn drop(&mut self) {
        // Stop the stack before the database and queues it uses are dropped.
        self.stop(Duration::from_secs(15));
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(80);
    format!(
        "--- {} (last lines) ---\n{}",
        path.display(),
        lines[start..].join("\n")
    )
}

#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased, in the order received.
    pub headers: Vec<(String, String)>,
    pub body: Value,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 client: one request per connection, `Connection: close`.
fn http(
    base_url: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
    authorization: Option<&str>,
) -> HttpResponse {
    let authority = base_url.trim_start_matches("http://");
    let mut stream = TcpStream::connect(authority).expect("connect to the gateway");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let body = body.unwrap_or_default();
    let content_type = if body.is_empty() {
        String::new()
    } else {
        "content-type: application/json\r\n".to_owned()
    };
    let authorization = authorization
        .map(|value| format!("authorization: {value}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nhost: {authority}\r\nuser-agent: system-tests\r\naccept: application/json\r\n{authorization}{content_type}content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send the request");
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).expect("read the response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete response head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let payload = &raw[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = if payload.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(payload)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(payload).into_owned()))
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}
