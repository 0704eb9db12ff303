//! The SQL stores: SQLite (embedded, one file in WAL mode) and PostgreSQL, through one
//! implementation on sqlx's `Any` driver. The queries are written once, in the dialect both
//! speak (`$N` parameters, `ON CONFLICT`, `RETURNING`, `WITH RECURSIVE`); each database has its
//! own migrations only because their column types differ (PostgreSQL needs BIGINT for
//! microsecond times). Lists are sorted in Rust, so a PostgreSQL collation cannot reorder them
//! and make a comparison with the desired state fail forever.
//!
//! Over 500 lines because it is one implementation of all five ports (see `port.rs`), in one
//! impl block per port, whose queries share the row conversions at the end; splitting it by port
//! would scatter those, and the SQL is easiest to review in one place.

use std::time::Duration;

use async_trait::async_trait;
use jiff::Timestamp;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};

use super::{
    Accounts, Catalogue, Health, Invitations, OffboardingLedger, StoreError, from_micros, micros,
    new_id,
};
use crate::plan::records::{
    Assignment, Grant, GroupRecord, InvitationRecord, Profile, RedeemRefusal, Redeemed, RoleRecord,
    TenantRecord, UserFields, UserRecord,
};
use crate::token::TokenHash;

/// Which SQL database a [`SqlStore`] speaks to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite, a file or memory.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// The refusal of an account whose address another account of its tenant holds (the unique
/// index of migration 0004), as the SCIM store says it: 409, naming the address. Any other
/// database error stays a backend error.
fn address_taken(e: sqlx::Error, fields: &UserFields) -> StoreError {
    match &e {
        sqlx::Error::Database(db)
            if db.is_unique_violation()
                && (db.constraint() == Some("users_one_account_per_address")
                    || db.message().contains("email_lower")) =>
        {
            StoreError::Refused {
                status: 409,
                detail: format!(
                    "another account of tenant {} already has the address {}",
                    fields.tenant,
                    fields.email.to_lowercase()
                ),
            }
        }
        _ => e.into(),
    }
}

/// A user store in a SQL database.
pub struct SqlStore {
    pool: AnyPool,
}

impl SqlStore {
    /// Connect to `url` (`sqlite://PATH`, `sqlite::memory:`, `postgres://…`) and migrate the
    /// schema. A SQLite file is created if missing.
    pub async fn connect(url: &str, dialect: Dialect) -> Result<Self, StoreError> {
        Self::connect_in(url, dialect, None).await
    }

    /// [`SqlStore::connect`], with PostgreSQL's tables in `schema` (created if missing) rather
    /// than the connection's default; ignored for SQLite. Errors as `connect`.
    pub async fn connect_in(
        url: &str,
        dialect: Dialect,
        schema: Option<&str>,
    ) -> Result<Self, StoreError> {
        sqlx::any::install_default_drivers();
        // Quoted as an identifier; usher makes these names itself (`usher_<hex>`).
        let schema = schema
            .filter(|_| dialect == Dialect::Postgres)
            .map(|s| format!("\"{}\"", s.replace('"', "")));
        let memory = url == "sqlite::memory:";
        let (url, connections) = match dialect {
            // One connection to a memory database, or every query would see another database.
            Dialect::Sqlite if memory => (url.to_string(), 1),
            Dialect::Sqlite if url.contains('?') => (url.to_string(), 4),
            Dialect::Sqlite => (format!("{url}?mode=rwc"), 4),
            Dialect::Postgres => (url.to_string(), 8),
        };
        let pool = AnyPoolOptions::new()
            .max_connections(connections)
            .acquire_timeout(Duration::from_secs(10))
            // sqlx pings a connection each time it is taken from the pool. To a SQLite file that
            // is one more round trip to the connection's thread for every query, and it finds
            // nothing: the file does not go away as a server's connection can. A failing query
            // still reports its own error.
            .test_before_acquire(dialect == Dialect::Postgres)
            .after_connect(move |conn, _| {
                let schema = schema.clone();
                Box::pin(async move {
                    if let Some(schema) = schema {
                        let sql = format!(
                            "CREATE SCHEMA IF NOT EXISTS {schema}; SET search_path TO {schema}"
                        );
                        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                            .execute(&mut *conn)
                            .await?;
                    }
                    if dialect == Dialect::Sqlite {
                        // WAL lets the redeem API read while a reconcile writes; NORMAL is
                        // durable across process crashes in WAL mode.
                        if !memory {
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                        }
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                        conn.execute("PRAGMA busy_timeout = 5000").await?;
                        // Each connection keeps its own page cache (2 MiB by default), filled
                        // as redemptions and reconciles touch the whole file: 8 MiB for four
                        // connections at 10,000 people. The kernel's page cache holds the file
                        // anyway, so a miss costs a read, not a disk access.
                        conn.execute("PRAGMA cache_size = -512").await?;
                    }
                    Ok(())
                })
            })
            .connect(&url)
            .await?;
        let migrated = match dialect {
            Dialect::Sqlite => sqlx::migrate!("./migrations/sqlite").run(&pool).await,
            Dialect::Postgres => sqlx::migrate!("./migrations/postgres").run(&pool).await,
        };
        migrated.map_err(|e| StoreError::Backend(format!("migrating the schema: {e}")))?;
        let shared =
            sqlx::query("SELECT tenant, external_id FROM users WHERE holds_address IS NULL")
                .fetch_all(&pool)
                .await?;
        for row in &shared {
            let tenant: String = row.try_get("tenant")?;
            let account: String = row.try_get("external_id")?;
            tracing::warn!(%tenant, %account,
                "this account shares its address with another account of its tenant (made before usher kept one account per address); it is kept as it is, and is the one restored last. Delete one of the two SystemUsers, or change its spec.email");
        }
        Ok(Self { pool })
    }

