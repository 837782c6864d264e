//! The cluster's PKI, kept in `<data-dir>/pki`: a CA made on first start (ten years), the API
//! server's serving certificate signed by it (one year, re-issued when less than
//! [`RENEW_BEFORE`] is left or when a name it must carry is missing), client certificates
//! issued on demand (CN = user, O = groups, as Kubernetes reads them) and the key that signs
//! ServiceAccount tokens. Private keys are written with mode 0600, the directory with 0700.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;

/// How long the CA is valid.
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// How long a serving certificate is valid.
pub const SERVING_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// A serving certificate with less than this left is re-issued (at start and by the rotation
/// task, which looks every hour).
pub const RENEW_BEFORE: Duration = Duration::from_secs(90 * 24 * 3600);
/// Certificates are valid from a little before they are made, for clocks slightly behind.
const BACKDATE: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a usable PEM {what}: {reason}")]
    Malformed {
        path: PathBuf,
        what: &'static str,
        reason: String,
    },
    #[error("making a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0}")]
    Invalid(String),
}

type Result<T, E = PkiError> = std::result::Result<T, E>;

/// A certificate (PEM, leaf first) and its private key (PEM, PKCS#8).
#[derive(Clone)]
pub struct CertAndKey {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CertAndKey {
    /// Never prints the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAndKey").finish_non_exhaustive()
    }
}

/// The cluster CA and the ServiceAccount signing key, loaded from (or made in) a directory.
pub struct Pki {
    dir: PathBuf,
    ca_cert_pem: String,
    ca_key_pem: String,
    sa_key_pem: String,
    sa_public_pem: String,
}

impl std::fmt::Debug for Pki {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pki").field("dir", &self.dir).finish()
    }
}

