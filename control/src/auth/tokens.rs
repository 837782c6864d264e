//! Bearer tokens the server understands: ServiceAccount tokens (JWTs signed ES256 by the
//! cluster's key, with Kubernetes' claims, verified offline) and bootstrap tokens
//! (`[a-z0-9]{6}.[a-z0-9]{16}`, whose secret half lives in a `kube-system` Secret).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// The issuer and default audience of ServiceAccount tokens, as kube-apiserver's default.
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The longest a requested token may live, and the default (Kubernetes': 1 h default,
/// `--service-account-max-token-expiration` unset).
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(3600);
pub const MAX_TOKEN_TTL: Duration = Duration::from_secs(48 * 3600);
/// The shortest a requested token may live (Kubernetes: 10 minutes).
pub const MIN_TOKEN_TTL: Duration = Duration::from_secs(600);

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("invalid bearer token: {0}")]
    Invalid(String),
    #[error("the ServiceAccount signing key is unusable: {0}")]
    Key(String),
}

/// What a ServiceAccount token is bound to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectRef {
    pub name: String,
    pub uid: String,
}

/// The `kubernetes.io` claim.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesClaim {
    pub namespace: String,
    pub serviceaccount: ObjectRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<ObjectRef>,
}

/// The issuer of dashboard session tokens: never the ServiceAccount issuer, so that no
/// TokenRequest (whose issuer is always [`ISSUER`], whatever audience it asks) passes for one.
pub const SESSION_ISSUER: &str = "shoal.dev/dashboard";
pub const SESSION_AUDIENCE: &str = "shoal.dev/dashboard";
/// How long a dashboard session lasts by default, and at most.
pub const DEFAULT_SESSION_TTL: Duration = Duration::from_secs(3600);
pub const MAX_SESSION_TTL: Duration = Duration::from_secs(24 * 3600);

/// The claims every token of this cluster carries (RFC 7519's registered ones).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisteredClaims {
    pub iss: String,
    pub sub: String,
    pub aud: Vec<String>,
    pub exp: u64,
    pub iat: u64,
    pub nbf: u64,
}

impl RegisteredClaims {
    /// Claims valid `ttl` from now; also when they expire.
    fn new(
        issuer: &str,
        subject: String,
        audiences: Vec<String>,
        ttl: Duration,
    ) -> Result<(Self, SystemTime), TokenError> {
        let now = SystemTime::now();
        let expires = now
            .checked_add(ttl)
            .ok_or_else(|| TokenError::Invalid("the expiry is out of range".into()))?;
        let seconds = |t: SystemTime| {
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        };
        let claims = Self {
            iss: issuer.to_string(),
            sub: subject,
            aud: audiences,
            exp: seconds(expires),
            iat: seconds(now),
            nbf: seconds(now),
        };
        Ok((claims, expires))
    }
}

/// A dashboard session: the user who asked for it (authenticated by a certificate or a
/// ServiceAccount token) and their groups, for a short while.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionClaims {
    #[serde(flatten)]
    pub registered: RegisteredClaims,
    pub groups: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    #[serde(flatten)]
    pub registered: RegisteredClaims,
    #[serde(rename = "kubernetes.io")]
    pub kubernetes: KubernetesClaim,
}

impl Claims {
    /// The username the token authenticates as.
    pub fn username(&self) -> String {
        service_account_username(
            &self.kubernetes.namespace,
            &self.kubernetes.serviceaccount.name,
        )
    }
}

