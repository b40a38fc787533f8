//! A minimal AWS Lambda Runtime API (the part a function's runtime client uses), served on a
//! local port so the real function binaries can be started and driven as Lambda would:
//! `GET /2018-06-01/runtime/invocation/next` hands out events, `…/{id}/response` and
//! `…/{id}/error` take results. It records when the first `next` arrives (the end of the
//! cold start) and, once its event source runs dry, holds `next` open so the process sits
//! idle as a frozen Lambda would, for its memory to be read.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// Gives the next event body, or `None` to hold the function idle from now on.
pub type EventSource = Box<dyn FnMut() -> Option<Vec<u8>> + Send>;

/// Judges a function's response body: `Err(reason)` counts it as a failed invocation.
pub type ResponseCheck = fn(&[u8]) -> Result<(), String>;

struct Shared {
    function: String,
    source: Mutex<EventSource>,
    check: ResponseCheck,
    first_next: Mutex<Option<Instant>>,
    first_next_seen: Notify,
    held: AtomicBool,
    held_seen: Notify,
    invocations: AtomicU64,
    failures: AtomicU64,
    first_failure: Mutex<Option<String>>,
}

pub struct RuntimeApi {
    pub address: SocketAddr,
    shared: Arc<Shared>,
    server: JoinHandle<()>,
}

/// What the function did while it was served.
#[derive(Debug, Clone, Default)]
pub struct Served {
    pub invocations: u64,
    pub failures: u64,
    pub first_failure: Option<String>,
}

impl RuntimeApi {
    pub async fn start(function: &str, source: EventSource, check: ResponseCheck) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a local port for the runtime API");
        let address = listener.local_addr().expect("runtime API address");
        let shared = Arc::new(Shared {
            function: function.to_owned(),
            source: Mutex::new(source),
            check,
            first_next: Mutex::new(None),
            first_next_seen: Notify::new(),
            held: AtomicBool::new(false),
            held_seen: Notify::new(),
            invocations: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            first_failure: Mutex::new(None),
        });
        let state = shared.clone();
        let server = tokio::spawn(async move {
            // Dropped with the server task, which aborts connections held in `next`.
            let mut connections = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                let _ = stream.set_nodelay(true);
                connections.spawn(serve_connection(stream, state.clone()));
            }
        });
        Self {
            address,
            shared,
            server,
        }
    }

    /// When the first `next` request arrived, waiting at most `timeout` for it.
    pub async fn first_next(&self, timeout: Duration) -> Option<Instant> {
        let wait = async {
            loop {
                let notified = self.shared.first_next_seen.notified();
                if let Some(at) = *self.shared.first_next.lock().expect("lock") {
                    return at;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.ok()
    }

    /// Waits until the event source ran dry and the function is idle in `next`.
    pub async fn held(&self, timeout: Duration) -> bool {
        let wait = async {
            loop {
                let notified = self.shared.held_seen.notified();
                if self.shared.held.load(Ordering::SeqCst) {
                    return;
                }
                notified.await;
            }
        };
        tokio::time::timeout(timeout, wait).await.is_ok()
    }

    pub fn served(&self) -> Served {
        Served {
            invocations: self.shared.invocations.load(Ordering::SeqCst),
            failures: self.shared.failures.load(Ordering::SeqCst),
            first_failure: self.shared.first_failure.lock().expect("lock").clone(),
        }
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

struct Request {
    method: String,
    path: String,
    body: Vec<u8>,
}

async fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut head = Vec::new();
    loop {
        let byte = reader.read_u8().await.ok()?;
        head.push(byte);
        if head.ends_with(b"\r\n\r\n") {
            break;
        }
        if head.len() > 64 * 1024 {
            return None;
        }
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let path = request_line.next()?.to_owned();
    let mut length = 0usize;
    let mut chunked = false;
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            let name = name.trim().to_ascii_lowercase();
            let value = value.trim();
            if name == "content-length" {
                length = value.parse().ok()?;
            } else if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
                chunked = true;
            }
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size_line = Vec::new();
            loop {
                let byte = reader.read_u8().await.ok()?;
                size_line.push(byte);
                if size_line.ends_with(b"\r\n") {
                    break;
                }
            }
            let size_text = String::from_utf8_lossy(&size_line);
            let size =
                usize::from_str_radix(size_text.trim().split(';').next()?.trim(), 16).ok()?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).await.ok()?;
            if size == 0 {
                // Trailers are not used by the runtime client; the chunk read the final CRLF.
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
    } else {
        body.resize(length, 0);
        reader.read_exact(&mut body).await.ok()?;
    }
    Some(Request { method, path, body })
}

async fn write_response(
    stream: &mut BufReader<TcpStream>,
    status: &str,
    headers: &[(&str, String)],
    body: &[u8],
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        head.push_str(name);
        head.push_str(": ");
        head.push_str(value);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    let stream = stream.get_mut();
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let mut stream = BufReader::new(stream);
    while let Some(request) = read_request(&mut stream).await {
        let path = request.path.as_str();
        let result = if request.method == "GET" && path == "/2018-06-01/runtime/invocation/next" {
            {
                let mut first = shared.first_next.lock().expect("lock");
                if first.is_none() {
                    *first = Some(Instant::now());
                    shared.first_next_seen.notify_waiters();
                }
            }
            let next = (shared.source.lock().expect("lock"))();
            match next {
                Some(event) => {
                    let deadline = chrono::Utc::now().timestamp_millis() + 120_000;
                    let headers = [
                        (
                            "lambda-runtime-aws-request-id",
                            uuid::Uuid::now_v7().to_string(),
                        ),
                        ("lambda-runtime-deadline-ms", deadline.to_string()),
                        (
                            "lambda-runtime-invoked-function-arn",
                            format!(
                                "arn:aws:lambda:eu-west-1:123456789012:function:{}",
                                shared.function
                            ),
                        ),
                        (
                            "lambda-runtime-trace-id",
                            "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=0".to_owned(),
                        ),
                    ];
                    write_response(&mut stream, "200 OK", &headers, &event).await
                }
                None => {
                    shared.held.store(true, Ordering::SeqCst);
                    shared.held_seen.notify_waiters();
                    std::future::pending::<()>().await;
                    Ok(())
                }
            }
        } else if request.method == "POST" && path.starts_with("/2018-06-01/runtime/") {
            if path.ends_with("/response") {
                shared.invocations.fetch_add(1, Ordering::SeqCst);
                if let Err(reason) = (shared.check)(&request.body) {
                    note_failure(&shared, reason);
                }
            } else {
                // `…/{id}/error` or `init/error`.
                shared.invocations.fetch_add(1, Ordering::SeqCst);
                note_failure(&shared, String::from_utf8_lossy(&request.body).into_owned());
            }
            write_response(&mut stream, "202 Accepted", &[], br#"{"status":"OK"}"#).await
        } else {
            write_response(&mut stream, "404 Not Found", &[], b"{}").await
        };
        if result.is_err() {
            return;
        }
    }
}

fn note_failure(shared: &Shared, reason: String) {
    shared.failures.fetch_add(1, Ordering::SeqCst);
    let mut first = shared.first_failure.lock().expect("lock");
    if first.is_none() {
        *first = Some(reason.chars().take(500).collect());
    }
}
