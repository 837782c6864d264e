//! Encryption at rest, as kube-apiserver's `--encryption-provider-config`: an
//! `EncryptionConfiguration` (apiserver.config.k8s.io/v1) names resources and an ordered list
//! of providers (`aesgcm`, `aescbc`, `secretbox`, `identity`). The first provider encrypts
//! every write; every listed key can read, so data stays readable through a key rotation for as
//! long as the old key is listed. [`EncryptedStore`] wraps any [`Store`]: objects of the
//! configured resources are kept as an envelope holding only their name, namespace and
//! `k8s:enc:<provider>:v1:<key>:<ciphertext>`; the API server above sees plain objects.
//!
//! AES-GCM binds each ciphertext to its store key (authenticated data), so a ciphertext moved
//! to another object's key does not decrypt.

use std::collections::BTreeSet;
use std::sync::Arc;

use aes_gcm::aead::{Aead, Payload};
use aes_gcm::KeyInit;
use base64::Engine;
use futures::StreamExt;
use rand::RngCore;
use serde_json::{json, Value};

use super::admission::Lister;
use super::{
    revision_of, stamp_revision, Admission, AdmittedCreate, Error, EventType, Guard, GuardScope,
    Guarded, Listing, NotCreated, ObjectKey, Page, PageRequest, Result, Store, WatchStream,
};

const ENVELOPE_FIELD: &str = "k8s:enc";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("the encryption config is not valid YAML: {0}")]
    Yaml(String),
    #[error("the encryption config: {0}")]
    Invalid(String),
}

#[derive(Clone)]
enum Cipher {
    AesGcm(Vec<u8>),
    AesCbc(Vec<u8>),
    Secretbox(Vec<u8>),
}

