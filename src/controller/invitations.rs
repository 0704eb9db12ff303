//! The executor of a person's writes: address-change revocation → account → access → token
//! recorded → Secret → mail → marked sent, in that order.
//!
//! The order is what makes a crash safe: the token's hash is recorded before the mail goes out
//! and the "sent" mark after it. A crash in between leaves an unsent invitation, which the next
//! reconcile completes with the same token, made again from the key: at most one duplicate mail
//! per mail in flight, each with a working link, never a lost invitation, never two open tokens.
//!
//! It touches nothing of Kubernetes but the token's Secret, and that through [`SecretSink`], so
//! it is unit-tested on the in-memory SQLite store and the file mailer (see the tests below).
//!
//! Over 500 lines because half of it is its tests, on the in-memory SQLite store and the file
//! mailer.

use std::collections::BTreeMap;

use async_trait::async_trait;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::{Context, Error, MANAGER};
use crate::crd::{SystemUser, Tenant};
use crate::mail::{Invitation, Mailer};
use crate::metrics::Metrics;
use crate::plan::records::{InvitationRecord, UserRecord};
use crate::plan::system_user::{
    AccessAction, AccountAction, InvitationAction, InvitationSettings, UserPlan,
};
use crate::store::UserStore;
use crate::token::{ShortCode, Token, TokenKey};

/// The invitation Secret's name for a user: `<user>-invitation`.
pub fn secret_name(user: &str) -> String {
    format!("{user}-invitation")
}

/// Where a token goes when the tenant exposes tokens (`spec.invitations.exposeToken`): the
/// person's invitation Secret, written before the mail is sent.
#[async_trait]
pub(super) trait SecretSink: Send + Sync {
    /// Write `token` and its short `code`, valid until `expires_at`, for `user`. Errors: the
    /// Kubernetes API refused.
    async fn put(
        &self,
        user: &SystemUser,
        token: &Token,
        code: ShortCode,
        expires_at: Timestamp,
    ) -> Result<(), Error>;
}

/// The invitation Secret in the person's namespace, owned by the SystemUser (so it goes with
/// it), written by server-side apply.
pub(super) struct KubeSecrets<'a> {
    /// The client.
    pub client: &'a kube::Client,
    /// Counts the write.
    pub metrics: &'a Metrics,
}

#[async_trait]
impl SecretSink for KubeSecrets<'_> {
    async fn put(
        &self,
        user: &SystemUser,
        token: &Token,
        code: ShortCode,
        expires_at: Timestamp,
    ) -> Result<(), Error> {
        let ns = user.namespace().ok_or(Error::Malformed("no namespace"))?;
        let name = secret_name(&user.name_any());
        let owner: OwnerReference = user
            .controller_owner_ref(&())
            .ok_or(Error::Malformed("no uid"))?;
        let labels: BTreeMap<&str, &str> = [
            ("app.kubernetes.io/managed-by", MANAGER),
            (
                "usher.dev/user",
                user.meta().name.as_deref().unwrap_or_default(),
            ),
        ]
        .into();
        let secret = json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": ns, "labels": labels, "ownerReferences": [owner]},
            "type": "Opaque",
            "stringData": {
                "token": token.expose(),
                "code": code.expose(),
                "expiresAt": expires_at.to_string(),
            },
        });
        Api::<Secret>::namespaced(self.client.clone(), &ns)
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&secret),
            )
            .await?;
        self.metrics.api_writes.inc();
        Ok(())
    }
}

/// Carries out a [`UserPlan`]: the store writes, the token, its Secret and its mail.
pub(super) struct Executor<'a> {
    /// The user store.
    pub store: &'a dyn UserStore,
    /// The mail transport.
    pub mailer: &'a dyn Mailer,
    /// Where exposed tokens go.
    pub secrets: &'a dyn SecretSink,
    /// Admits a bounded number of mails from sending to marking sent.
    pub gate: &'a tokio::sync::Semaphore,
    /// Counts tokens issued, mails sent and failed, and mail latency.
    pub metrics: &'a Metrics,
    /// From header when the tenant sets none.
    pub mail_from: &'a str,
    /// Base of the acceptance link when the tenant sets none.
    pub public_url: &'a str,
    /// The key tokens are derived from.
    pub key: &'a TokenKey,
}

