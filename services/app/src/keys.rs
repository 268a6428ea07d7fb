//! `citycredit keys generate`: every key and certificate the split deployment needs, one
//! directory per part holding exactly what that part may hold:
//!
//! | directory | files |
//! |---|---|
//! | `gateway/` | `ca.crt`, `client.crt` + `client.key` (mTLS to the services), `identity.key` (signs callers' identities) |
//! | `registry/` | `ca.crt`, `server.crt` + `server.key`, `gateway-identity.pub` |
//! | `ingestion/` | `ca.crt`, `server.crt` + `server.key`, `gateway-identity.pub`, `scoring-identity.pub` |
//! | `scoring/` | `ca.crt`, `server.crt` + `server.key`, `client.crt` + `client.key` (mTLS to ingestion), `identity.key` (its own), `gateway-identity.pub` |
//!
//! A private CA (ECDSA P-256) signs one server certificate per service (named `citycredit-<part>`,
//! plus the Kubernetes names of a namespace and any extra names asked for) and one client
//! certificate each for the gateway and scoring. The CA's private key is not written: nothing
//! needs it after this command, and a CA key on disk would let whoever reads it mint
//! certificates. To rotate or add names, run the command again and replace every part's keys.
//! Private keys are written readable by the owner only.

use std::io::Write;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use citycredit::auth::identity::{IdentitySigner, Issuer};

/// What to make.
#[derive(Clone, Debug)]
pub struct KeyOptions {
    /// The directory to create (it must not exist or be empty).
    pub out: PathBuf,
    /// Extra names every server certificate carries (DNS names or IP addresses, e.g.
    /// `127.0.0.1` when the parts run on one host).
    pub extra_names: Vec<String>,
    /// The Kubernetes namespace: adds `citycredit-<part>.<ns>.svc` and
    /// `citycredit-<part>.<ns>.svc.cluster.local`.
    pub namespace: Option<String>,
    /// How long the certificates are valid, in days.
    pub days: u32,
}

/// The services with a server certificate.
pub const SERVICES: [&str; 3] = ["registry", "ingestion", "scoring"];

/// Why the keys could not be made.
#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    #[error("{0} exists and is not empty: keys are never overwritten (choose another --out)")]
    NotEmpty(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("--days must be between 1 and 3650")]
    Days,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> KeysError + '_ {
    move |source| KeysError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `text` to `path`, readable by the owner only when `secret`.
fn write(path: &Path, text: &str, secret: bool) -> Result<(), KeysError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut file = options.open(path).map_err(io(path))?;
    file.write_all(text.as_bytes()).map_err(io(path))
}

fn validity(params: &mut CertificateParams, days: u32) {
    let now = time::OffsetDateTime::now_utc();
    // An hour back for clocks that lag.
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(i64::from(days));
}