impl Pki {
    /// Loads the PKI in `dir`, making what is missing: the CA on first start, then the
    /// ServiceAccount key.
    pub fn load_or_create(dir: &Path) -> Result<Self> {
        create_private_dir(dir)?;
        let (ca_cert, ca_key) = (dir.join("ca.crt"), dir.join("ca.key"));
        let (ca_cert_pem, ca_key_pem) = if ca_cert.exists() && ca_key.exists() {
            (read(&ca_cert)?, read(&ca_key)?)
        } else {
            let key = KeyPair::generate()?;
            let mut params = CertificateParams::default();
            params.distinguished_name = name("shoal-ca", &[]);
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params.key_usages = vec![
                KeyUsagePurpose::KeyCertSign,
                KeyUsagePurpose::CrlSign,
                KeyUsagePurpose::DigitalSignature,
            ];
            validity(&mut params, CA_LIFETIME);
            let cert = params.self_signed(&key)?;
            write_private(&ca_key, &key.serialize_pem())?;
            write_public(&ca_cert, &cert.pem())?;
            (cert.pem(), key.serialize_pem())
        };
        KeyPair::from_pem(&ca_key_pem).map_err(|e| malformed(&ca_key, "private key", e))?;
        Issuer::from_ca_cert_pem(&ca_cert_pem, KeyPair::from_pem(&ca_key_pem)?)
            .map_err(|e| malformed(&ca_cert, "CA certificate", e))?;
        let sa_key = dir.join("sa.key");
        let sa_key_pem = if sa_key.exists() {
            read(&sa_key)?
        } else {
            let key = KeyPair::generate()?;
            write_private(&sa_key, &key.serialize_pem())?;
            key.serialize_pem()
        };
        let sa_public_pem = KeyPair::from_pem(&sa_key_pem)
            .map_err(|e| malformed(&sa_key, "private key", e))?
            .public_key_pem();
        Ok(Self {
            dir: dir.to_path_buf(),
            ca_cert_pem,
            ca_key_pem,
            sa_key_pem,
            sa_public_pem,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The CA certificate (PEM): what clients trust, and what signs client certificates.
    pub fn ca_pem(&self) -> &str {
        &self.ca_cert_pem
    }

    /// The ServiceAccount token signing key (PKCS#8 PEM, ECDSA P-256) and its public half.
    pub fn service_account_keys(&self) -> (&str, &str) {
        (&self.sa_key_pem, &self.sa_public_pem)
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>> {
        Ok(Issuer::from_ca_cert_pem(
            &self.ca_cert_pem,
            KeyPair::from_pem(&self.ca_key_pem)?,
        )?)
    }

    /// The API server's serving certificate for `names` (DNS names and IP addresses): the
    /// one on disk while it carries every name and has more than [`RENEW_BEFORE`] left at
    /// `now`, else a new one (written to disk).
    pub fn serving_certificate(&self, names: &[String], now: OffsetDateTime) -> Result<CertAndKey> {
        let (cert_path, key_path) = (
            self.dir.join("apiserver.crt"),
            self.dir.join("apiserver.key"),
        );
        if cert_path.exists() && key_path.exists() {
            let current = CertAndKey {
                cert_pem: read(&cert_path)?,
                key_pem: read(&key_path)?,
            };
            if let Ok(info) = CertificateInfo::parse(&current.cert_pem) {
                let fresh = info.not_after - now
                    > time::Duration::try_from(RENEW_BEFORE).unwrap_or(time::Duration::ZERO);
                if fresh && names.iter().all(|n| info.names.contains(n)) {
                    return Ok(current);
                }
            }
        }
        let issued = self.issue_serving(names, SERVING_LIFETIME, now)?;
        write_private(&key_path, &issued.key_pem)?;
        write_public(&cert_path, &issued.cert_pem)?;
        Ok(issued)
    }

    /// A serving certificate for `names`, valid for `lifetime` from `now` (not written).
    pub fn issue_serving(
        &self,
        names: &[String],
        lifetime: Duration,
        now: OffsetDateTime,
    ) -> Result<CertAndKey> {
        let mut params = CertificateParams::new(names.to_vec())?;
        params.distinguished_name = name("shoal-apiserver", &[]);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.not_before = now - BACKDATE;
        params.not_after = now + lifetime;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok(CertAndKey {
            cert_pem: format!("{}{}", cert.pem(), self.ca_cert_pem),
            key_pem: key.serialize_pem(),
        })
    }

    /// A client certificate for `user` in `groups`, valid for `ttl`.
    pub fn issue_client(&self, user: &str, groups: &[String], ttl: Duration) -> Result<CertAndKey> {
        if user.is_empty() {
            return Err(PkiError::Invalid(
                "a client certificate needs a user name".into(),
            ));
        }
        // rcgen writes one attribute per type in a subject: one O, so one group. More groups
        // come from bindings to the user, or from a ServiceAccount token.
        if groups.len() > 1 {
            return Err(PkiError::Invalid(format!(
                "a client certificate carries one group (O), not {}: bind the user to more roles instead",
                groups.len()
            )));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = name(user, groups);
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        validity(&mut params, ttl);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok(CertAndKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs a PEM certificate request as a certificate valid for `lifetime` from now, with
    /// the key usages named (Kubernetes' usage names: a client's `client auth`, a node
    /// gateway's `server auth`); the subject and alternative names are the request's, checked
    /// by the caller for the signer they were asked of. Returns the certificate (PEM).
    pub fn sign_request(
        &self,
        request_pem: &str,
        usages: &[String],
        lifetime: Duration,
    ) -> Result<String> {
        let mut request = rcgen::CertificateSigningRequestParams::from_pem(request_pem)
            .map_err(|e| PkiError::Invalid(format!("not a valid certificate request: {e}")))?;
        let params = &mut request.params;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages.clear();
        params.extended_key_usages.clear();
        for usage in usages {
            match usage.as_str() {
                "digital signature" => params.key_usages.push(KeyUsagePurpose::DigitalSignature),
                "key encipherment" => params.key_usages.push(KeyUsagePurpose::KeyEncipherment),
                "client auth" => params
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::ClientAuth),
                "server auth" => params
                    .extended_key_usages
                    .push(ExtendedKeyUsagePurpose::ServerAuth),
                other => {
                    return Err(PkiError::Invalid(format!(
                        "usage {other:?} is not one this cluster signs"
                    )))
                }
            }
        }
        // Backdated for clocks a little behind, but never by much of a short life: a client
        // renews at 70-90% of it, counted from notBefore.
        let now = OffsetDateTime::now_utc();
        params.not_before = now - BACKDATE.min(lifetime / 4);
        params.not_after = now + lifetime;
        let cert = request.signed_by(&self.issuer()?)?;
        Ok(cert.pem())
    }
}

/// What a PEM certificate signing request asks for (its signature checked).
#[derive(Debug)]
pub struct CsrInfo {
    pub common_name: String,
    pub organizations: Vec<String>,
    /// Subject alternative names.
    pub names: Vec<AltName>,
    /// Whether the request asks to be a CA.
    pub is_ca: bool,
}

impl CsrInfo {
    /// Reads and checks a PEM `CERTIFICATE REQUEST`: its self-signature must verify, and it
    /// may carry only extensions a certificate can take over.
    pub fn parse(pem: &str) -> Result<Self, String> {
        use x509_parser::prelude::FromDer;
        let request = rcgen::CertificateSigningRequestParams::from_pem(pem)
            .map_err(|e| format!("not a valid certificate request: {e}"))?;
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .map_err(|e| format!("not a PEM block: {e}"))?;
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&block.contents)
                .map_err(|e| format!("not a certificate request: {e}"))?;
        let subject = &csr.certification_request_info.subject;
        let text = |attr: &x509_parser::x509::AttributeTypeAndValue| {
            attr.as_str().map(str::to_string).map_err(|e| e.to_string())
        };
        let common_name = match subject.iter_common_name().next() {
            Some(cn) => text(cn)?,
            None => String::new(),
        };
        let organizations = subject
            .iter_organization()
            .map(text)
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            common_name,
            organizations,
            names: request
                .params
                .subject_alt_names
                .iter()
                .map(AltName::of)
                .collect(),
            is_ca: !matches!(request.params.is_ca, IsCa::NoCa | IsCa::ExplicitNoCa),
        })
    }
}

/// A subject alternative name of a certificate request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AltName {
    Dns(String),
    Ip(std::net::IpAddr),
    /// Any other kind (e-mail, URI, ...), as text.
    Other(String),
}

impl AltName {
    fn of(san: &rcgen::SanType) -> Self {
        match san {
            rcgen::SanType::DnsName(name) => Self::Dns(name.to_string()),
            rcgen::SanType::IpAddress(ip) => Self::Ip(*ip),
            other => Self::Other(format!("{other:?}")),
        }
    }
}

impl std::fmt::Display for AltName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dns(name) => write!(f, "DNS:{name}"),
            Self::Ip(ip) => write!(f, "IP:{ip}"),
            Self::Other(text) => f.write_str(text),
        }
    }
}

