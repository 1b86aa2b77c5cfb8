//! Reading private keys from PEM, and telling what they are.
//!
//! Both providers sign JWTs with a key read from a file an operator
//! downloaded: APNs an EC P-256 key, FCM an RSA key, both PKCS#8 PEM. A wrong
//! file is a common mistake (the APNs `.p12` certificate instead of the `.p8`
//! key, an `openssl ecparam` SEC1 key, the wrong curve), so the key is parsed
//! here, before signing, and a wrong one is named in the error.

use std::fmt;

use pkcs8::der::Decode;
use pkcs8::{ObjectIdentifier, PrivateKeyInfo, SecretDocument};

const OID_EC_PUBLIC_KEY: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.2.1");
const OID_P256: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.10045.3.1.7");
const OID_P384: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.132.0.34");
const OID_RSA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");
const OID_ED25519: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.101.112");

/// What a PKCS#8 key is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyKind {
    EcP256,
    /// An EC key on another curve, by the curve's OID.
    EcOther(String),
    Rsa,
    Ed25519,
    /// Another algorithm, by its OID.
    Other(String),
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyKind::EcP256 => f.write_str("an EC P-256 key"),
            KeyKind::EcOther(curve) if curve == &OID_P384.to_string() => f.write_str("an EC P-384 key"),
            KeyKind::EcOther(curve) => write!(f, "an EC key on curve {curve}"),
            KeyKind::Rsa => f.write_str("an RSA key"),
            KeyKind::Ed25519 => f.write_str("an Ed25519 key"),
            KeyKind::Other(oid) => write!(f, "a key of algorithm {oid}"),
        }
    }
}

/// The DER of the unencrypted PKCS#8 key in `pem`, or what is wrong with it.
pub(crate) fn pkcs8_der(pem: &str) -> Result<Vec<u8>, String> {
    let pem = pem.trim();
    if !pem.starts_with("-----BEGIN ") {
        return Err("it is not a PEM file (it should start with -----BEGIN PRIVATE KEY-----)".into());
    }
    let (label, doc) = SecretDocument::from_pem(pem).map_err(|e| format!("it is not valid PEM: {e}"))?;
    match label {
        "PRIVATE KEY" => {}
        "EC PRIVATE KEY" => {
            return Err("it is a SEC1 EC key (BEGIN EC PRIVATE KEY), not PKCS#8; convert it with `openssl pkcs8 -topk8 -nocrypt -in key.pem -out key.p8`".into());
        }
        "RSA PRIVATE KEY" => {
            return Err("it is a PKCS#1 RSA key (BEGIN RSA PRIVATE KEY), not PKCS#8; convert it with `openssl pkcs8 -topk8 -nocrypt -in key.pem -out key.p8`".into());
        }
        "ENCRYPTED PRIVATE KEY" => {
            return Err(
                "it is encrypted; decrypt it with `openssl pkcs8 -in key.pem -out key.p8` (keys from Apple and Google are not encrypted)"
                    .into(),
            );
        }
        "CERTIFICATE" => return Err("it is a certificate, not a private key".into()),
        other => return Err(format!("it is a PEM {other:?}, not a PRIVATE KEY")),
    }
    PrivateKeyInfo::from_der(doc.as_bytes()).map_err(|e| format!("it is not a PKCS#8 private key: {e}"))?;
    Ok(doc.as_bytes().to_vec())
}

/// What the PKCS#8 key `der` is; `der` has passed [`pkcs8_der`].
pub(crate) fn classify(der: &[u8]) -> KeyKind {
    let Ok(info) = PrivateKeyInfo::from_der(der) else {
        return KeyKind::Other("unparseable".into());
    };
    let oid = info.algorithm.oid;
    if oid == OID_EC_PUBLIC_KEY {
        match info.algorithm.parameters_oid() {
            Ok(curve) if curve == OID_P256 => KeyKind::EcP256,
            Ok(curve) => KeyKind::EcOther(curve.to_string()),
            Err(_) => KeyKind::EcOther("unknown".into()),
        }
    } else if oid == OID_RSA {
        KeyKind::Rsa
    } else if oid == OID_ED25519 {
        KeyKind::Ed25519
    } else {
        KeyKind::Other(oid.to_string())
    }
}