impl<'a> Executor<'a> {
    /// The executor of a running operator, writing to `store` (the tenant's).
    pub fn of(ctx: &'a Context, store: &'a dyn UserStore, secrets: &'a dyn SecretSink) -> Self {
        Self {
            store,
            mailer: &*ctx.mailer,
            secrets,
            gate: &ctx.mail_gate,
            metrics: &ctx.metrics,
            mail_from: &ctx.settings.mail_from,
            public_url: &ctx.settings.public_url,
            key: &ctx.settings.token_key,
        }
    }

    /// Carry out `writes` for `user`, updating `account` and `latest` to what the store holds
    /// after each step, so that a failure part-way still leaves them true for the status.
    /// Errors: the store's ([`Error::Store`], a refusal included), the mailer's
    /// ([`Error::Mail`]: the invitation stays recorded and unsent, and is completed next time),
    /// the Secret's ([`Error::Kube`]), or no randomness ([`Error::Random`]).
    #[allow(clippy::too_many_arguments)]
    pub async fn carry_out(
        &self,
        user: &SystemUser,
        tenant: &Tenant,
        settings: &InvitationSettings,
        writes: &UserPlan,
        account: &mut Option<UserRecord>,
        latest: &mut Option<InvitationRecord>,
        now: Timestamp,
    ) -> Result<(), Error> {
        let store = self.store;
        if writes.revoke_first
            && let Some(acc) = account.as_ref()
        {
            store.revoke_open(&acc.id, now).await?;
            *latest = store.latest_invitation(&acc.id).await?;
        }
        // Taking access away goes first: a details update the store refuses must not keep a
        // suspended person active.
        let takes_away = matches!(
            writes.access,
            AccessAction::Suspend | AccessAction::Deactivate
        );
        if takes_away && let Some(acc) = account.as_mut() {
            self.access(acc, writes.access, latest, now).await?;
        }
        match &writes.account {
            AccountAction::Keep => {}
            AccountAction::Create(fields) => {
                *account = Some(store.create_user(fields).await?);
            }
            AccountAction::Update(fields) => {
                let id = account.as_ref().map(|a| a.id.clone()).unwrap_or_default();
                let active = account.as_ref().is_some_and(|a| a.active);
                let mut updated = store.update_user(&id, fields).await?;
                // The store's answer may predate the access change above.
                if takes_away {
                    updated.active = active;
                }
                *account = Some(updated);
            }
        }
        let Some(acc) = account.as_mut() else {
            return Ok(());
        };
        if !takes_away {
            self.access(acc, writes.access, latest, now).await?;
        }
        let expires_at = now + settings.ttl;
        let (token, expires_at) = match &writes.invitation {
            InvitationAction::Keep => return Ok(()),
            InvitationAction::Issue { attempt, trigger } => {
                let token = self.key.derive(&acc.id, *attempt, now);
                let record = InvitationRecord {
                    token_hash: token.hash(),
                    user_id: acc.id.clone(),
                    attempt: *attempt,
                    trigger: trigger.clone(),
                    created_at: now,
                    expires_at,
                    sent_at: None,
                    used_at: None,
                    revoked_at: None,
                };
                store.record_invitation(&record).await?;
                self.metrics.invitations_issued.inc();
                *latest = Some(record);
                (token, expires_at)
            }
            InvitationAction::Resend { attempt } => {
                // The same token as any mail of this attempt that went out before a crash:
                // whichever copy the person clicks, it works.
                // An invitation that expired before its mail could go (a long outage, a short
                // ttl) gets a new token and a new expiry instead: a dead link helps nobody.
                let again = latest
                    .as_ref()
                    .filter(|l| l.attempt == *attempt && l.expires_at > now)
                    .map(|l| (self.key.derive(&acc.id, *attempt, l.created_at), l))
                    .filter(|(token, l)| token.hash().matches(&l.token_hash));
                match again {
                    Some((token, l)) => (token, l.expires_at),
                    // Expired, or made under another key (or by an usher before derived
                    // tokens): a new token replaces it.
                    None => match self.rotate(&acc.id, *attempt, expires_at, latest).await? {
                        Some(token) => (token, expires_at),
                        None => return Ok(()),
                    },
                }
            }
        };
        let code = self.key.short_code(&token.hash());
        if settings.expose_token {
            self.secrets.put(user, &token, code, expires_at).await?;
        }
        // From the server's acceptance to the mark, a crash duplicates the mail: the gate keeps
        // that window to `mail_concurrency` mails.
        let permit = self
            .gate
            .acquire()
            .await
            .map_err(|_| Error::Malformed("mail gate closed"))?;
        self.send(user, tenant, &token, code, expires_at).await?;
        let sent = Timestamp::now();
        self.mark_sent(&token, sent).await?;
        drop(permit);
        if let Some(l) = latest.as_mut() {
            l.sent_at = Some(sent);
        }
        tracing::info!(fingerprint = %token.hash().fingerprint(), "invitation sent");
        Ok(())
    }