impl Cipher {
    fn provider(&self) -> &'static str {
        match self {
            Self::AesGcm(_) => "aesgcm",
            Self::AesCbc(_) => "aescbc",
            Self::Secretbox(_) => "secretbox",
        }
    }

    fn seal(&self, plain: &[u8], aad: &[u8]) -> std::result::Result<Vec<u8>, String> {
        let mut rng = rand::thread_rng();
        match self {
            Self::AesGcm(key) => {
                let mut nonce = [0u8; 12];
                rng.fill_bytes(&mut nonce);
                let payload = Payload { msg: plain, aad };
                let sealed = match key.len() {
                    16 => aes_gcm::Aes128Gcm::new_from_slice(key)
                        .map_err(|e| e.to_string())?
                        .encrypt((&nonce).into(), payload),
                    _ => aes_gcm::Aes256Gcm::new_from_slice(key)
                        .map_err(|e| e.to_string())?
                        .encrypt((&nonce).into(), payload),
                }
                .map_err(|e| e.to_string())?;
                Ok([&nonce[..], &sealed].concat())
            }
            Self::AesCbc(key) => {
                use cbc::cipher::{block_padding::Pkcs7, BlockEncryptMut, KeyIvInit};
                let mut iv = [0u8; 16];
                rng.fill_bytes(&mut iv);
                let sealed = match key.len() {
                    16 => cbc::Encryptor::<aes::Aes128>::new_from_slices(key, &iv)
                        .map_err(|e| e.to_string())?
                        .encrypt_padded_vec_mut::<Pkcs7>(plain),
                    _ => cbc::Encryptor::<aes::Aes256>::new_from_slices(key, &iv)
                        .map_err(|e| e.to_string())?
                        .encrypt_padded_vec_mut::<Pkcs7>(plain),
                };
                Ok([&iv[..], &sealed].concat())
            }
            Self::Secretbox(key) => {
                let mut nonce = [0u8; 24];
                rng.fill_bytes(&mut nonce);
                let sealed = crypto_secretbox::XSalsa20Poly1305::new_from_slice(key)
                    .map_err(|e| e.to_string())?
                    .encrypt((&nonce).into(), plain)
                    .map_err(|e| e.to_string())?;
                Ok([&nonce[..], &sealed].concat())
            }
        }
    }

    fn open(&self, sealed: &[u8], aad: &[u8]) -> std::result::Result<Vec<u8>, String> {
        let short = || "the ciphertext is too short".to_string();
        match self {
            Self::AesGcm(key) => {
                let (nonce, body) = (sealed.get(..12).ok_or_else(short)?, &sealed[12..]);
                let payload = Payload { msg: body, aad };
                match key.len() {
                    16 => aes_gcm::Aes128Gcm::new_from_slice(key)
                        .map_err(|e| e.to_string())?
                        .decrypt(nonce.into(), payload),
                    _ => aes_gcm::Aes256Gcm::new_from_slice(key)
                        .map_err(|e| e.to_string())?
                        .decrypt(nonce.into(), payload),
                }
                .map_err(|_| "authentication failed (wrong key, or a tampered value)".into())
            }
            Self::AesCbc(key) => {
                use cbc::cipher::{block_padding::Pkcs7, BlockDecryptMut, KeyIvInit};
                let (iv, body) = (sealed.get(..16).ok_or_else(short)?, &sealed[16..]);
                match key.len() {
                    16 => cbc::Decryptor::<aes::Aes128>::new_from_slices(key, iv)
                        .map_err(|e| e.to_string())?
                        .decrypt_padded_vec_mut::<Pkcs7>(body),
                    _ => cbc::Decryptor::<aes::Aes256>::new_from_slices(key, iv)
                        .map_err(|e| e.to_string())?
                        .decrypt_padded_vec_mut::<Pkcs7>(body),
                }
                .map_err(|_| "bad padding (wrong key, or a tampered value)".into())
            }
            Self::Secretbox(key) => {
                let (nonce, body) = (sealed.get(..24).ok_or_else(short)?, &sealed[24..]);
                crypto_secretbox::XSalsa20Poly1305::new_from_slice(key)
                    .map_err(|e| e.to_string())?
                    .decrypt(nonce.into(), body)
                    .map_err(|_| "authentication failed (wrong key, or a tampered value)".into())
            }
        }
    }
}

/// One provider of a resource's list: a key, or identity (store as is).
#[derive(Clone)]
enum Provider {
    Key { name: String, cipher: Cipher },
    Identity,
}

impl Provider {
    fn prefix(&self) -> Option<String> {
        match self {
            Self::Key { name, cipher } => Some(format!("k8s:enc:{}:v1:{name}:", cipher.provider())),
            Self::Identity => None,
        }
    }
}

#[derive(Clone)]
struct Rule {
    resources: BTreeSet<String>,
    providers: Vec<Provider>,
}

/// A parsed `EncryptionConfiguration`.
#[derive(Clone)]
pub struct EncryptionConfig {
    rules: Vec<Rule>,
}

impl std::fmt::Debug for EncryptionConfig {
    /// Never prints a key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let resources: Vec<_> = self.rules.iter().flat_map(|r| r.resources.iter()).collect();
        f.debug_struct("EncryptionConfig")
            .field("resources", &resources)
            .finish_non_exhaustive()
    }
}