pub fn service_account_username(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// The groups every ServiceAccount of `namespace` is in.
pub fn service_account_groups(namespace: &str) -> Vec<String> {
    vec![
        "system:serviceaccounts".to_string(),
        format!("system:serviceaccounts:{namespace}"),
    ]
}

/// Signs and verifies ServiceAccount tokens with the cluster's key. Signing is on every pod's
/// start (its token), so it uses ring's P-256; verification is jsonwebtoken's, with its
/// claim checks.
pub struct ServiceAccountTokens {
    signer: ring::signature::EcdsaKeyPair,
    decoding: DecodingKey,
}

impl ServiceAccountTokens {
    /// From the PKCS#8 PEM private key and its PEM public key.
    pub fn new(private_pem: &str, public_pem: &str) -> Result<Self, TokenError> {
        use rustls::pki_types::pem::PemObject;
        let pkcs8 = rustls::pki_types::PrivatePkcs8KeyDer::from_pem_slice(private_pem.as_bytes())
            .map_err(|e| TokenError::Key(e.to_string()))?;
        let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8.secret_pkcs8_der(),
            &ring::rand::SystemRandom::new(),
        )
        .map_err(|e| TokenError::Key(e.to_string()))?;
        Ok(Self {
            signer,
            decoding: DecodingKey::from_ec_pem(public_pem.as_bytes())
                .map_err(|e| TokenError::Key(e.to_string()))?,
        })
    }

    /// A token for `claim`, for `audiences` (the issuer when empty), valid `ttl` from now.
    pub fn issue(
        &self,
        claim: KubernetesClaim,
        audiences: &[String],
        ttl: Duration,
    ) -> Result<(String, SystemTime), TokenError> {
        let audiences = if audiences.is_empty() {
            vec![ISSUER.to_string()]
        } else {
            audiences.to_vec()
        };
        let subject = service_account_username(&claim.namespace, &claim.serviceaccount.name);
        let (registered, expires) = RegisteredClaims::new(ISSUER, subject, audiences, ttl)?;
        let claims = Claims {
            registered,
            kubernetes: claim,
        };
        Ok((self.sign(&claims)?, expires))
    }

    /// A dashboard session token for `user` in `groups`, valid `ttl` from now: it
    /// authenticates as that user, nothing more (see [`SessionClaims`]).
    pub fn issue_session(
        &self,
        user: &str,
        groups: &[String],
        ttl: Duration,
    ) -> Result<(String, SystemTime), TokenError> {
        let audiences = vec![SESSION_AUDIENCE.to_string()];
        let (registered, expires) =
            RegisteredClaims::new(SESSION_ISSUER, user.to_string(), audiences, ttl)?;
        let claims = SessionClaims {
            registered,
            groups: groups.to_vec(),
        };
        Ok((self.sign(&claims)?, expires))
    }

    /// The claims of `token` if it is a dashboard session token signed by this cluster and not
    /// expired.
    pub fn verify_session(&self, token: &str) -> Result<SessionClaims, TokenError> {
        let claims: SessionClaims = self.decode(token, SESSION_ISSUER, SESSION_AUDIENCE)?;
        if claims.registered.sub.is_empty() {
            return Err(TokenError::Invalid("the session names no user".into()));
        }
        Ok(claims)
    }

    /// The claims of `token` if this cluster's key signed it (ES256 only) for `issuer` and
    /// `audience`, and it is within its validity (no leeway).
    fn decode<T: serde::de::DeserializeOwned>(
        &self,
        token: &str,
        issuer: &str,
        audience: &str,
    ) -> Result<T, TokenError> {
        let mut validation = Validation::new(Algorithm::ES256);
        validation.set_issuer(&[issuer]);
        validation.set_audience(&[audience]);
        validation.validate_nbf = true;
        validation.leeway = 0;
        jsonwebtoken::decode::<T>(token, &self.decoding, &validation)
            .map(|data| data.claims)
            .map_err(|e| TokenError::Invalid(e.to_string()))
    }

    /// `claims` as a JWS in compact form, signed ES256 with the cluster's key.
    fn sign<T: Serialize>(&self, claims: &T) -> Result<String, TokenError> {
        // A JWS in compact form: header.claims.signature, base64url without padding; ES256's
        // signature is r || s (ring's "fixed" format).
        use base64::Engine;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header = serde_json::to_vec(&Header::new(Algorithm::ES256))
            .map_err(|e| TokenError::Key(e.to_string()))?;
        let body = serde_json::to_vec(claims).map_err(|e| TokenError::Key(e.to_string()))?;
        let signing_input = format!("{}.{}", b64.encode(header), b64.encode(body));
        let signature = self
            .signer
            .sign(&ring::rand::SystemRandom::new(), signing_input.as_bytes())
            .map_err(|e| TokenError::Key(e.to_string()))?;
        Ok(format!("{signing_input}.{}", b64.encode(signature)))
    }

    /// The claims of `token` if it is a ServiceAccount token signed by this cluster, for the
    /// API's audience, and not expired. Whether the account (and pod) still exist is for the
    /// caller to check.
    pub fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        let claims: Claims = self.decode(token, ISSUER, ISSUER)?;
        if claims.registered.sub != claims.username() {
            return Err(TokenError::Invalid(
                "the subject does not match the ServiceAccount claim".into(),
            ));
        }
        Ok(claims)
    }
}

/// Whether `token` looks like a JWT (three base64url parts), so it is verified as one.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

/// A bootstrap token split into its public id and secret.
#[derive(Debug, PartialEq, Eq)]
pub struct BootstrapToken<'a> {
    pub id: &'a str,
    pub secret: &'a str,
}

/// The Secret in `kube-system` that holds a bootstrap token's secret half.
pub fn bootstrap_secret_name(id: &str) -> String {
    format!("bootstrap-token-{id}")
}

/// Parses `[a-z0-9]{6}.[a-z0-9]{16}`.
pub fn parse_bootstrap_token(token: &str) -> Option<BootstrapToken<'_>> {
    let (id, secret) = token.split_once('.')?;
    let valid = |part: &str, len: usize| {
        part.len() == len
            && part
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    (valid(id, 6) && valid(secret, 16)).then_some(BootstrapToken { id, secret })
}

/// A new random bootstrap token.
pub fn generate_bootstrap_token() -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let mut part = |len: usize| -> String {
        (0..len)
            .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
            .collect()
    };
    let id = part(6);
    let secret = part(16);
    format!("{id}.{secret}")
}

