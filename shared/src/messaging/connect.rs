//! Opening the broker connection with our own TLS configuration.
//!
//! `Connection::connect` would build its rustls configuration from `webpki-root-certs`:
//! Mozilla's roots as whole certificates, each parsed into a trust anchor on the first
//! `amqps://` connection, and a PKCS#12 client-identity path (x509-parser, PBES2, RC2, …)
//! that no function uses. Here the same roots come as ready trust anchors (`webpki-roots`,
//! as for every other HTTPS call) and the handshake goes straight to rustls, so the
//! binaries link neither: smaller, and nothing to parse when a function first publishes.

use std::sync::{Arc, LazyLock};

use lapin::tcp::AsyncTcpStream;
use lapin::uri::{AMQPScheme, AMQPUri};
use lapin::{Connection, ConnectionProperties};
use tcp_stream::RustlsConnector;

/// Amazon MQ presents an ACM certificate for its endpoint, which chains to an Amazon root:
/// one of the web roots. rustls checks the chain and the host name.
static TLS: LazyLock<Result<RustlsConnector, rustls::Error>> = LazyLock::new(|| {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(RustlsConnector::from(config))
});

/// Connects to `url` (`amqp://` or `amqps://`) as `Connection::connect` would, with the TLS
/// configuration above.
pub(super) async fn connect(url: &str) -> lapin::Result<Connection> {
    let uri: AMQPUri = url
        .parse()
        .map_err(|e: String| lapin::Error::from(std::io::Error::other(e)))?;
    let runtime = lapin::runtime::default_runtime()?;
    Connection::connector(
        uri,
        runtime,
        async |uri: AMQPUri, runtime| {
            let host = uri.authority.host.clone();
            let addrs = runtime.to_socket_addrs((host.clone(), uri.authority.port));
            let stream = AsyncTcpStream::connect(&runtime, addrs).await?;
            Ok(match uri.scheme {
                AMQPScheme::AMQP => stream,
                AMQPScheme::AMQPS => {
                    let tls = TLS.as_ref().map_err(|e| std::io::Error::other(e.clone()))?;
                    stream.into_rustls(tls, &host).await?
                }
            })
        },
        ConnectionProperties::default(),
    )
    .await
}