impl EncryptionConfig {
    pub fn parse(text: &str) -> std::result::Result<Self, ConfigError> {
        let config: Value =
            serde_yaml::from_str(text).map_err(|e| ConfigError::Yaml(e.to_string()))?;
        let invalid = |why: String| ConfigError::Invalid(why);
        if config["kind"] != "EncryptionConfiguration" {
            return Err(invalid(format!(
                "kind must be EncryptionConfiguration, not {}",
                config["kind"]
            )));
        }
        let Some(entries) = config["resources"].as_array() else {
            return Err(invalid("resources: a list is required".into()));
        };
        let mut rules = Vec::new();
        for (i, entry) in entries.iter().enumerate() {
            let resources: BTreeSet<String> = entry["resources"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r.as_str().map(|r| r.trim().to_string()))
                .collect();
            if resources.is_empty() {
                return Err(invalid(format!(
                    "resources[{i}].resources: at least one resource is required"
                )));
            }
            let Some(list) = entry["providers"].as_array().filter(|l| !l.is_empty()) else {
                return Err(invalid(format!(
                    "resources[{i}].providers: at least one provider is required"
                )));
            };
            let mut providers = Vec::new();
            for (j, provider) in list.iter().enumerate() {
                let field = format!("resources[{i}].providers[{j}]");
                let Some((kind, settings)) = provider.as_object().and_then(|o| o.iter().next())
                else {
                    return Err(invalid(format!("{field}: a provider is required")));
                };
                let make: fn(Vec<u8>) -> Cipher = match kind.as_str() {
                    "identity" => {
                        providers.push(Provider::Identity);
                        continue;
                    }
                    "aesgcm" => Cipher::AesGcm,
                    "aescbc" => Cipher::AesCbc,
                    "secretbox" => Cipher::Secretbox,
                    other => {
                        return Err(invalid(format!(
                            "{field}: unsupported provider {other:?}: use aesgcm, aescbc, secretbox or identity"
                        )))
                    }
                };
                let Some(keys) = settings["keys"].as_array().filter(|k| !k.is_empty()) else {
                    return Err(invalid(format!(
                        "{field}.{kind}.keys: at least one key is required"
                    )));
                };
                for (k, key) in keys.iter().enumerate() {
                    let key_field = format!("{field}.{kind}.keys[{k}]");
                    let name = key["name"].as_str().unwrap_or("");
                    if name.is_empty() || name.contains(':') {
                        return Err(invalid(format!(
                            "{key_field}.name: a name without ':' is required"
                        )));
                    }
                    let secret = base64::engine::general_purpose::STANDARD
                        .decode(key["secret"].as_str().unwrap_or(""))
                        .map_err(|e| invalid(format!("{key_field}.secret: not base64: {e}")))?;
                    let sizes: &[usize] = if kind == "secretbox" {
                        &[32]
                    } else {
                        &[16, 32]
                    };
                    if !sizes.contains(&secret.len()) {
                        return Err(invalid(format!(
                            "{key_field}.secret: a {kind} key is {sizes:?} bytes, not {}",
                            secret.len()
                        )));
                    }
                    providers.push(Provider::Key {
                        name: name.to_string(),
                        cipher: make(secret),
                    });
                }
            }
            rules.push(Rule {
                resources,
                providers,
            });
        }
        Ok(Self { rules })
    }

    fn providers(&self, resource: &str) -> Option<&[Provider]> {
        self.rules
            .iter()
            .find(|r| r.resources.contains(resource))
            .map(|r| r.providers.as_slice())
    }
}

/// A [`Store`] that encrypts the configured resources on their way in and decrypts them on
/// their way out.
pub struct EncryptedStore {
    inner: Arc<dyn Store>,
    config: Arc<EncryptionConfig>,
}

impl EncryptedStore {
    pub fn new(inner: Arc<dyn Store>, config: EncryptionConfig) -> Self {
        Self {
            inner,
            config: Arc::new(config),
        }
    }
}

fn backend(key: &ObjectKey, why: impl std::fmt::Display) -> Error {
    Error::Backend(format!(
        "{} {}/{}: {why}",
        key.resource, key.namespace, key.name
    ))
}