    /// Carry out `action` on the account `acc`, keeping `acc` and `latest` true to the store.
    async fn access(
        &self,
        acc: &mut UserRecord,
        action: AccessAction,
        latest: &mut Option<InvitationRecord>,
        now: Timestamp,
    ) -> Result<(), Error> {
        let store = self.store;
        match action {
            AccessAction::Keep => {}
            AccessAction::Suspend => {
                // Revoke first: a redemption between the two steps must not reactivate the
                // account.
                store.revoke_open(&acc.id, now).await?;
                store.set_active(&acc.id, false, now).await?;
                acc.active = false;
                *latest = store.latest_invitation(&acc.id).await?;
            }
            AccessAction::Restore => {
                store.set_active(&acc.id, true, now).await?;
                acc.active = true;
            }
            AccessAction::Deactivate => {
                store.set_active(&acc.id, false, now).await?;
                acc.active = false;
            }
        }
        Ok(())
    }

    /// Replace the token of the unsent invitation `attempt` with a new random one, valid until
    /// `expires_at`; None when it was sent, used or revoked meanwhile (then `latest` is read
    /// again and nothing is sent).
    async fn rotate(
        &self,
        user_id: &str,
        attempt: i32,
        expires_at: Timestamp,
        latest: &mut Option<InvitationRecord>,
    ) -> Result<Option<Token>, Error> {
        let token = Token::generate().map_err(|e| Error::Random(e.to_string()))?;
        if !self
            .store
            .rotate_unsent(user_id, attempt, &token.hash(), expires_at)
            .await?
        {
            *latest = self.store.latest_invitation(user_id).await?;
            return Ok(None);
        }
        if let Some(l) = latest.as_mut() {
            l.token_hash = token.hash();
            l.expires_at = expires_at;
        }
        Ok(Some(token))
    }

    /// Record that the mail went out, retrying a store hiccup: unrecorded, it is sent again.
    async fn mark_sent(&self, token: &Token, sent: Timestamp) -> Result<(), Error> {
        let hash = token.hash();
        let mut waits = crate::plan::retry::MARK_SENT_WAITS.iter();
        loop {
            match self.store.mark_sent(&hash, sent).await {
                Ok(()) => return Ok(()),
                Err(e) => match waits.next() {
                    Some(wait) => {
                        tracing::warn!(error = %e, fingerprint = %hash.fingerprint(), retry_in = ?wait,
                            "mail sent but not recorded yet");
                        tokio::time::sleep(*wait).await;
                    }
                    None => return Err(e.into()),
                },
            }
        }
    }