/// Makes every file; returns the paths written.
pub fn generate(opts: &KeyOptions) -> Result<Vec<PathBuf>, KeysError> {
    if !(1..=3650).contains(&opts.days) {
        return Err(KeysError::Days);
    }
    let out = &opts.out;
    if out.exists() && std::fs::read_dir(out).map_err(io(out))?.next().is_some() {
        return Err(KeysError::NotEmpty(out.clone()));
    }
    std::fs::create_dir_all(out).map_err(io(out))?;
    let mut written = Vec::new();
    let mut put = |dir: &str, name: &str, text: &str, secret: bool| -> Result<(), KeysError> {
        let d = out.join(dir);
        if !d.exists() {
            std::fs::create_dir(&d).map_err(io(&d))?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700))
                    .map_err(io(&d))?;
            }
        }
        let path = d.join(name);
        write(&path, text, secret)?;
        written.push(path);
        Ok(())
    };

    // The CA.
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "citycredit internal CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut ca_params, opts.days);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
    let ca_pem = ca.pem();

    // A certificate for `names`, for servers or clients.
    let leaf = |names: Vec<String>, server: bool| -> Result<(String, String), KeysError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(names.clone())?;
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().cloned().unwrap_or_default(),
        );
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        validity(&mut params, opts.days);
        let cert = params.signed_by(&key, &ca)?;
        Ok((cert.pem(), key.serialize_pem()))
    };

    let gateway_identity = IdentitySigner::generate(Issuer::Gateway);
    let scoring_identity = IdentitySigner::generate(Issuer::Scoring);

    for part in ["gateway", "registry", "ingestion", "scoring"] {
        put(part, "ca.crt", &ca_pem, false)?;
    }
    for service in SERVICES {
        let mut names = vec![format!("citycredit-{service}")];
        if let Some(ns) = &opts.namespace {
            names.push(format!("citycredit-{service}.{ns}.svc"));
            names.push(format!("citycredit-{service}.{ns}.svc.cluster.local"));
        }
        names.extend(opts.extra_names.iter().cloned());
        let (cert, key) = leaf(names, true)?;
        put(service, "server.crt", &cert, false)?;
        put(service, "server.key", &key, true)?;
    }
    for client in ["gateway", "scoring"] {
        let (cert, key) = leaf(vec![format!("citycredit-{client}")], false)?;
        put(client, "client.crt", &cert, false)?;
        put(client, "client.key", &key, true)?;
    }
    put(
        "gateway",
        "identity.key",
        &gateway_identity.private_key_text(),
        true,
    )?;
    put(
        "scoring",
        "identity.key",
        &scoring_identity.private_key_text(),
        true,
    )?;
    for part in SERVICES {
        put(
            part,
            "gateway-identity.pub",
            &gateway_identity.public_key_text(),
            false,
        )?;
    }
    put(
        "ingestion",
        "scoring-identity.pub",
        &scoring_identity.public_key_text(),
        false,
    )?;
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_part_gets_exactly_its_keys_and_private_keys_stay_private() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let out = dir.path().join("keys");
        let opts = KeyOptions {
            out: out.clone(),
            extra_names: vec!["127.0.0.1".into()],
            namespace: Some("city".into()),
            days: 30,
        };
        let written = generate(&opts).unwrap_or_else(|e| panic!("{e}"));
        let mut listed: Vec<String> = written
            .iter()
            .filter_map(|p| p.strip_prefix(&out).ok())
            .map(|p| p.display().to_string())
            .collect();
        listed.sort();
        assert_eq!(
            listed,
            [
                "gateway/ca.crt",
                "gateway/client.crt",
                "gateway/client.key",
                "gateway/identity.key",
                "ingestion/ca.crt",
                "ingestion/gateway-identity.pub",
                "ingestion/scoring-identity.pub",
                "ingestion/server.crt",
                "ingestion/server.key",
                "registry/ca.crt",
                "registry/gateway-identity.pub",
                "registry/server.crt",
                "registry/server.key",
                "scoring/ca.crt",
                "scoring/client.crt",
                "scoring/client.key",
                "scoring/gateway-identity.pub",
                "scoring/identity.key",
                "scoring/server.crt",
                "scoring/server.key",
            ]
        );
        #[cfg(unix)]
        for p in &written {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(p)
                .map(|m| m.permissions().mode() & 0o777)
                .unwrap_or(0);
            let secret = p.extension().is_some_and(|e| e == "key");
            assert_eq!(mode, if secret { 0o600 } else { 0o644 }, "{}", p.display());
        }
        // The identity keys load, and the services' public key is the gateway's.
        let read = |p: &str| std::fs::read_to_string(out.join(p)).unwrap_or_default();
        let gateway = IdentitySigner::from_text(Issuer::Gateway, &read("gateway/identity.key"))
            .unwrap_or_else(|e| panic!("{e}"));
        let public =
            citycredit::auth::identity::parse_public_key(&read("registry/gateway-identity.pub"))
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(gateway.public_key(), public);
        // Never overwritten.
        assert!(matches!(generate(&opts), Err(KeysError::NotEmpty(_))));
    }
}