/// Encrypts `object` under the first provider for its resource.
fn seal(config: &EncryptionConfig, key: &ObjectKey, object: Value) -> Result<Value> {
    let Some(first) = config.providers(&key.resource).and_then(|p| p.first()) else {
        return Ok(object);
    };
    let Provider::Key { cipher, .. } = first else {
        return Ok(object);
    };
    let plain = serde_json::to_vec(&object).map_err(|e| backend(key, e))?;
    let sealed = cipher
        .seal(&plain, key.encode().as_bytes())
        .map_err(|e| backend(key, e))?;
    let prefix = first.prefix().unwrap_or_default();
    let text = format!(
        "{prefix}{}",
        base64::engine::general_purpose::STANDARD.encode(sealed)
    );
    Ok(json!({
        "metadata": {"name": key.name, "namespace": key.namespace},
        ENVELOPE_FIELD: text,
    }))
}

/// Decrypts an envelope with whichever listed key wrote it; a plain object passes as is.
fn open(config: &EncryptionConfig, key: &ObjectKey, stored: Value) -> Result<Value> {
    let Some(text) = stored.get(ENVELOPE_FIELD).and_then(Value::as_str) else {
        return Ok(stored);
    };
    let providers = config.providers(&key.resource).unwrap_or(&[]);
    let found = providers.iter().find_map(|provider| {
        let prefix = provider.prefix()?;
        let body = text.strip_prefix(&prefix)?;
        match provider {
            Provider::Key { cipher, .. } => Some((cipher, body)),
            Provider::Identity => None,
        }
    });
    let Some((cipher, body)) = found else {
        let written_with = text.splitn(6, ':').take(5).collect::<Vec<_>>().join(":");
        return Err(backend(
            key,
            format!("cannot decrypt: no key of the encryption config matches {written_with}"),
        ));
    };
    let sealed = base64::engine::general_purpose::STANDARD
        .decode(body)
        .map_err(|e| backend(key, e))?;
    let plain = cipher
        .open(&sealed, key.encode().as_bytes())
        .map_err(|e| backend(key, format!("cannot decrypt: {e}")))?;
    let mut object: Value = serde_json::from_slice(&plain).map_err(|e| backend(key, e))?;
    if let Some(revision) = revision_of(&stored) {
        stamp_revision(&mut object, revision);
    }
    Ok(object)
}

fn key_of(resource: &str, object: &Value) -> ObjectKey {
    let text = |pointer: &str| {
        object
            .pointer(pointer)
            .and_then(Value::as_str)
            .unwrap_or("")
    };
    ObjectKey::new(
        resource,
        text("/metadata/namespace"),
        text("/metadata/name"),
    )
}

/// An admission judging in the inner store's commit, which holds objects sealed: it sees
/// the guards and the objects it counts opened, and the guards it charged are sealed again.
struct Unsealed {
    config: Arc<EncryptionConfig>,
    scope: GuardScope,
    admission: Box<dyn Admission>,
}

impl Admission for Unsealed {
    fn admit(&self, guards: &mut [Guarded], list: &mut Lister<'_>) -> Result<(), String> {
        let resource = self.scope.resource.as_str();
        if self.config.providers(resource).is_none() {
            return self
                .admission
                .admit(guards, &mut |r, ns| self.opened(r, list(r, ns)));
        }
        let mut opened = Vec::with_capacity(guards.len());
        for guard in guards.iter() {
            let key = key_of(resource, &guard.object);
            let object =
                open(&self.config, &key, guard.object.clone()).map_err(|e| e.to_string())?;
            opened.push(Guarded::new(object));
        }
        self.admission
            .admit(&mut opened, &mut |r, ns| self.opened(r, list(r, ns)))?;
        // Sealed before any is replaced: a refusal changes nothing. The inner admission's
        // memos are settled here, so a sealed guard is parsed again by the next create.
        let mut resealed = Vec::new();
        for (at, charged) in opened.into_iter().enumerate() {
            if charged.changed {
                let key = key_of(resource, &guards[at].object);
                let mut sealed =
                    seal(&self.config, &key, charged.into_settled()).map_err(|e| e.to_string())?;
                // The envelope keeps the revision the guard was read at (its precondition).
                if let Some(revision) = revision_of(&guards[at].object) {
                    stamp_revision(&mut sealed, revision);
                }
                resealed.push((at, sealed));
            }
        }
        for (at, sealed) in resealed {
            guards[at].object = sealed;
            guards[at].changed = true;
        }
        Ok(())
    }
}