    async fn send(
        &self,
        user: &SystemUser,
        tenant: &Tenant,
        token: &Token,
        code: ShortCode,
        expires_at: Timestamp,
    ) -> Result<(), Error> {
        let policy = tenant.spec.invitations.as_ref();
        let default_accept = format!("{}/accept", self.public_url.trim_end_matches('/'));
        let mail = Invitation {
            tenant: &tenant.spec.display_name,
            from: policy
                .and_then(|p| p.from.as_deref())
                .unwrap_or(self.mail_from),
            to: &user.spec.email,
            first_name: user.spec.first_name.as_deref(),
            last_name: user.spec.last_name.as_deref(),
            accept_url: policy
                .and_then(|p| p.accept_url.as_deref())
                .unwrap_or(&default_accept),
            token: token.expose(),
            code: &code.expose(),
            expires_at,
        };
        let started = std::time::Instant::now();
        let result = async { self.mailer.send(mail.message()?).await }.await;
        self.metrics
            .mail_seconds
            .observe(started.elapsed().as_secs_f64());
        match result {
            Ok(()) => {
                self.metrics.invitations_sent.inc();
                Ok(())
            }
            Err(e) => {
                self.metrics.mail_errors.inc();
                Err(e.into())
            }
        }
    }
}

/// The executor on the in-memory SQLite store and the file mailer: what the store holds and what
/// was mailed after each kind of plan, and what a mail failure leaves.
#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use kube::api::ObjectMeta;

    use super::*;
    use crate::crd::{InvitationPolicy, ObjectRef, SystemUserSpec, TenantSpec};
    use crate::mail::FileMailer;
    use crate::plan::records::RedeemRefusal;
    use crate::plan::records::UserFields;
    use crate::plan::system_user::{self as plan, Seen};
    use crate::store::{Accounts, Invitations, SqlStore, StoreError};

    /// Remembers the tokens and short codes it was given, as the Secret would hold them.
    #[derive(Default)]
    struct Remembered(Mutex<Vec<(String, String)>>);

    #[async_trait]
    impl SecretSink for Remembered {
        async fn put(
            &self,
            _: &SystemUser,
            token: &Token,
            code: ShortCode,
            _: Timestamp,
        ) -> Result<(), Error> {
            self.0
                .lock()
                .unwrap()
                .push((token.expose().to_string(), code.expose()));
            Ok(())
        }
    }

    struct Bench {
        store: SqlStore,
        mailer: FileMailer,
        outbox: tempfile::TempDir,
        secrets: Remembered,
        gate: tokio::sync::Semaphore,
        metrics: Metrics,
        key: TokenKey,
    }

    impl Bench {
        async fn new() -> Self {
            let outbox = tempfile::tempdir().unwrap();
            Self {
                store: SqlStore::memory().await.unwrap(),
                mailer: FileMailer::new(outbox.path().join("mail")),
                outbox,
                secrets: Remembered::default(),
                gate: tokio::sync::Semaphore::new(1),
                metrics: Metrics::default(),
                key: TokenKey::generate().unwrap(),
            }
        }

        fn executor(&self) -> Executor<'_> {
            Executor {
                store: &self.store,
                mailer: &self.mailer,
                secrets: &self.secrets,
                gate: &self.gate,
                metrics: &self.metrics,
                mail_from: "usher@ops.example",
                public_url: "https://usher.example",
                key: &self.key,
            }
        }

        /// Read what the controller would, decide, and carry it out, as one reconcile does.
        async fn reconcile(&self, user: &SystemUser, tenant: &Tenant) -> Result<(), Error> {
            self.reconcile_with(user, tenant, &self.mailer, Timestamp::now())
                .await
        }

        /// [`Bench::reconcile`], handing mail to `mailer`, with the clock at `now`.
        async fn reconcile_with(
            &self,
            user: &SystemUser,
            tenant: &Tenant,
            mailer: &dyn Mailer,
            now: Timestamp,
        ) -> Result<(), Error> {
            let mut account = self
                .store
                .user_by_external_id(&format!("acme/{}", user.name_any()))
                .await?;
            let mut latest = match &account {
                Some(a) => self.store.latest_invitation(&a.id).await?,
                None => None,
            };
            let decision = plan::decide(
                user,
                &Seen {
                    tenant: Some(tenant),
                    peers: &[],
                    account: account.as_ref(),
                    own: true,
                    latest: latest.as_ref(),
                    assignments: &[],
                    roles: vec![],
                    desired: vec![],
                    expires: None,
                },
            );
            let settings = decision.settings.clone().unwrap();
            let executor = Executor {
                mailer,
                ..self.executor()
            };
            executor
                .carry_out(
                    user,
                    tenant,
                    &settings,
                    &decision.writes,
                    &mut account,
                    &mut latest,
                    now,
                )
                .await
        }

        /// Sam's account and its newest invitation, as the store holds them now.
        async fn sam(&self) -> (UserRecord, Option<InvitationRecord>) {
            let account = self
                .store
                .user_by_external_id("acme/sam")
                .await
                .unwrap()
                .unwrap();
            let latest = self.store.latest_invitation(&account.id).await.unwrap();
            (account, latest)
        }

        /// Each mail in the outbox: (recipient, token, short code), sorted (file times are too
        /// coarse to tell the order of two mails sent within milliseconds).
        fn mailed(&self) -> Vec<(String, String, String)> {
            let Ok(dir) = std::fs::read_dir(self.outbox.path().join("mail")) else {
                return vec![];
            };
            let mut mails: Vec<(String, String, String)> = dir
                .map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|e| e == "eml"))
                .map(|p| {
                    let raw = std::fs::read(p).unwrap();
                    let msg = mail_parser::MessageParser::default().parse(&raw).unwrap();
                    let to = msg.to().unwrap().first().unwrap().address().unwrap();
                    let text = msg.body_text(0).unwrap().into_owned();
                    let token = text
                        .split_whitespace()
                        .find_map(|w| w.split_once("/accept?token=").map(|(_, t)| t.to_string()))
                        .unwrap();
                    let code = text
                        .split_whitespace()
                        .find(|w| crate::token::ShortCode::parse(w).is_some() && w.contains('-'))
                        .unwrap()
                        .to_string();
                    (to.to_string(), token, code)
                })
                .collect();
            mails.sort();
            mails
        }

        async fn redeem(&self, token: &str) -> Result<(), RedeemRefusal> {
            self.store
                .redeem(&crate::token::TokenHash::of(token), Timestamp::now())
                .await
                .unwrap()
                .map(|_| ())
        }
    }

    fn tenant(expose: bool) -> Tenant {
        Tenant::new(
            "acme",
            TenantSpec {
                display_name: "Acme".into(),
                contact: None,
                invitations: Some(InvitationPolicy {
                    expose_token: Some(expose),
                    ..Default::default()
                }),
                roles: None,
                store: None,
                offboarding: None,
            },
        )
    }

    fn person(email: &str) -> SystemUser {
        let mut u = SystemUser::new(
            "sam",
            SystemUserSpec {
                tenant_ref: ObjectRef::new("acme"),
                email: email.into(),
                first_name: Some("Sam".into()),
                ..Default::default()
            },
        );
        u.metadata = ObjectMeta {
            name: Some("sam".into()),
            namespace: Some("acme".into()),
            uid: Some("uid-sam".into()),
            generation: Some(1),
            ..Default::default()
        };
        u
    }

    #[tokio::test]
    async fn a_new_person_gets_one_recorded_token_one_mail_and_a_sent_mark() {
        let b = Bench::new().await;
        b.reconcile(&person("sam@acme.example"), &tenant(true))
            .await
            .unwrap();
        let mailed = b.mailed();
        assert_eq!(mailed.len(), 1);
        assert_eq!(mailed[0].0, "sam@acme.example");
        // The Secret got the token and short code the mail carries; the store only the token's
        // hash, marked sent. The code is the one the key gives for that hash.
        let (_, token, code) = &mailed[0];
        assert_eq!(
            *b.secrets.0.lock().unwrap(),
            vec![(token.clone(), code.clone())]
        );
        let hash = crate::token::TokenHash::of(token);
        assert_eq!(&b.key.short_code(&hash).expose(), code);
        let (account, latest) = b.sam().await;
        assert!(!account.active);
        let latest = latest.unwrap();
        assert_eq!(latest.token_hash, crate::token::TokenHash::of(&mailed[0].1));
        assert_eq!(latest.attempt, 1);
        assert!(latest.sent_at.is_some());
        // Nothing left to do: a second reconcile sends nothing.
        b.reconcile(&person("sam@acme.example"), &tenant(true))
            .await
            .unwrap();
        assert_eq!(b.mailed().len(), 1);
        assert_eq!(b.metrics.invitations_sent.get(), 1);
    }

    #[tokio::test]
    async fn an_address_change_revokes_the_old_token_before_mailing_the_new_address() {
        let b = Bench::new().await;
        b.reconcile(&person("sam@acme.exmaple"), &tenant(false))
            .await
            .unwrap();
        b.reconcile(&person("sam@acme.example"), &tenant(false))
            .await
            .unwrap();
        let mailed = b.mailed();
        let [(new, new_token, _), (old, old_token, _)] = &mailed[..] else {
            panic!("two mails expected, got {}", mailed.len());
        };
        assert_eq!(
            (new.as_str(), old.as_str()),
            ("sam@acme.example", "sam@acme.exmaple")
        );
        assert_eq!(b.redeem(old_token).await, Err(RedeemRefusal::Expired));
        assert_eq!(b.redeem(new_token).await, Ok(()));
        let (account, latest) = b.sam().await;
        assert_eq!(account.email, "sam@acme.example");
        let latest = latest.unwrap();
        assert_eq!(latest.attempt, 2);
    }

    #[tokio::test]
    async fn a_mail_failure_leaves_the_invitation_unsent_and_the_next_reconcile_completes_it() {
        let b = Bench::new().await;
        // The outbox path is a file: the mailer cannot write there.
        std::fs::write(b.outbox.path().join("mail"), b"").unwrap();
        let failed = b
            .reconcile(&person("sam@acme.example"), &tenant(false))
            .await;
        assert!(matches!(failed, Err(Error::Mail(_))), "{failed:?}");
        let (_, unsent) = b.sam().await;
        let unsent = unsent.unwrap();
        assert!(unsent.sent_at.is_none() && unsent.open());
        assert_eq!(b.metrics.mail_errors.get(), 1);

        std::fs::remove_file(b.outbox.path().join("mail")).unwrap();
        b.reconcile(&person("sam@acme.example"), &tenant(false))
            .await
            .unwrap();
        let mailed = b.mailed();
        assert_eq!(mailed.len(), 1);
        // The same attempt and the same token, made again from the key: nothing was rewritten.
        let done = b.sam().await.1.unwrap();
        assert_eq!(done.attempt, 1);
        assert_eq!(done.token_hash, unsent.token_hash);
        assert_eq!(done.expires_at, unsent.expires_at);
        assert!(done.sent_at.is_some());
        assert_eq!(b.redeem(&mailed[0].1).await, Ok(()));
    }

    /// A relay that takes the first message and then loses the connection before answering, as
    /// a crash between "relay accepted" and "marked sent" looks to usher.
    struct AcceptedThenLost {
        inner: FileMailer,
        calls: std::sync::atomic::AtomicUsize,
    }

    #[async_trait]
    impl Mailer for AcceptedThenLost {
        async fn send(&self, message: lettre::Message) -> Result<(), crate::mail::MailError> {
            self.inner.send(message).await?;
            match self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) {
                0 => Err(crate::mail::MailError::Transport("connection lost".into())),
                _ => Ok(()),
            }
        }
    }

    #[tokio::test]
    async fn a_mail_sent_twice_carries_one_link_and_the_first_copy_redeems() {
        let b = Bench::new().await;
        let lossy = AcceptedThenLost {
            inner: FileMailer::new(b.outbox.path().join("mail")),
            calls: Default::default(),
        };
        let sam = person("sam@acme.example");
        let acme = tenant(false);
        for attempt in 0..2 {
            let done = b
                .reconcile_with(&sam, &acme, &lossy, Timestamp::now())
                .await;
            assert_eq!(done.is_ok(), attempt == 1, "{done:?}");
        }
        let mailed = b.mailed();
        assert_eq!(mailed.len(), 2, "the mail went out twice");
        assert_eq!(mailed[0].1, mailed[1].1, "with one link");
        assert_eq!(mailed[0].2, mailed[1].2, "and one short code");
        assert_eq!(b.redeem(&mailed[0].1).await, Ok(()));
    }

    #[tokio::test]
    async fn an_unsent_invitation_that_expired_meanwhile_goes_out_with_a_new_token_and_expiry() {
        let b = Bench::new().await;
        std::fs::write(b.outbox.path().join("mail"), b"").unwrap();
        let sam = person("sam@acme.example");
        let short = {
            let mut t = tenant(false);
            t.spec.invitations.as_mut().unwrap().ttl = Some("5m".into());
            t
        };
        assert!(b.reconcile(&sam, &short).await.is_err(), "the mail fails");
        let (_, unsent) = b.sam().await;
        let unsent = unsent.unwrap();
        std::fs::remove_file(b.outbox.path().join("mail")).unwrap();
        // Six minutes later (the executor is handed the clock), the ttl has passed.
        let later = Timestamp::now() + jiff::SignedDuration::from_mins(6);
        b.reconcile_with(&sam, &short, &b.mailer, later)
            .await
            .unwrap();
        let sent = b.sam().await.1.unwrap();
        assert_ne!(sent.token_hash, unsent.token_hash, "a new token");
        assert!(sent.expires_at > later, "valid from now on");
        assert_eq!(b.mailed().len(), 1);
    }

    #[tokio::test]
    async fn suspension_revokes_the_open_token_and_deactivates() {
        let b = Bench::new().await;
        b.reconcile(&person("sam@acme.example"), &tenant(false))
            .await
            .unwrap();
        let token = b.mailed()[0].1.clone();
        let mut suspended = person("sam@acme.example");
        suspended.spec.suspended = true;
        b.reconcile(&suspended, &tenant(false)).await.unwrap();
        assert_eq!(b.redeem(&token).await, Err(RedeemRefusal::Expired));
        let (account, _) = b.sam().await;
        assert!(!account.active);
        assert_eq!(b.mailed().len(), 1);
    }

    #[tokio::test]
    async fn a_suspension_goes_through_even_when_the_store_refuses_the_details() {
        let b = Bench::new().await;
        b.reconcile(&person("sam@acme.example"), &tenant(false))
            .await
            .unwrap();
        let token = b.mailed()[0].1.clone();
        assert_eq!(b.redeem(&token).await, Ok(()));
        // Someone else holds the address Sam's file now names: the store refuses the update.
        let ann = UserFields {
            tenant: "acme/acme".into(),
            external_id: "acme/ann".into(),
            email: "ann@acme.example".into(),
            profile: Default::default(),
        };
        b.store.create_user(&ann).await.unwrap();
        let mut moved = person("ann@acme.example");
        moved.spec.suspended = true;
        let refused = b.reconcile(&moved, &tenant(false)).await;
        assert!(
            matches!(
                refused,
                Err(Error::Store(StoreError::Refused { status: 409, .. }))
            ),
            "{refused:?}"
        );
        // Suspended all the same: access goes before the details.
        let (account, _) = b.sam().await;
        assert!(!account.active);
        assert_eq!(account.email, "sam@acme.example");
    }
}
