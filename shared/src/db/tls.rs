//! What a PostgreSQL connection trusts: the server must present a certificate that chains
//! to one of these roots *and* names the host connected to. rustls checks both on every
//! handshake, so `sslmode=require` here means what libpq calls `verify-full`; there is no
//! mode that encrypts without verifying.
//!
//! - **Amazon's RDS CAs**, every region's (`certs/rds-global-bundle.pem`, turned into trust
//!   anchors by `build.rs`): an RDS instance's certificate chains to the `Amazon RDS
//!   <region> Root CA …` of its CA, not to a web root, and names the instance endpoint.
//! - **The web roots** (`webpki-roots`, Mozilla's list): RDS Proxy presents an ACM
//!   certificate for its endpoint (`*.proxy-….rds.amazonaws.com`), which chains to Amazon
//!   Root CA 1, one of them.
//! - **`DATABASE_CA_FILE`**, when set: PEM certificates trusted besides both, for a server
//!   whose CA is neither (a self-managed PostgreSQL, a test CA). It extends, never replaces.
//!
//! The embedded roots are borrowed from static tables: building the connector parses
//! nothing unless `DATABASE_CA_FILE` is set.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, TrustAnchor};

use crate::config::ConfigError;

include!(concat!(env!("OUT_DIR"), "/rds_roots.rs"));

/// The TLS connector of the pool: ring, TLS 1.2 and 1.3, the roots above.
pub(super) fn connector(
    ca_file: Option<&Path>,
) -> Result<tokio_postgres_rustls::MakeRustlsConnect, ConfigError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError::Malformed {
            name: "DATABASE_URL",
            reason: e.to_string(),
        })?
        .with_root_certificates(roots(ca_file)?)
        .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(tls))
}

fn roots(ca_file: Option<&Path>) -> Result<rustls::RootCertStore, ConfigError> {
    let malformed = |reason: String| ConfigError::Malformed {
        name: "DATABASE_CA_FILE",
        reason,
    };
    let embedded: &[&[TrustAnchor<'static>]] = &[webpki_roots::TLS_SERVER_ROOTS, RDS_ROOTS];
    let mut roots = rustls::RootCertStore {
        roots: embedded.concat(),
    };
    if let Some(path) = ca_file {
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| malformed(e.to_string()))?;
        let mut added = 0;
        for cert in certs {
            let cert = cert.map_err(|e| malformed(e.to_string()))?;
            roots.add(cert).map_err(|e| malformed(e.to_string()))?;
            added += 1;
        }
        // An empty file would silently trust nothing more: say so at start, not as an
        // UnknownIssuer on every connection.
        if added == 0 {
            return Err(malformed(format!(
                "{} holds no certificate",
                path.display()
            )));
        }
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BUNDLE: &str = include_str!("../../certs/rds-global-bundle.pem");

    fn bundle() -> Vec<CertificateDer<'static>> {
        CertificateDer::pem_slice_iter(BUNDLE.as_bytes())
            .collect::<Result<_, _>>()
            .unwrap()
    }

    fn common_name(cert: &CertificateDer<'_>) -> String {
        use x509_cert::der::Decode;
        // RFC 4514 form, e.g. `CN=Amazon RDS us-east-1 Root CA RSA2048 G1,L=Seattle,…`.
        let subject = x509_cert::Certificate::from_der(cert)
            .unwrap()
            .tbs_certificate
            .subject
            .to_string();
        subject
            .split(',')
            .find_map(|part| part.strip_prefix("CN="))
            .unwrap()
            .to_owned()
    }

    #[test]
    fn the_embedded_bundle_has_every_regions_rsa2048_root() {
        let mut regions: Vec<String> = bundle()
            .iter()
            .map(common_name)
            .filter_map(|cn| {
                let region = cn
                    .strip_prefix("Amazon RDS ")?
                    .strip_suffix(" Root CA RSA2048 G1")?;
                (!region.contains(' ')).then(|| region.to_owned())
            })
            .collect();
        regions.sort();
        assert_eq!(
            regions,
            [
                "af-south-1",
                "ap-east-1",
                "ap-northeast-1",
                "ap-northeast-2",
                "ap-northeast-3",
                "ap-south-1",
                "ap-south-2",
                "ap-southeast-1",
                "ap-southeast-2",
                "ap-southeast-3",
                "ap-southeast-4",
                "ap-southeast-5",
                "ap-southeast-7",
                "ca-central-1",
                "ca-west-1",
                "eu-central-1",
                "eu-central-2",
                "eu-north-1",
                "eu-south-1",
                "eu-south-2",
                "eu-west-1",
                "eu-west-2",
                "eu-west-3",
                "il-central-1",
                "me-central-1",
                "me-south-1",
                "mx-central-1",
                "sa-east-1",
                "us-east-1",
                "us-east-2",
                "us-west-1",
                "us-west-2",
            ]
        );
    }

    #[test]
    fn every_certificate_of_the_bundle_is_an_embedded_anchor_as_rustls_would_build_it() {
        let mut parsed = rustls::RootCertStore::empty();
        let (added, ignored) = parsed.add_parsable_certificates(bundle());
        assert_eq!((added, ignored), (102, 0));
        assert_eq!(parsed.roots, RDS_ROOTS);
    }

    #[test]
    fn the_pool_trusts_the_web_roots_and_the_rds_roots() {
        let roots = roots(None).unwrap();
        assert_eq!(
            roots.len(),
            webpki_roots::TLS_SERVER_ROOTS.len() + RDS_ROOTS.len()
        );
        let subjects: Vec<_> = roots.roots.iter().map(|a| a.subject.as_ref()).collect();
        for anchor in RDS_ROOTS.iter().chain(webpki_roots::TLS_SERVER_ROOTS) {
            assert!(subjects.contains(&anchor.subject.as_ref()));
        }
    }

    #[test]
    fn a_ca_file_extends_the_roots_and_an_empty_one_is_refused() {
        let dir = std::env::temp_dir().join(format!("oms-ca-file-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let one = dir.join("one.pem");
        const END: &str = "-----END CERTIFICATE-----";
        let first = &BUNDLE[..BUNDLE.find(END).unwrap() + END.len()];
        std::fs::write(&one, first).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "").unwrap();

        let extended = roots(Some(&one)).unwrap();
        let empty_refused = roots(Some(&empty)).unwrap_err();
        let missing_refused = roots(Some(&dir.join("missing.pem"))).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();

        assert_eq!(extended.len(), roots(None).unwrap().len() + 1);
        for refused in [empty_refused, missing_refused] {
            assert!(
                matches!(
                    refused,
                    ConfigError::Malformed {
                        name: "DATABASE_CA_FILE",
                        ..
                    }
                ),
                "{refused:?}"
            );
        }
    }
}
