//! The pool's TLS against a real PostgreSQL with TLS on, signed by a CA made for the test:
//! `sslmode=require` verifies the chain and the host name (libpq's `verify-full`), the
//! embedded roots (web and RDS) do not vouch for a private CA, and `DATABASE_CA_FILE` does.
//!
//! Each test starts its own throw-away server (initdb into a temporary directory as user
//! `postgres`, on a free port), which `Drop` stops and removes even when the test fails.

use std::error::Error;
use std::path::{Path, PathBuf};
use std::process::Command;

use shared::config::DatabaseConfig;
use shared::db::build_pool;
use shared::telemetry::error_chain;

/// A PostgreSQL server of its own with `ssl = on`, and the CA that signed its certificate
/// (for `localhost` only).
struct TlsPostgres {
    dir: PathBuf,
    port: u16,
}

impl TlsPostgres {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("oms-tls-{}", system_tests::unique_suffix()));
        std::fs::create_dir_all(&dir).unwrap();
        // From here on, Drop cleans up whatever got made.
        let server = Self {
            dir,
            port: free_port(),
        };
        server.make_certificates();
        run(Command::new("chown")
            .arg("-R")
            .arg("postgres:")
            .arg(&server.dir));
        run(as_postgres(&bin("initdb"))
            .args([
                "--auth=trust",
                "--username=postgres",
                "--no-sync",
                "--pgdata",
            ])
            .arg(server.data()));
        for file in ["server.pem", "server.key"] {
            let target = server.data().join(file);
            std::fs::copy(server.dir.join(file), &target).unwrap();
            run(Command::new("chown").arg("postgres:").arg(&target));
        }
        run(Command::new("chmod")
            .arg("600")
            .arg(server.data().join("server.key")));
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c ssl=on \
             -c ssl_cert_file=server.pem -c ssl_key_file=server.key",
            server.port,
            server.dir.display()
        );
        run(as_postgres(&bin("pg_ctl"))
            .arg("--pgdata")
            .arg(server.data())
            .arg("--log")
            .arg(server.dir.join("server.log"))
            .args(["--wait", "--options", &options, "start"]));
        server
    }

    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A test CA, and a server certificate it signs for the name `localhost` (no IP address,
    /// so reaching the same server by another name is refused).
    fn make_certificates(&self) {
        let openssl = |args: &[&str]| {
            run(Command::new("openssl").current_dir(&self.dir).args(args));
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=oms TLS test CA",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ]);
        std::fs::write(
            self.dir.join("server.ext"),
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n\
             extendedKeyUsage=serverAuth\nsubjectAltName=DNS:localhost\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ]);
    }

    /// The pool a function would build for this server under the name `host` (the TCP
    /// connection always goes to 127.0.0.1; the name is what the certificate must match).
    fn pool(&self, host: &str, ca_file: Option<PathBuf>) -> deadpool_postgres::Pool {
        let url = format!(
            "postgres://postgres@{host}:{}/postgres?sslmode=require&hostaddr=127.0.0.1",
            self.port
        );
        let mut config = DatabaseConfig::from_url(&url).unwrap();
        config.ca_file = ca_file;
        build_pool(&config).unwrap()
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        if self.data().join("postmaster.pid").exists() {
            let _ = as_postgres(&bin("pg_ctl"))
                .arg("--pgdata")
                .arg(self.data())
                .args(["--mode=immediate", "--wait", "stop"])
                .stdout(std::process::Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A PostgreSQL server binary: `TEST_PG_BINDIR`, or the newest under /usr/lib/postgresql.
fn bin(name: &str) -> PathBuf {
    if let Ok(dir) = std::env::var("TEST_PG_BINDIR") {
        return Path::new(&dir).join(name);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .expect("PostgreSQL server binaries under /usr/lib/postgresql (or TEST_PG_BINDIR)")
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let version = path.file_name()?.to_str()?.parse().ok()?;
            Some((version, path.join("bin")))
        })
        .collect();
    versions.sort();
    versions.pop().expect("a PostgreSQL version").1.join(name)
}

/// The server refuses to run as root: its tools run as the `postgres` user.
fn as_postgres(program: &Path) -> Command {
    let mut command = Command::new("runuser");
    command.args(["-u", "postgres", "--"]).arg(program);
    command
}

fn run(command: &mut Command) {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The certificate error rustls refused the handshake with, wherever it sits in the chain
/// (tokio-rustls carries it inside an `io::Error`).
fn certificate_error(error: &(dyn Error + 'static)) -> Option<rustls::CertificateError> {
    let mut next = Some(error);
    while let Some(error) = next {
        let inner = error
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        if let Some(rustls::Error::InvalidCertificate(certificate)) = inner {
            return Some(certificate.clone());
        }
        next = error.source();
    }
    None
}

#[tokio::test]
async fn a_server_signed_by_the_ca_file_is_trusted_under_its_name() {
    let server = TlsPostgres::start();
    let pool = server.pool("localhost", Some(server.ca_file()));

    let client = pool.get().await.unwrap();
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl, "the session is not encrypted");
}

#[tokio::test]
async fn without_the_ca_file_the_web_and_rds_roots_refuse_a_private_ca() {
    let server = TlsPostgres::start();
    let pool = server.pool("localhost", None);

    let refused = pool.get().await.unwrap_err();
    assert_eq!(
        certificate_error(&refused),
        Some(rustls::CertificateError::UnknownIssuer),
        "{}",
        error_chain(&refused)
    );
    assert!(
        error_chain(&refused).contains("invalid peer certificate: UnknownIssuer"),
        "the log would not say why: {}",
        error_chain(&refused)
    );
}

#[tokio::test]
async fn a_trusted_certificate_for_another_name_is_refused() {
    let server = TlsPostgres::start();
    // Same server, same trusted CA, but reached as a name its certificate does not carry.
    let pool = server.pool("db.example.test", Some(server.ca_file()));

    let refused = pool.get().await.unwrap_err();
    assert!(
        matches!(
            certificate_error(&refused),
            Some(
                rustls::CertificateError::NotValidForName
                    | rustls::CertificateError::NotValidForNameContext { .. }
            )
        ),
        "{}",
        error_chain(&refused)
    );
}

/// `openssl s_server` with the test server's certificate: a TLS endpoint that is not a
/// broker, enough to see what the broker connection's handshake accepts.
struct TlsEndpoint {
    child: std::process::Child,
    port: u16,
}

impl TlsEndpoint {
    fn start(certificates: &TlsPostgres) -> Self {
        let port = free_port();
        let child = Command::new("openssl")
            .current_dir(&certificates.dir)
            .args([
                "s_server",
                "-quiet",
                "-cert",
                "server.pem",
                "-key",
                "server.key",
            ])
            .args(["-accept", &format!("127.0.0.1:{port}")])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let endpoint = Self { child, port };
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        endpoint
    }
}

impl Drop for TlsEndpoint {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
async fn the_broker_connection_refuses_a_certificate_no_web_root_vouches_for() {
    let certificates = TlsPostgres::start();
    let endpoint = TlsEndpoint::start(&certificates);
    let broker = shared::messaging::Broker::new(shared::config::BrokerConfig {
        url: format!("amqps://guest:guest@localhost:{}/%2f", endpoint.port),
        exchange: "unused".into(),
        queue_prefix: "unused.".into(),
        retry_delays: Vec::new(),
        queue_type: shared::config::QueueType::Classic,
    });

    let refused = broker.channel().await.unwrap_err();
    assert!(
        error_chain(&refused).contains("invalid peer certificate: UnknownIssuer"),
        "{}",
        error_chain(&refused)
    );
}
