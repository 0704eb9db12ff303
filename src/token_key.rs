//! Where the key invitation tokens are derived from ([`TokenKey`]) is kept: a Secret in usher's
//! own namespace, read by name only (its RBAC grants `get` on that one name, never `list`). The
//! first usher to start creates it with a fresh random key; replicas or shards racing to create
//! it all end with the key of the one that won. The key is never in the user store, so a copy of
//! the store yields no token.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ObjectMeta, PostParams};

use crate::token::TokenKey;

/// The Secret's default name.
pub const DEFAULT_NAME: &str = "usher-token-key";

/// The Secret's data field holding the 32 key bytes.
pub const FIELD: &str = "key";

/// What loading the key can fail at, each naming the Secret and what to do.
#[derive(Debug, thiserror::Error)]
pub enum KeyLoadError {
    /// The API server refused or failed.
    #[error(
        "the token key Secret {namespace}/{name}: {source}; usher needs `get` on it and `create` on Secrets in {namespace} (see deploy/rbac.yaml)"
    )]
    Kube {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// What the API server said.
        source: kube::Error,
    },
    /// No randomness for a new key.
    #[error("no randomness for a new token key: {0}")]
    Random(String),
    /// It exists but does not hold a usable key.
    #[error(
        "the token key Secret {namespace}/{name} holds no valid {FIELD:?} field ({reason}); delete it to have a new key made (every open invitation then needs a resend)"
    )]
    Invalid {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// What is wrong.
        reason: String,
    },
}

/// The token key in Secret `namespace/name`, created with a random key if it does not exist.
/// Errors: the API server refuses ([`KeyLoadError::Kube`]), or the Secret holds no 32-byte
/// `key` ([`KeyLoadError::Invalid`]).
pub async fn load(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<TokenKey, KeyLoadError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let kube = |source| KeyLoadError::Kube {
        namespace: namespace.into(),
        name: name.into(),
        source,
    };
    let invalid = |reason: String| KeyLoadError::Invalid {
        namespace: namespace.into(),
        name: name.into(),
        reason,
    };
    // Created between our read and our create, by another usher: read theirs (and should it
    // vanish meanwhile, try once more).
    for _ in 0..3 {
        if let Some(secret) = api.get_opt(name).await.map_err(kube)? {
            let bytes = secret
                .data
                .as_ref()
                .and_then(|d| d.get(FIELD))
                .ok_or_else(|| invalid("missing".into()))?;
            return TokenKey::from_bytes(&bytes.0).map_err(|e| invalid(e.to_string()));
        }
        let key = TokenKey::generate().map_err(|e| KeyLoadError::Random(e.to_string()))?;
        let secret = Secret {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some(namespace.into()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/managed-by".to_string(),
                    crate::controller::MANAGER.to_string(),
                )])),
                ..Default::default()
            },
            // Replaced by nobody: a new key would break every link in the mails already out.
            immutable: Some(true),
            type_: Some("Opaque".into()),
            data: Some(BTreeMap::from([(
                FIELD.to_string(),
                ByteString(key.bytes().to_vec()),
            )])),
            ..Default::default()
        };
        match api.create(&PostParams::default(), &secret).await {
            Ok(_) => {
                tracing::info!(%namespace, %name, "token key created");
                return Ok(key);
            }
            // Another usher created it first: use theirs.
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(kube(e)),
        }
    }
    Err(invalid(
        "created and deleted again while usher read it".into(),
    ))
}