impl Unsealed {
    /// Listed objects of `resource`, opened; one that does not open is left out of the count.
    fn opened(&self, resource: &str, listed: Vec<Value>) -> Vec<Value> {
        if self.config.providers(resource).is_none() {
            return listed;
        }
        listed
            .into_iter()
            .filter_map(|stored| open(&self.config, &key_of(resource, &stored), stored).ok())
            .collect()
    }
}

#[async_trait::async_trait]
impl Store for EncryptedStore {
    async fn create(&self, key: ObjectKey, object: Value) -> Result<Value> {
        let sealed = seal(&self.config, &key, object)?;
        let stored = self.inner.create(key.clone(), sealed).await?;
        open(&self.config, &key, stored)
    }

    async fn update(
        &self,
        key: ObjectKey,
        object: Value,
        precondition: Option<u64>,
    ) -> Result<Value> {
        let sealed = seal(&self.config, &key, object)?;
        let stored = self.inner.update(key.clone(), sealed, precondition).await?;
        open(&self.config, &key, stored)
    }

    async fn delete(&self, key: ObjectKey, precondition: Option<u64>) -> Result<Value> {
        let stored = self.inner.delete(key.clone(), precondition).await?;
        open(&self.config, &key, stored)
    }

    async fn create_guarded(
        &self,
        guards: Vec<Guard>,
        creates: Vec<(ObjectKey, Value)>,
    ) -> Result<Vec<Result<Value>>> {
        let guards = guards
            .into_iter()
            .map(|guard| {
                Ok(Guard {
                    object: seal(&self.config, &guard.key, guard.object)?,
                    ..guard
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let keys: Vec<ObjectKey> = creates.iter().map(|(key, _)| key.clone()).collect();
        let sealed = creates
            .into_iter()
            .map(|(key, object)| Ok((key.clone(), seal(&self.config, &key, object)?)))
            .collect::<Result<Vec<_>>>()?;
        let stored = self.inner.create_guarded(guards, sealed).await?;
        Ok(stored
            .into_iter()
            .zip(keys)
            .map(|(stored, key)| stored.and_then(|stored| open(&self.config, &key, stored)))
            .collect())
    }

    async fn create_admitted(
        &self,
        scope: &GuardScope,
        creates: Vec<AdmittedCreate>,
    ) -> Result<Vec<Result<Value, NotCreated>>> {
        let keys: Vec<ObjectKey> = creates.iter().map(|create| create.key.clone()).collect();
        let sealed = creates
            .into_iter()
            .map(|create| {
                Ok(AdmittedCreate {
                    object: seal(&self.config, &create.key, create.object)?,
                    admission: Box::new(Unsealed {
                        config: self.config.clone(),
                        scope: scope.clone(),
                        admission: create.admission,
                    }),
                    key: create.key,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let stored = self.inner.create_admitted(scope, sealed).await?;
        Ok(stored
            .into_iter()
            .zip(keys)
            .map(|(stored, key)| Ok(open(&self.config, &key, stored?)?))
            .collect())
    }

    fn admits_in_commit(&self) -> bool {
        self.inner.admits_in_commit()
    }

    fn get(&self, key: &ObjectKey) -> Result<Option<Value>> {
        self.inner
            .get(key)?
            .map(|stored| open(&self.config, key, stored))
            .transpose()
    }

    fn get_shared(&self, key: &ObjectKey) -> Result<Option<Arc<Value>>> {
        match self.inner.get_shared(key)? {
            Some(stored) if stored.get(ENVELOPE_FIELD).is_some() => {
                Ok(Some(Arc::new(open(&self.config, key, (*stored).clone())?)))
            }
            found => Ok(found),
        }
    }

    fn any(&self, resource: &str, namespace: Option<&str>) -> Result<bool> {
        self.inner.any(resource, namespace)
    }

    fn list(&self, resource: &str, namespace: Option<&str>) -> Result<Listing> {
        let listing = self.inner.list(resource, namespace)?;
        if self.config.providers(resource).is_none() {
            return Ok(listing);
        }
        let objects = listing
            .objects
            .into_iter()
            .map(|stored| open(&self.config, &key_of(resource, &stored), stored))
            .collect::<Result<Vec<_>>>()?;
        Ok(Listing {
            objects,
            revision: listing.revision,
        })
    }

    async fn list_page(&self, request: PageRequest<'_>) -> Result<Page> {
        if self.config.providers(request.resource).is_none() {
            return self.inner.list_page(request).await;
        }
        // The selectors look at the decrypted object; one that cannot be decrypted is kept,
        // so that the page fails naming why, as a list does.
        let (config, resource, filter) = (&self.config, request.resource, request.filter);
        let decrypted_filter = move |stored: &Value| {
            open(config, &key_of(resource, stored), stored.clone())
                .map_or(true, |object| filter(&object))
        };
        let page = self
            .inner
            .list_page(PageRequest {
                filter: &decrypted_filter,
                ..request
            })
            .await?;
        let objects = page
            .objects
            .into_iter()
            .map(|stored| {
                let key = key_of(resource, &stored);
                open(&self.config, &key, Arc::unwrap_or_clone(stored)).map(Arc::new)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Page { objects, ..page })
    }

    fn watch(&self, resource: &str, namespace: Option<&str>, since: u64) -> Result<WatchStream> {
        let stream = self.inner.watch(resource, namespace, since)?;
        if self.config.providers(resource).is_none() {
            return Ok(stream);
        }
        let config = self.config.clone();
        Ok(stream
            .map(move |event| {
                let mut event = event?;
                if event.event_type == EventType::Bookmark {
                    return Ok(event);
                }
                let object = open(&config, &event.key, (*event.object).clone())?;
                event.object = Arc::new(object);
                Ok(event)
            })
            .boxed())
    }

    fn revision(&self) -> u64 {
        self.inner.revision()
    }

    async fn put_blob(&self, digest: &str, bytes: Vec<u8>) -> Result<()> {
        self.inner.put_blob(digest, bytes).await
    }

    async fn get_blob(&self, digest: &str) -> Result<Option<Vec<u8>>> {
        self.inner.get_blob(digest).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RedbStore;

    fn config(providers: &str) -> EncryptionConfig {
        EncryptionConfig::parse(&format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{providers}"
        ))
        .unwrap()
    }

    const KEY1: &str = "YWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWFhYWE="; // 32 bytes
    const KEY2: &str = "YmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmJiYmI="; // 32 bytes

    fn secret(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "default"}, "data": {"password": "aHVudGVyMg=="}})
    }

    #[tokio::test]
    async fn every_provider_round_trips_and_nothing_readable_reaches_the_disk() {
        for provider in ["aesgcm", "aescbc", "secretbox"] {
            let dir = tempfile::tempdir().unwrap();
            let raw: Arc<dyn Store> =
                Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
            let store = EncryptedStore::new(
                raw.clone(),
                config(&format!(
                    "  - {provider}:\n      keys: [{{name: k1, secret: {KEY1}}}]\n"
                )),
            );
            let key = ObjectKey::new("secrets", "default", "db");
            let created = store.create(key.clone(), secret("db")).await.unwrap();
            assert_eq!(created["data"]["password"], "aHVudGVyMg==", "{provider}");
            assert!(revision_of(&created).is_some());
            let on_disk = raw.get(&key).unwrap().unwrap().to_string();
            assert!(
                on_disk.contains(&format!("k8s:enc:{provider}:v1:k1:")),
                "{on_disk}"
            );
            assert!(!on_disk.contains("aHVudGVyMg"), "{provider}: {on_disk}");
            assert_eq!(store.get(&key).unwrap().unwrap()["data"], created["data"]);
            assert_eq!(
                store.get_shared(&key).unwrap().unwrap()["data"],
                created["data"],
                "a shared read is opened too"
            );
            let listed = store.list("secrets", None).unwrap().objects;
            assert_eq!(listed[0]["data"], created["data"]);
            // Other resources pass untouched.
            let map = ObjectKey::new("configmaps", "default", "c");
            store
                .create(
                    map.clone(),
                    json!({"metadata": {"name": "c", "namespace": "default"}, "data": {"a": "b"}}),
                )
                .await
                .unwrap();
            assert_eq!(raw.get(&map).unwrap().unwrap()["data"]["a"], "b");
            assert_eq!(store.get_shared(&map).unwrap().unwrap()["data"]["a"], "b");
            // A create charged to a quota is sealed the same way.
            let quota = ObjectKey::new("resourcequotas", "default", "q");
            let q = json!({"metadata": {"name": "q", "namespace": "default"}});
            let at = revision_of(&store.create(quota.clone(), q.clone()).await.unwrap()).unwrap();
            let guarded = ObjectKey::new("secrets", "default", "charged");
            let guard = Guard {
                key: quota,
                object: q,
                precondition: at,
            };
            let outcomes = store
                .create_guarded(vec![guard], vec![(guarded.clone(), secret("charged"))])
                .await
                .unwrap();
            let created = outcomes[0].as_ref().unwrap();
            assert_eq!(created["data"]["password"], "aHVudGVyMg==", "{provider}");
            let on_disk = raw.get(&guarded).unwrap().unwrap().to_string();
            assert!(!on_disk.contains("aHVudGVyMg"), "{provider}: {on_disk}");
        }
    }

    /// Counts the Secrets listed into each guard's `status.count` (as a quota counts).
    struct CountSecrets;

    impl Admission for CountSecrets {
        fn admit(
            &self,
            guards: &mut [Guarded],
            list: &mut Lister<'_>,
        ) -> std::result::Result<(), String> {
            let secrets = list("secrets", "default");
            if secrets
                .iter()
                .any(|s| s["data"]["password"] != "aHVudGVyMg==")
            {
                return Err("a listed Secret is still sealed".into());
            }
            for guard in guards.iter_mut() {
                if guard.object["spec"]["hard"] != "10" {
                    return Err("the guard is still sealed".into());
                }
                guard.object["status"] = json!({"count": secrets.len() + 1});
                guard.changed = true;
            }
            Ok(())
        }
    }

    /// With the quotas themselves encrypted, an admission judging in the commit sees them
    /// and the objects it counts opened, and its charge is stored sealed.
    #[tokio::test]
    async fn an_admission_sees_sealed_guards_and_counts_opened() {
        let dir = tempfile::tempdir().unwrap();
        let raw: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let config = EncryptionConfig::parse(&format!(
            "apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets, resourcequotas]\n  providers:\n  - aesgcm:\n      keys: [{{name: k1, secret: {KEY1}}}]\n"
        ))
        .unwrap();
        let store = EncryptedStore::new(raw.clone(), config);
        let quota = ObjectKey::new("resourcequotas", "default", "q");
        let q = json!({"metadata": {"name": "q", "namespace": "default"}, "spec": {"hard": "10"}});
        store.create(quota.clone(), q).await.unwrap();
        store
            .create(ObjectKey::new("secrets", "default", "a"), secret("a"))
            .await
            .unwrap();
        let create = AdmittedCreate {
            key: ObjectKey::new("secrets", "default", "b"),
            object: secret("b"),
            admission: Box::new(CountSecrets),
        };
        let scope = GuardScope::new("resourcequotas", "default");
        let outcomes = store.create_admitted(&scope, vec![create]).await.unwrap();
        let created = outcomes[0].as_ref().unwrap();
        assert_eq!(created["data"]["password"], "aHVudGVyMg==");
        assert_eq!(store.get(&quota).unwrap().unwrap()["status"]["count"], 2);
        let on_disk = raw.get(&quota).unwrap().unwrap().to_string();
        assert!(on_disk.contains("k8s:enc:aesgcm:v1:k1:"), "{on_disk}");
        assert!(!on_disk.contains("count"), "{on_disk}");
    }

    #[tokio::test]
    async fn old_keys_read_while_listed_and_new_writes_use_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let raw: Arc<dyn Store> = Arc::new(RedbStore::open(&dir.path().join("s.redb")).unwrap());
        let old = EncryptedStore::new(
            raw.clone(),
            config(&format!(
                "  - aesgcm:\n      keys: [{{name: k1, secret: {KEY1}}}]\n"
            )),
        );
        let key = ObjectKey::new("secrets", "default", "db");
        old.create(key.clone(), secret("db")).await.unwrap();
        // Rotation: the new key first, the old one still listed.
        let rotated = EncryptedStore::new(
            raw.clone(),
            config(&format!("  - aescbc:\n      keys: [{{name: k2, secret: {KEY2}}}]\n  - aesgcm:\n      keys: [{{name: k1, secret: {KEY1}}}]\n")),
        );
        assert_eq!(
            rotated.get(&key).unwrap().unwrap()["data"]["password"],
            "aHVudGVyMg=="
        );
        let current = rotated.get(&key).unwrap().unwrap();
        rotated.update(key.clone(), current, None).await.unwrap();
        assert!(raw
            .get(&key)
            .unwrap()
            .unwrap()
            .to_string()
            .contains("k8s:enc:aescbc:v1:k2:"));
        // With the old key gone, data it wrote is an error naming the key, never garbage.
        let other = ObjectKey::new("secrets", "default", "old");
        old.create(other.clone(), secret("old")).await.unwrap();
        assert!(rotated.get(&other).is_ok(), "k1 is still listed");
        let dropped = EncryptedStore::new(
            raw.clone(),
            config(&format!(
                "  - aescbc:\n      keys: [{{name: k2, secret: {KEY2}}}]\n"
            )),
        );
        let error = dropped.get(&other).unwrap_err().to_string();
        assert!(error.contains("k8s:enc:aesgcm:v1:k1"), "{error}");
        // A ciphertext moved to another key does not decrypt (AES-GCM binds it to its key).
        let moved = ObjectKey::new("secrets", "default", "moved");
        let envelope = raw.get(&other).unwrap().unwrap();
        raw.create(moved.clone(), envelope).await.unwrap();
        assert!(old.get(&moved).is_err());
    }

    #[test]
    fn bad_configs_are_errors_naming_the_field() {
        let bad = |providers: &str, expected: &str| {
            let text = format!("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\nresources:\n- resources: [secrets]\n  providers:\n{providers}");
            let error = EncryptionConfig::parse(&text)
                .expect_err(providers)
                .to_string();
            assert!(error.contains(expected), "{error} (expected {expected})");
        };
        bad("  - kms: {}\n", "unsupported provider \"kms\"");
        bad("  - aesgcm: {keys: []}\n", "providers[0].aesgcm.keys");
        bad(
            "  - aesgcm:\n      keys: [{name: k1, secret: c2hvcnQ=}]\n",
            "not 5",
        );
        bad(
            "  - secretbox:\n      keys: [{name: k1, secret: '!!!'}]\n",
            "not base64",
        );
        bad(
            "  - aescbc:\n      keys: [{name: '', secret: c2hvcnQ=}]\n",
            "name",
        );
        assert!(EncryptionConfig::parse("kind: Other").is_err());
        assert!(EncryptionConfig::parse("{{{").is_err());
    }
}