    /// A private in-memory SQLite database.
    pub async fn memory() -> Result<Self, StoreError> {
        Self::connect("sqlite::memory:", Dialect::Sqlite).await
    }

    /// Record an account under an id another system gave it (the SCIM store's local shadow),
    /// replacing any earlier row for the same SystemUser — its account is gone from there.
    pub(super) async fn adopt_user(
        &self,
        id: &str,
        fields: &UserFields,
        accepted: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        self.adopt(id, None, fields, accepted).await
    }

    /// [`Self::adopt_user`], the new row on the SCIM User `scim_id` when given (else its own).
    async fn adopt(
        &self,
        id: &str,
        scim_id: Option<&str>,
        fields: &UserFields,
        accepted: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        let now = micros(Timestamp::now());
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM users WHERE external_id = $1 AND id != $2")
            .bind(&fields.external_id)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let adopted = sqlx::query(
            "INSERT INTO users (id, tenant, external_id, email, email_lower, profile, active,
             activated_us, created_us, updated_us, attributes, scim_id)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
             ON CONFLICT (id) DO UPDATE SET tenant = excluded.tenant,
             external_id = excluded.external_id, email = excluded.email,
             email_lower = excluded.email_lower, profile = excluded.profile,
             updated_us = excluded.updated_us, attributes = excluded.attributes
             WHERE users.scim_id IS NULL",
        )
        .bind(id)
        .bind(&fields.tenant)
        .bind(&fields.external_id)
        .bind(&fields.email)
        .bind(fields.email.to_lowercase())
        .bind(profile_json(fields)?)
        .bind(i64::from(accepted.is_some()))
        .bind(accepted.map(micros))
        .bind(now)
        .bind(now)
        .bind(attributes_json(fields)?)
        .bind(scim_id.filter(|s| *s != id))
        .execute(&mut *tx)
        .await?;
        // The id is an account that moved to another User: the server gave an id it gave
        // before (RFC 7643 forbids it), and that account is not another's to take.
        if adopted.rows_affected() == 0 {
            return Err(StoreError::Backend(format!(
                "the SCIM server reuses the id {id} of another account's earlier User; not adopted"
            )));
        }
        tx.commit().await?;
        Ok(())
    }

    /// Write an account's fields (`id` stays where it is, on its SCIM User).
    pub(super) async fn update_account(
        &self,
        id: &str,
        fields: &UserFields,
    ) -> Result<(), StoreError> {
        self.write_account(id, None, fields).await
    }

    /// Write an account's fields and move it to the SCIM User `scim_id`, in one statement.
    pub(super) async fn move_user(
        &self,
        id: &str,
        scim_id: &str,
        fields: &UserFields,
    ) -> Result<(), StoreError> {
        self.write_account(id, Some(scim_id), fields).await
    }

    async fn write_account(
        &self,
        id: &str,
        scim_id: Option<&str>,
        fields: &UserFields,
    ) -> Result<(), StoreError> {
        let moved = sqlx::query(
            "UPDATE users SET tenant = $1, external_id = $2, email = $3, email_lower = $4,
             profile = $5, attributes = $6, updated_us = $7,
             holds_address = CASE WHEN email_lower = $4 THEN holds_address ELSE 1 END,
             scim_id = CASE WHEN $8 = 1 THEN (CASE WHEN $9 = id THEN NULL ELSE $9 END)
                            ELSE scim_id END
             WHERE id = $10",
        )
        .bind(&fields.tenant)
        .bind(&fields.external_id)
        .bind(&fields.email)
        .bind(fields.email.to_lowercase())
        .bind(profile_json(fields)?)
        .bind(attributes_json(fields)?)
        .bind(micros(Timestamp::now()))
        .bind(i64::from(scim_id.is_some()))
        .bind(scim_id.unwrap_or_default())
        .bind(id)
        .execute(&self.pool)
        .await
        .map_err(|e| address_taken(e, fields))?;
        if moved.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("account {id}")));
        }
        Ok(())
    }

    /// Record an account of a SystemUser (`fields.external_id`) whose SCIM User, `scim_id`, is
    /// another account's too (the same person in another tenant): a row of its own under `id`,
    /// inactive, replacing any earlier row of that SystemUser.
    pub(super) async fn link_user(
        &self,
        id: &str,
        scim_id: &str,
        fields: &UserFields,
    ) -> Result<(), StoreError> {
        self.adopt(id, Some(scim_id), fields, None).await
    }

    /// The SCIM User id of the account `id`; None when there is no such account.
    pub(super) async fn scim_id_of(&self, id: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT COALESCE(scim_id, id) AS s FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("s")).transpose()?)
    }

    /// The accounts whose SCIM User is `scim_id`, oldest first.
    pub(super) async fn accounts_of_scim_user(
        &self,
        scim_id: &str,
    ) -> Result<Vec<UserRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT * FROM users WHERE scim_id = $1 OR (scim_id IS NULL AND id = $1)
             ORDER BY created_us, id",
        )
        .bind(scim_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(user_from_row).collect()
    }

    /// The accounts of `tenant`, each with its SCIM User id.
    pub(super) async fn accounts_of_tenant(
        &self,
        tenant: &str,
    ) -> Result<Vec<(UserRecord, String)>, StoreError> {
        let rows = sqlx::query(
            "SELECT *, COALESCE(scim_id, id) AS scim FROM users WHERE tenant = $1
             ORDER BY external_id",
        )
        .bind(tenant)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((user_from_row(r)?, r.try_get("scim")?)))
            .collect()
    }

    /// The person fields a SCIM product was seen not to keep (`store_limits`), sorted.
    pub(super) async fn limits(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT field FROM store_limits ORDER BY field")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok(r.try_get::<String, _>("field")?))
            .collect()
    }

    /// Remember that the product does not keep `field`.
    pub(super) async fn remember_limit(&self, field: &str) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO store_limits (field, noticed_us) VALUES ($1, $2) ON CONFLICT (field) DO NOTHING",
        )
        .bind(field)
        .bind(micros(Timestamp::now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// The accounts of `tenant` holding any of `roles`.
    pub(super) async fn holders(
        &self,
        tenant: &str,
        roles: &[String],
    ) -> Result<Vec<String>, StoreError> {
        let mut out = Vec::new();
        for role in roles {
            let rows = sqlx::query(
                "SELECT DISTINCT a.user_id FROM role_assignments a JOIN users u ON u.id = a.user_id
                 WHERE u.tenant = $1 AND a.role = $2",
            )
            .bind(tenant)
            .bind(role)
            .fetch_all(&self.pool)
            .await?;
            for r in &rows {
                out.push(r.try_get::<String, _>("user_id")?);
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Forget that the product does not keep `field`: it keeps it now.
    pub(super) async fn forget_limit(&self, field: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM store_limits WHERE field = $1")
            .bind(field)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// An account by id.
    pub(super) async fn user(&self, id: &str) -> Result<Option<UserRecord>, StoreError> {
        sqlx::query("SELECT * FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(user_from_row)
            .transpose()
    }

    /// The account holding a RoleBinding's assignment.
    pub(super) async fn holder_of(&self, binding: &str) -> Result<Option<String>, StoreError> {
        let row = sqlx::query("SELECT user_id FROM role_assignments WHERE binding = $1")
            .bind(binding)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|r| r.try_get("user_id")).transpose()?)
    }
}

fn user_from_row(row: &AnyRow) -> Result<UserRecord, StoreError> {
    let profile: String = row.try_get("profile")?;
    let attributes: String = row.try_get("attributes")?;
    let mut profile = serde_json::from_str::<Profile>(&profile)
        .map_err(|e| StoreError::Backend(format!("bad stored profile: {e}")))?;
    profile.attributes = serde_json::from_str(&attributes)
        .map_err(|e| StoreError::Backend(format!("bad stored attributes: {e}")))?;
    Ok(UserRecord {
        id: row.try_get("id")?,
        tenant: row.try_get("tenant")?,
        external_id: row.try_get("external_id")?,
        email: row.try_get("email")?,
        profile,
        active: row.try_get::<i64, _>("active")? != 0,
        activated_at: row
            .try_get::<Option<i64>, _>("activated_us")?
            .map(from_micros)
            .transpose()?,
    })
}

fn invitation_from_row(row: &AnyRow) -> Result<InvitationRecord, StoreError> {
    let time = |col: &str| -> Result<Option<Timestamp>, StoreError> {
        row.try_get::<Option<i64>, _>(col)?
            .map(from_micros)
            .transpose()
    };
    Ok(InvitationRecord {
        token_hash: TokenHash::from_stored(row.try_get("token_hash")?),
        user_id: row.try_get("user_id")?,
        attempt: row.try_get::<i64, _>("attempt")? as i32,
        trigger: row.try_get("trigger")?,
        created_at: from_micros(row.try_get("created_us")?)?,
        expires_at: from_micros(row.try_get("expires_us")?)?,
        sent_at: time("sent_us")?,
        used_at: time("used_us")?,
        revoked_at: time("revoked_us")?,
    })
}

/// A list in Rust's order, whatever the database's collation.
fn sorted<T: Ord>(mut list: Vec<T>) -> Vec<T> {
    list.sort();
    list
}

fn profile_json(fields: &UserFields) -> Result<String, StoreError> {
    serde_json::to_string(&fields.profile)
        .map_err(|e| StoreError::Backend(format!("encoding a profile: {e}")))
}

/// The `attributes` column: a JSON object of name → value.
fn attributes_json(fields: &UserFields) -> Result<String, StoreError> {
    serde_json::to_string(&fields.profile.attributes)
        .map_err(|e| StoreError::Backend(format!("encoding attributes: {e}")))
}

#[async_trait]
impl Health for SqlStore {
    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}

#[async_trait]
impl Accounts for SqlStore {
    async fn unkept_fields(&self) -> Result<Vec<String>, StoreError> {
        // A SQL store keeps everything; its `store_limits` speak for a SCIM product.
        Ok(Vec::new())
    }

    async fn user_by_external_id(
        &self,
        external_id: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        sqlx::query("SELECT * FROM users WHERE external_id = $1")
            .bind(external_id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(user_from_row)
            .transpose()
    }

    async fn create_user(&self, fields: &UserFields) -> Result<UserRecord, StoreError> {
        let id = new_id()?;
        let now = micros(Timestamp::now());
        sqlx::query(
            "INSERT INTO users (id, tenant, external_id, email, email_lower, profile, active,
             created_us, updated_us, attributes) VALUES ($1, $2, $3, $4, $5, $6, 0, $7, $8, $9)",
        )
        .bind(&id)
        .bind(&fields.tenant)
        .bind(&fields.external_id)
        .bind(&fields.email)
        .bind(fields.email.to_lowercase())
        .bind(profile_json(fields)?)
        .bind(now)
        .bind(now)
        .bind(attributes_json(fields)?)
        .execute(&self.pool)
        .await
        .map_err(|e| address_taken(e, fields))?;
        Ok(UserRecord::created(id, fields))
    }

    async fn update_user(&self, id: &str, fields: &UserFields) -> Result<UserRecord, StoreError> {
        let row = sqlx::query(
            "UPDATE users SET tenant = $1, external_id = $2, email = $3, email_lower = $4,
             profile = $5, updated_us = $6, attributes = $8,
             holds_address = CASE WHEN email_lower = $4 THEN holds_address ELSE 1 END
             WHERE id = $7
             RETURNING *",
        )
        .bind(&fields.tenant)
        .bind(&fields.external_id)
        .bind(&fields.email)
        .bind(fields.email.to_lowercase())
        .bind(profile_json(fields)?)
        .bind(micros(Timestamp::now()))
        .bind(id)
        .bind(attributes_json(fields)?)
        .fetch_optional(&self.pool)
        .await
        .map_err(|e| address_taken(e, fields))?
        .ok_or_else(|| StoreError::NotFound(format!("account {id}")))?;
        user_from_row(&row)
    }

    async fn users_of_tenant(&self, tenant: &str) -> Result<Vec<UserRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM users WHERE tenant = $1 ORDER BY external_id")
            .bind(tenant)
            .fetch_all(&self.pool)
            .await?;
        let mut users = rows
            .iter()
            .map(user_from_row)
            .collect::<Result<Vec<_>, _>>()?;
        users.sort_by(|a, b| a.external_id.cmp(&b.external_id));
        Ok(users)
    }

    async fn user_by_email(
        &self,
        tenant: &str,
        email: &str,
    ) -> Result<Option<UserRecord>, StoreError> {
        // The account holding the address first; one that shares it from before the rule
        // (migration 0004) only when no other has it.
        sqlx::query(
            "SELECT * FROM users WHERE tenant = $1 AND email_lower = $2
             ORDER BY CASE WHEN holds_address IS NULL THEN 1 ELSE 0 END, created_us LIMIT 1",
        )
        .bind(tenant)
        .bind(email.to_lowercase())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(user_from_row)
        .transpose()
    }

    async fn delete_user(&self, id: &str) -> Result<(), StoreError> {
        // Invitations and assignments go with it (ON DELETE CASCADE).
        sqlx::query("DELETE FROM users WHERE id = $1")
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn set_active(&self, id: &str, active: bool, now: Timestamp) -> Result<(), StoreError> {
        sqlx::query("UPDATE users SET active = $1, updated_us = $2 WHERE id = $3")
            .bind(i64::from(active))
            .bind(micros(now))
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}

#[async_trait]
impl OffboardingLedger for SqlStore {
    async fn record_offboarding(&self, tenant: &str, at: Timestamp) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO offboardings (tenant, at_us) VALUES ($1, $2)")
            .bind(tenant)
            .bind(micros(at))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn offboardings_since(&self, tenant: &str, since: Timestamp) -> Result<u64, StoreError> {
        let row =
            sqlx::query("SELECT COUNT(*) AS n FROM offboardings WHERE tenant = $1 AND at_us >= $2")
                .bind(tenant)
                .bind(micros(since))
                .fetch_one(&self.pool)
                .await?;
        Ok(row.try_get::<i64, _>("n")? as u64)
    }

    async fn release(
        &self,
        tenant: &str,
        value: &str,
        at: Timestamp,
    ) -> Result<Timestamp, StoreError> {
        // A new value moves the release to now; the same value keeps the recorded moment.
        sqlx::query(
            "INSERT INTO offboarding_releases (tenant, value, at_us) VALUES ($1, $2, $3)
             ON CONFLICT (tenant) DO UPDATE SET value = excluded.value, at_us = excluded.at_us
             WHERE offboarding_releases.value != excluded.value",
        )
        .bind(tenant)
        .bind(value)
        .bind(micros(at))
        .execute(&self.pool)
        .await?;
        let row = sqlx::query("SELECT at_us FROM offboarding_releases WHERE tenant = $1")
            .bind(tenant)
            .fetch_one(&self.pool)
            .await?;
        from_micros(row.try_get("at_us")?)
    }
}

#[async_trait]
impl Invitations for SqlStore {
    async fn invitations_for_address(&self, email: &str) -> Result<Vec<TokenHash>, StoreError> {
        let rows = sqlx::query(
            "SELECT i.token_hash FROM invitations i JOIN users u ON u.id = i.user_id
             WHERE u.email_lower = $1 ORDER BY i.created_us DESC LIMIT $2",
        )
        .bind(email.to_lowercase())
        .bind(super::port::ADDRESS_LOOKUP_LIMIT)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok(TokenHash::from_stored(r.try_get("token_hash")?)))
            .collect()
    }

    async fn latest_invitation(
        &self,
        user_id: &str,
    ) -> Result<Option<InvitationRecord>, StoreError> {
        sqlx::query("SELECT * FROM invitations WHERE user_id = $1 ORDER BY attempt DESC LIMIT 1")
            .bind(user_id)
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(invitation_from_row)
            .transpose()
    }

    async fn record_invitation(&self, inv: &InvitationRecord) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "UPDATE invitations SET revoked_us = $1 WHERE user_id = $2 AND used_us IS NULL
             AND revoked_us IS NULL",
        )
        .bind(micros(inv.created_at))
        .bind(&inv.user_id)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO invitations (token_hash, user_id, attempt, trigger, created_us,
             expires_us, sent_us) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(inv.token_hash.as_str())
        .bind(&inv.user_id)
        .bind(i64::from(inv.attempt))
        .bind(&inv.trigger)
        .bind(micros(inv.created_at))
        .bind(micros(inv.expires_at))
        .bind(inv.sent_at.map(micros))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn rotate_unsent(
        &self,
        user_id: &str,
        attempt: i32,
        new_hash: &TokenHash,
        expires_at: Timestamp,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE invitations SET token_hash = $1, expires_us = $2 WHERE user_id = $3
             AND attempt = $4 AND sent_us IS NULL AND used_us IS NULL AND revoked_us IS NULL",
        )
        .bind(new_hash.as_str())
        .bind(micros(expires_at))
        .bind(user_id)
        .bind(i64::from(attempt))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    async fn mark_sent(&self, hash: &TokenHash, at: Timestamp) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE invitations SET sent_us = $1 WHERE token_hash = $2 AND sent_us IS NULL",
        )
        .bind(micros(at))
        .bind(hash.as_str())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn revoke_open(&self, user_id: &str, at: Timestamp) -> Result<u64, StoreError> {
        let done = sqlx::query(
            "UPDATE invitations SET revoked_us = $1 WHERE user_id = $2 AND used_us IS NULL
             AND revoked_us IS NULL",
        )
        .bind(micros(at))
        .bind(user_id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }

    async fn redeem(
        &self,
        hash: &TokenHash,
        now: Timestamp,
    ) -> Result<Result<Redeemed, RedeemRefusal>, StoreError> {
        let now_us = micros(now);
        let mut tx = self.pool.begin().await?;
        // The conditional UPDATE is the single-use guarantee: of two concurrent redemptions
        // only one changes the row.
        let won = sqlx::query(
            "UPDATE invitations SET used_us = $1 WHERE token_hash = $2 AND used_us IS NULL
             AND revoked_us IS NULL AND expires_us > $3 RETURNING token_hash, user_id",
        )
        .bind(now_us)
        .bind(hash.as_str())
        .bind(now_us)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = won else {
            let found = sqlx::query("SELECT * FROM invitations WHERE token_hash = $1")
                .bind(hash.as_str())
                .fetch_optional(&mut *tx)
                .await?;
            return Ok(Err(
                match found.as_ref().map(invitation_from_row).transpose()? {
                    None => RedeemRefusal::Unknown,
                    Some(inv) if inv.used_at.is_some() => RedeemRefusal::AlreadyUsed,
                    Some(_) => RedeemRefusal::Expired,
                },
            ));
        };
        let stored = TokenHash::from_stored(row.try_get("token_hash")?);
        if !stored.matches(hash) {
            return Ok(Err(RedeemRefusal::Unknown));
        }
        let user_id: String = row.try_get("user_id")?;
        let user = sqlx::query(
            "UPDATE users SET active = 1, activated_us = COALESCE(activated_us, $1), updated_us = $2
             WHERE id = $3 RETURNING *",
        )
        .bind(now_us)
        .bind(now_us)
        .bind(&user_id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("account {user_id}")))?;
        let user = user_from_row(&user)?;
        tx.commit().await?;
        Ok(Ok(Redeemed {
            user_id,
            external_id: user.external_id,
            tenant: user.tenant,
            email: user.email,
        }))
    }
}

#[async_trait]
impl Catalogue for SqlStore {
    async fn tenant(&self, key: &str) -> Result<Option<TenantRecord>, StoreError> {
        let row = sqlx::query("SELECT key, display_name FROM tenants WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            Ok(TenantRecord {
                key: r.try_get("key")?,
                display_name: r.try_get("display_name")?,
            })
        })
        .transpose()
    }

    async fn put_tenant(&self, tenant: &TenantRecord) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tenants (key, display_name, updated_us) VALUES ($1, $2, $3)
             ON CONFLICT (key) DO UPDATE SET display_name = excluded.display_name,
             updated_us = excluded.updated_us",
        )
        .bind(&tenant.key)
        .bind(&tenant.display_name)
        .bind(micros(Timestamp::now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_tenant(&self, key: &str) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        for statement in [
            "DELETE FROM location_groups WHERE tenant = $1",
            "DELETE FROM roles WHERE tenant = $1",
            "DELETE FROM tenants WHERE key = $1",
        ] {
            sqlx::query(statement).bind(key).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn remove_assignment(&self, binding: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM role_assignments WHERE binding = $1")
            .bind(binding)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn group(&self, key: &str) -> Result<Option<GroupRecord>, StoreError> {
        let row = sqlx::query("SELECT * FROM location_groups WHERE key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| {
            let locations: String = r.try_get("locations")?;
            Ok(GroupRecord {
                key: r.try_get("key")?,
                tenant: r.try_get("tenant")?,
                parent: r.try_get("parent")?,
                display_name: r.try_get("display_name")?,
                path: r.try_get("path")?,
                locations: serde_json::from_str(&locations)
                    .map_err(|e| StoreError::Backend(format!("bad stored locations: {e}")))?,
            })
        })
        .transpose()
    }

    async fn put_group(&self, g: &GroupRecord) -> Result<(), StoreError> {
        let locations = serde_json::to_string(&g.locations)
            .map_err(|e| StoreError::Backend(format!("encoding locations: {e}")))?;
        sqlx::query(
            "INSERT INTO location_groups (key, tenant, parent, display_name, path, locations,
             updated_us) VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (key) DO UPDATE SET tenant = excluded.tenant, parent = excluded.parent,
             display_name = excluded.display_name, path = excluded.path,
             locations = excluded.locations, updated_us = excluded.updated_us",
        )
        .bind(&g.key)
        .bind(&g.tenant)
        .bind(&g.parent)
        .bind(&g.display_name)
        .bind(&g.path)
        .bind(locations)
        .bind(micros(Timestamp::now()))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    async fn delete_group(&self, key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM location_groups WHERE key = $1")
            .bind(key)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn roles(&self, tenant: &str) -> Result<Vec<RoleRecord>, StoreError> {
        let rows = sqlx::query("SELECT * FROM roles WHERE tenant = $1 ORDER BY name")
            .bind(tenant)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let permissions: String = r.try_get("permissions")?;
                Ok(RoleRecord {
                    name: r.try_get("name")?,
                    description: r.try_get("description")?,
                    exclusive: r.try_get::<i64, _>("exclusive")? != 0,
                    permissions: serde_json::from_str(&permissions)
                        .map_err(|e| StoreError::Backend(format!("bad stored permissions: {e}")))?,
                })
            })
            .collect::<Result<Vec<RoleRecord>, StoreError>>()
            .map(|mut roles| {
                roles.sort_by(|a, b| a.name.cmp(&b.name));
                roles
            })
    }

    async fn put_roles(&self, tenant: &str, roles: &[RoleRecord]) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM roles WHERE tenant = $1")
            .bind(tenant)
            .execute(&mut *tx)
            .await?;
        for r in roles {
            let permissions = serde_json::to_string(&r.permissions)
                .map_err(|e| StoreError::Backend(format!("encoding permissions: {e}")))?;
            sqlx::query(
                "INSERT INTO roles (tenant, name, description, exclusive, permissions)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(tenant)
            .bind(&r.name)
            .bind(&r.description)
            .bind(i64::from(r.exclusive))
            .bind(permissions)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn assignments(&self, user_id: &str) -> Result<Vec<Assignment>, StoreError> {
        let rows = sqlx::query(
            "SELECT binding, role, group_key FROM role_assignments WHERE user_id = $1
             ORDER BY binding",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Assignment {
                    binding: r.try_get("binding")?,
                    role: r.try_get("role")?,
                    group: r.try_get("group_key")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()
            .map(sorted)
    }

    async fn set_assignments(
        &self,
        user_id: &str,
        assignments: &[Assignment],
    ) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM role_assignments WHERE user_id = $1")
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        for a in assignments {
            sqlx::query(
                "INSERT INTO role_assignments (user_id, role, group_key, binding) VALUES ($1, $2, $3, $4)",
            )
            .bind(user_id)
            .bind(&a.role)
            .bind(&a.group)
            .bind(&a.binding)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn grants(&self, user_id: &str) -> Result<Vec<Grant>, StoreError> {
        // A grant on a group reaches every group below it.
        let rows = sqlx::query(
            "WITH RECURSIVE reach (role, group_key) AS (
                 SELECT role, group_key FROM role_assignments WHERE user_id = $1
                 UNION
                 SELECT reach.role, g.key FROM reach
                 JOIN location_groups g ON g.parent = reach.group_key
             )
             SELECT DISTINCT role, group_key FROM reach ORDER BY role, group_key",
        )
        .bind(user_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Grant {
                    role: r.try_get("role")?,
                    group: r.try_get("group_key")?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()
            .map(sorted)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Migration 0004 on a database where accounts already share an address: nothing is
    /// deleted, one of each group holds the address (the active one, else the oldest), and from
    /// then on the database refuses a second holder.
    #[tokio::test]
    async fn accounts_that_already_share_an_address_are_kept_and_one_holds_it() {
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        for before in [
            include_str!("../../migrations/sqlite/0001_accounts_and_invitations.sql"),
            include_str!("../../migrations/sqlite/0002_groups_roles_assignments.sql"),
            include_str!("../../migrations/sqlite/0003_offboarding_guard.sql"),
        ] {
            sqlx::raw_sql(before).execute(&pool).await.unwrap();
        }
        for (id, tenant, email, active, created) in [
            ("old", "acme/acme", "jo@acme.example", 0, 1),
            ("act", "acme/acme", "jo@acme.example", 1, 2),
            ("new", "acme/acme", "jo@acme.example", 0, 3),
            ("two", "acme/acme", "al@acme.example", 0, 5),
            ("one", "acme/acme", "al@acme.example", 0, 4),
            ("else", "acme/globex", "jo@acme.example", 0, 9),
        ] {
            sqlx::query(
                "INSERT INTO users (id, tenant, external_id, email, email_lower, profile, active,
                 created_us, updated_us) VALUES ($1, $2, $3, $4, $4, '{}', $5, $6, $6)",
            )
            .bind(id)
            .bind(tenant)
            .bind(format!("acme/{id}"))
            .bind(email)
            .bind(active)
            .bind(created)
            .execute(&pool)
            .await
            .unwrap();
        }
        sqlx::raw_sql(include_str!(
            "../../migrations/sqlite/0004_one_account_per_address.sql"
        ))
        .execute(&pool)
        .await
        .unwrap();
        let holders: Vec<String> =
            sqlx::query("SELECT id FROM users WHERE holds_address IS NOT NULL ORDER BY id")
                .fetch_all(&pool)
                .await
                .unwrap()
                .iter()
                .map(|r| r.try_get("id").unwrap())
                .collect();
        assert_eq!(holders, ["act", "else", "one"]);
        let count: i64 = sqlx::query("SELECT COUNT(*) AS n FROM users")
            .fetch_one(&pool)
            .await
            .unwrap()
            .try_get("n")
            .unwrap();
        assert_eq!(count, 6);
        let again = sqlx::query(
            "INSERT INTO users (id, tenant, external_id, email, email_lower, profile, active,
             created_us, updated_us) VALUES ('x', 'acme/acme', 'acme/x', 'JO@acme.example',
             'jo@acme.example', '{}', 0, 10, 10)",
        )
        .execute(&pool)
        .await
        .unwrap_err();
        let fields = UserFields {
            tenant: "acme/acme".into(),
            external_id: "acme/x".into(),
            email: "JO@acme.example".into(),
            profile: Default::default(),
        };
        assert!(
            matches!(
                address_taken(again, &fields),
                StoreError::Refused { status: 409, .. }
            ),
            "a second holder is refused as the SCIM store refuses it"
        );
    }
}
