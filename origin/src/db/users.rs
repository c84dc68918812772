//! `app_user`: accounts and their password hashes.

use sqlx::PgPool;
use uuid::Uuid;

/// The id and password hash of `username` (already normalized), if it exists.
pub async fn credentials(db: &PgPool, username: &str) -> sqlx::Result<Option<(Uuid, String)>> {
    sqlx::query_as("select id, password_hash from app_user where username = $1")
        .bind(username)
        .fetch_optional(db)
        .await
}

/// Creates an account; `Ok(false)` when the name is taken.
pub async fn create(db: &PgPool, id: Uuid, username: &str, hash: &str) -> sqlx::Result<bool> {
    let inserted =
        sqlx::query("insert into app_user (id, username, password_hash) values ($1, $2, $3)")
            .bind(id)
            .bind(username)
            .bind(hash)
            .execute(db)
            .await;
    match inserted {
        Ok(_) => Ok(true),
        Err(sqlx::Error::Database(e)) if e.constraint() == Some("app_user_username_key") => {
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

/// Replaces a password hash (an upgrade to the current Argon2 parameters).
pub async fn set_password_hash(db: &PgPool, id: Uuid, hash: &str) -> sqlx::Result<()> {
    sqlx::query("update app_user set password_hash = $2, updated_at = now() where id = $1")
        .bind(id)
        .bind(hash)
        .execute(db)
        .await
        .map(drop)
}

/// The name of a user, if the user exists.
pub async fn username(db: &PgPool, id: Uuid) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("select username from app_user where id = $1")
        .bind(id)
        .fetch_optional(db)
        .await
}
