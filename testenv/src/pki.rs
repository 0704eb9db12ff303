//! Certificates for one run: a CA, the API server's serving certificate, an admin client
//! certificate (group system:masters), its kubeconfig and the service-account signing key.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::{Error, io};

pub struct Pki {
    dir: PathBuf,
}

impl Pki {
    /// Generate everything and write `ca.crt`, `apiserver.{crt,key}`, `sa.{key,pub}` into `dir`.
    pub fn generate(dir: &Path) -> Result<Self, Error> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "usher-testenv-ca");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate()?;
        let mut server = CertificateParams::new(vec![
            "localhost".to_string(),
            "kubernetes".to_string(),
            "kubernetes.default".to_string(),
            "kubernetes.default.svc".to_string(),
        ])?;
        server
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        server
            .subject_alt_names
            .push(SanType::IpAddress([10, 0, 0, 1].into()));
        server
            .distinguished_name
            .push(DnType::CommonName, "kube-apiserver");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let server_cert = server.signed_by(&server_key, &issuer)?;

        let admin_key = KeyPair::generate()?;
        let mut admin = CertificateParams::new(Vec::<String>::new())?;
        admin
            .distinguished_name
            .push(DnType::CommonName, "usher-testenv-admin");
        admin
            .distinguished_name
            .push(DnType::OrganizationName, "system:masters");
        admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let admin_cert = admin.signed_by(&admin_key, &issuer)?;

        let sa_key = KeyPair::generate()?;

        let write = |name: &str, contents: &str| {
            let path = dir.join(name);
            std::fs::write(&path, contents).map_err(io(format!("writing {}", path.display())))
        };
        write("ca.crt", &ca_cert.pem())?;
        write("apiserver.crt", &server_cert.pem())?;
        write("apiserver.key", &server_key.serialize_pem())?;
        write("sa.key", &sa_key.serialize_pem())?;
        write("sa.pub", &sa_key.public_key_pem())?;
        write("admin.crt", &admin_cert.pem())?;
        write("admin.key", &admin_key.serialize_pem())?;
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
