//! A throwaway certificate authority and a server certificate for
//! `127.0.0.1` and `localhost`, so that the demo, `lanyard sim` and tests
//! run over TLS as a deployment does: `lanyard serve --tls-cert --tls-key`,
//! and relays that trust the CA with `--ca-cert`.
//!
//! The CA's key is never written: nothing else can be signed with it once
//! the run ends. Not for production; a production server has a certificate
//! from a public CA (an ACME client's), which relays trust as they are.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use thiserror::Error;

#[derive(Debug, Error)]
pub enum DevTlsError {
    #[error("cannot make the throwaway certificates ({what}): {source}")]
    Make { what: &'static str, source: rcgen::Error },
    #[error("cannot write {path}: {source}; is the directory writable?")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Where [`make`] wrote the files.
pub struct DevTls {
    /// The CA's certificate, for the relays' `--ca-cert`.
    pub ca: PathBuf,
    /// The server's certificate (`--tls-cert`) and key (`--tls-key`).
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes a CA and a server certificate signed by it, in `dir`.
pub fn make(dir: &Path) -> Result<DevTls, DevTlsError> {
    std::fs::create_dir_all(dir).map_err(|source| DevTlsError::Write { path: dir.to_owned(), source })?;
    let fail = |what| move |source| DevTlsError::Make { what, source };
    let ca_key = KeyPair::generate().map_err(fail("the CA's key"))?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(fail("the CA's parameters"))?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "Lanyard throwaway CA");
    let ca = ca_params.self_signed(&ca_key).map_err(fail("the CA's signature"))?;
    let key = KeyPair::generate().map_err(fail("the server's key"))?;
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .map_err(fail("the server's parameters"))?;
    params.distinguished_name.push(DnType::CommonName, "lanyard serve (local)");
    let cert = params.signed_by(&key, &ca, &ca_key).map_err(fail("the server's certificate"))?;
    let out = DevTls { ca: dir.join("ca.pem"), cert: dir.join("server.pem"), key: dir.join("server-key.pem") };
    for (path, pem) in [(&out.ca, ca.pem()), (&out.cert, cert.pem()), (&out.key, key.serialize_pem())] {
        std::fs::write(path, pem).map_err(|source| DevTlsError::Write { path: path.clone(), source })?;
    }
    Ok(out)
}