/// A new key and a PEM certificate request for `user` in `groups` (what a node sends to
/// join: CN `system:node:<name>`, O `system:nodes`). The key is PKCS#8 PEM.
pub fn certificate_request(user: &str, groups: &[String]) -> Result<(String, String)> {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(user, groups);
    let key = KeyPair::generate()?;
    let request = params.serialize_request(&key)?;
    Ok((request.pem()?, key.serialize_pem()))
}

/// The `sha256:<hex>` pin of a CA certificate (PEM or DER): the hash of its
/// SubjectPublicKeyInfo, as `kubeadm join --discovery-token-ca-cert-hash` takes it.
pub fn ca_cert_hash_der(der: &[u8]) -> Result<String, String> {
    use sha2::Digest;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
    let digest = sha2::Sha256::digest(cert.tbs_certificate.subject_pki.raw);
    Ok(format!("sha256:{}", hex::encode(digest)))
}

/// [`ca_cert_hash_der`] of the first certificate of a PEM text.
pub fn ca_cert_hash(pem: &str) -> Result<String, String> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
    ca_cert_hash_der(&block.contents)
}

/// What Shoal reads from a certificate.
#[derive(Debug)]
pub struct CertificateInfo {
    pub common_name: String,
    pub organizations: Vec<String>,
    /// Subject alternative names: DNS names and IP addresses as text.
    pub names: Vec<String>,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl CertificateInfo {
    /// Reads the first certificate of a PEM text.
    pub fn parse(pem: &str) -> Result<Self, String> {
        let (_, pem) =
            x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| e.to_string())?;
        Self::from_der(&pem.contents)
    }

    pub fn from_der(der: &[u8]) -> Result<Self, String> {
        use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};
        let (_, cert) = X509Certificate::from_der(der).map_err(|e| e.to_string())?;
        let text = |attr: &x509_parser::x509::AttributeTypeAndValue| {
            attr.as_str().map(str::to_string).map_err(|e| e.to_string())
        };
        let common_name = match cert.subject().iter_common_name().next() {
            Some(cn) => text(cn)?,
            None => String::new(),
        };
        let organizations = cert
            .subject()
            .iter_organization()
            .map(text)
            .collect::<Result<Vec<_>, _>>()?;
        let mut names = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => names.push(dns.to_string()),
                    GeneralName::IPAddress(bytes) => {
                        let ip = match bytes.len() {
                            4 => <[u8; 4]>::try_from(*bytes).map(std::net::IpAddr::from).ok(),
                            16 => <[u8; 16]>::try_from(*bytes)
                                .map(std::net::IpAddr::from)
                                .ok(),
                            _ => None,
                        };
                        names.extend(ip.map(|ip| ip.to_string()));
                    }
                    _ => {}
                }
            }
        }
        let not_after = cert.validity().not_after.to_datetime();
        Ok(Self {
            common_name,
            organizations,
            names,
            not_before: cert.validity().not_before.to_datetime(),
            not_after,
        })
    }
}

fn name(common_name: &str, organizations: &[String]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for organization in organizations {
        dn.push(DnType::OrganizationName, organization.as_str());
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

fn validity(params: &mut CertificateParams, lifetime: Duration) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + lifetime;
}

fn malformed(path: &Path, what: &'static str, error: impl std::fmt::Display) -> PkiError {
    PkiError::Malformed {
        path: path.to_path_buf(),
        what,
        reason: error.to_string(),
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).map_err(|source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(io_error(dir))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io_error(dir))?;
    }
    Ok(())
}