/// Compares secrets in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::EncodingKey;

    fn keys() -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        (key.serialize_pem(), key.public_key_pem())
    }

    fn claim() -> KubernetesClaim {
        KubernetesClaim {
            namespace: "team".into(),
            serviceaccount: ObjectRef {
                name: "reader".into(),
                uid: "u1".into(),
            },
            pod: None,
        }
    }

    #[test]
    fn issued_tokens_verify_and_name_their_account() {
        let (private, public) = keys();
        let tokens = ServiceAccountTokens::new(&private, &public).unwrap();
        let (token, _) = tokens.issue(claim(), &[], DEFAULT_TOKEN_TTL).unwrap();
        let claims = tokens.verify(&token).unwrap();
        assert_eq!(claims.username(), "system:serviceaccount:team:reader");
        assert_eq!(claims.kubernetes, claim());
    }

    #[test]
    fn tokens_signed_by_another_key_expired_or_for_another_audience_fail() {
        let (private, public) = keys();
        let tokens = ServiceAccountTokens::new(&private, &public).unwrap();
        let (other_private, other_public) = keys();
        let other = ServiceAccountTokens::new(&other_private, &other_public).unwrap();
        let (foreign, _) = other.issue(claim(), &[], DEFAULT_TOKEN_TTL).unwrap();
        assert!(tokens.verify(&foreign).is_err());
        let (expired, _) = tokens.issue(claim(), &[], Duration::ZERO).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert!(tokens.verify(&expired).is_err());
        let (vault, _) = tokens
            .issue(claim(), &["vault".to_string()], DEFAULT_TOKEN_TTL)
            .unwrap();
        assert!(tokens.verify(&vault).is_err());
        for garbage in [
            "",
            "a.b.c",
            "....",
            "eyJhbGciOiJub25lIn0.e30.",
            "x".repeat(10_000).as_str(),
        ] {
            assert!(tokens.verify(garbage).is_err(), "{garbage:?}");
        }
    }

    #[test]
    fn sessions_stand_for_their_user_and_pass_for_nothing_else() {
        let (private, public) = keys();
        let tokens = ServiceAccountTokens::new(&private, &public).unwrap();
        let groups = vec!["devs".to_string()];
        let (session, _) = tokens
            .issue_session("ada", &groups, DEFAULT_SESSION_TTL)
            .unwrap();
        let claims = tokens.verify_session(&session).unwrap();
        assert_eq!(
            (claims.registered.sub.as_str(), claims.groups),
            ("ada", groups)
        );
        // A session is no ServiceAccount token, and no ServiceAccount token is a session,
        // even one requested for the session's audience.
        assert!(tokens.verify(&session).is_err());
        let (account, _) = tokens
            .issue(claim(), &[SESSION_AUDIENCE.to_string()], DEFAULT_TOKEN_TTL)
            .unwrap();
        assert!(tokens.verify_session(&account).is_err());
        let (other_private, other_public) = keys();
        let other = ServiceAccountTokens::new(&other_private, &other_public).unwrap();
        let (foreign, _) = other
            .issue_session("ada", &[], DEFAULT_SESSION_TTL)
            .unwrap();
        assert!(tokens.verify_session(&foreign).is_err());
        let (expired, _) = tokens.issue_session("ada", &[], Duration::ZERO).unwrap();
        std::thread::sleep(Duration::from_millis(1100));
        assert!(tokens.verify_session(&expired).is_err());
    }

    #[test]
    fn unsigned_tokens_are_refused() {
        // alg "none" and an HMAC token made with the public key as secret (the classic
        // algorithm confusion) must both fail.
        let (private, public) = keys();
        let tokens = ServiceAccountTokens::new(&private, &public).unwrap();
        let (token, _) = tokens.issue(claim(), &[], DEFAULT_TOKEN_TTL).unwrap();
        let payload = token.split('.').nth(1).unwrap();
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
        assert!(tokens.verify(&none).is_err());
        let hmac = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &tokens.verify(&token).unwrap(),
            &EncodingKey::from_secret(public.as_bytes()).unwrap(),
        )
        .unwrap();
        assert!(tokens.verify(&hmac).is_err());
    }

    #[test]
    fn bootstrap_tokens_parse_only_in_their_format() {
        assert_eq!(
            parse_bootstrap_token("abcdef.0123456789abcdef"),
            Some(BootstrapToken {
                id: "abcdef",
                secret: "0123456789abcdef"
            })
        );
        for bad in [
            "abcdef",
            "ABCDEF.0123456789abcdef",
            "abcde.0123456789abcdef",
            "abcdef.0123456789abcde",
            "abcdef.0123456789abcdef0",
            "ab-def.0123456789abcdef",
        ] {
            assert_eq!(parse_bootstrap_token(bad), None, "{bad}");
        }
        let generated = generate_bootstrap_token();
        assert!(parse_bootstrap_token(&generated).is_some(), "{generated}");
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
    }
}
