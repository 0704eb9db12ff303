//! Certificates for one run: a CA, serving certificates for loopback, an admin client
//! certificate (group system:masters) with its kubeconfig, and a service-account signing key.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::{Error, io};

/// A certificate authority that signs the other certificates of a run.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(name: &str) -> Result<Self, Error> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.self_signed(&key)?.pem();
        Ok(Self {
            pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// A serving certificate for localhost and 127.0.0.1 (plus `extra` names): (cert, key) PEM.
    fn serving(&self, cn: &str, extra: &[&str]) -> Result<(String, String), Error> {
        let key = KeyPair::generate()?;
        let mut names = vec!["localhost".to_string()];
        names.extend(extra.iter().map(|s| s.to_string()));
        let mut params = CertificateParams::new(names)?;
        params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

fn write(dir: &Path, name: &str, contents: &str) -> Result<PathBuf, Error> {
    let path = dir.join(name);
    std::fs::write(&path, contents).map_err(io(format!("writing {}", path.display())))?;
    Ok(path)
}

/// The files of a TLS server on loopback and the CA that clients must trust.
pub struct TlsFiles {
    /// The CA certificate (PEM).
    pub ca: PathBuf,
    /// The server certificate (PEM).
    pub cert: PathBuf,
    /// The server key (PEM).
    pub key: PathBuf,
}

/// A fresh CA and a serving certificate for localhost / 127.0.0.1, written into `dir`.
pub fn tls_files(dir: &Path) -> Result<TlsFiles, Error> {
    let ca = Ca::new("usher-testenv-peer-ca")?;
    let (cert, key) = ca.serving("localhost", &[])?;
    Ok(TlsFiles {
        ca: write(dir, "ca.crt", &ca.pem)?,
        cert: write(dir, "server.crt", &cert)?,
        key: write(dir, "server.key", &key)?,
    })
}

pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// Generate everything and write `ca.crt`, `apiserver.{crt,key}`, `admin.{crt,key}` and
    /// `sa.{key,pub}` into `dir`.
    pub fn generate(dir: &Path) -> Result<Self, Error> {
        let ca = Ca::new("usher-testenv-ca")?;
        let (server_cert, server_key) = ca.serving(
            "kube-apiserver",
            &["kubernetes", "kubernetes.default", "kubernetes.default.svc"],
        )?;

        let admin_key = KeyPair::generate()?;
        let mut admin = CertificateParams::new(Vec::<String>::new())?;
        admin
            .distinguished_name
            .push(DnType::CommonName, "usher-testenv-admin");
        admin
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_cert = admin.signed_by(&admin_key, &ca.issuer)?;

        let sa_key = KeyPair::generate()?;
        write(dir, "ca.crt", &ca.pem)?;
        write(dir, "apiserver.crt", &server_cert)?;
        write(dir, "apiserver.key", &server_key)?;
        write(dir, "admin.crt", &admin_cert.pem())?;
        write(dir, "admin.key", &admin_key.serialize_pem())?;
        write(dir, "sa.key", &sa_key.serialize_pem())?;
        write(dir, "sa.pub", &sa_key.public_key_pem())?;
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// An admin kubeconfig for `server`, pointing at the files written into `dir`.
    pub fn kubeconfig(&self, server: &str) -> String {
        let p = |name: &str| self.dir.join(name).display().to_string();
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: usher-testenv\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\nusers:\n- name: admin\n  user:\n    client-certificate: {cert}\n    client-key: {key}\ncontexts:\n- name: usher-testenv\n  context:\n    cluster: usher-testenv\n    user: admin\n    namespace: default\ncurrent-context: usher-testenv\n",
            ca = p("ca.crt"),
            cert = p("admin.crt"),
            key = p("admin.key"),
        )
    }
}