/// Writes `text` to `path` readable by its owner only (written to a temporary file first, so
/// a crash never leaves half a key).
pub fn write_private(path: &Path, text: &str) -> Result<()> {
    write_with_mode(path, text, 0o600)
}

fn write_public(path: &Path, text: &str) -> Result<()> {
    write_with_mode(path, text, 0o644)
}

fn write_with_mode(path: &Path, text: &str, mode: u32) -> Result<()> {
    let temporary = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut file = options.open(&temporary).map_err(io_error(&temporary))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error(&temporary))?;
    std::fs::rename(&temporary, path).map_err(io_error(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec![
            "localhost".into(),
            "127.0.0.1".into(),
            "kubernetes.default.svc".into(),
        ]
    }

    #[test]
    fn the_pki_is_made_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = Pki::load_or_create(dir.path()).unwrap();
        let serving = first
            .serving_certificate(&names(), OffsetDateTime::now_utc())
            .unwrap();
        let second = Pki::load_or_create(dir.path()).unwrap();
        assert_eq!(first.ca_pem(), second.ca_pem());
        assert_eq!(first.service_account_keys(), second.service_account_keys());
        let again = second
            .serving_certificate(&names(), OffsetDateTime::now_utc())
            .unwrap();
        assert_eq!(
            serving.cert_pem, again.cert_pem,
            "a fresh certificate is reused"
        );
        let info = CertificateInfo::parse(&again.cert_pem).unwrap();
        for name in names() {
            assert!(
                info.names.contains(&name),
                "{name} missing from {:?}",
                info.names
            );
        }
        #[cfg(unix)]
        for key in ["ca.key", "sa.key", "apiserver.key"] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
    }

    #[test]
    fn serving_certificates_are_reissued_before_expiry_and_for_new_names() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path()).unwrap();
        let now = OffsetDateTime::now_utc();
        let first = pki.serving_certificate(&names(), now).unwrap();
        // Seen from a day after the renewal point, the certificate is renewed.
        let later = now + (SERVING_LIFETIME - RENEW_BEFORE) + Duration::from_secs(86_400);
        let renewed = pki.serving_certificate(&names(), later).unwrap();
        assert_ne!(first.cert_pem, renewed.cert_pem);
        let info = CertificateInfo::parse(&renewed.cert_pem).unwrap();
        assert!(info.not_after > later + Duration::from_secs(300 * 86_400));
        // A new API address needs a new certificate.
        let mut more = names();
        more.push("10.1.2.3".into());
        let widened = pki.serving_certificate(&more, later).unwrap();
        assert_ne!(renewed.cert_pem, widened.cert_pem);
        assert!(CertificateInfo::parse(&widened.cert_pem)
            .unwrap()
            .names
            .contains(&"10.1.2.3".to_string()));
    }

    #[test]
    fn client_certificates_carry_user_and_groups() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path()).unwrap();
        let issued = pki
            .issue_client("alice", &["dev".into()], Duration::from_secs(3600))
            .unwrap();
        let info = CertificateInfo::parse(&issued.cert_pem).unwrap();
        assert_eq!(info.common_name, "alice");
        assert_eq!(info.organizations, vec!["dev".to_string()]);
        let two = pki.issue_client("bob", &["dev".into(), "ops".into()], Duration::from_secs(1));
        assert!(two.unwrap_err().to_string().contains("one group"));
        assert!(pki.issue_client("", &[], Duration::from_secs(1)).is_err());
    }

    /// Certificates made elsewhere (openssl, cfssl, kubeadm) may carry several O attributes:
    /// each is a group. rcgen writes one attribute per type, so the second O is written
    /// under its OID as a custom type: the same DER openssl writes for `/O=dev/O=ops`.
    #[test]
    fn every_organization_of_a_certificate_is_a_group() {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::load_or_create(dir.path()).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "dev");
        params
            .distinguished_name
            .push(DnType::CustomDnType(vec![2, 5, 4, 10]), "ops");
        params.distinguished_name.push(DnType::CommonName, "carol");
        let cert = params.signed_by(&key, &pki.issuer().unwrap()).unwrap();
        let info = CertificateInfo::parse(&cert.pem()).unwrap();
        assert_eq!(info.common_name, "carol");
        assert_eq!(
            info.organizations,
            vec!["dev".to_string(), "ops".to_string()]
        );
    }

    #[test]
    fn a_corrupt_key_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        Pki::load_or_create(dir.path()).unwrap();
        std::fs::write(dir.path().join("ca.key"), "not a key").unwrap();
        let error = Pki::load_or_create(dir.path()).unwrap_err().to_string();
        assert!(error.contains("ca.key"), "{error}");
    }
}
