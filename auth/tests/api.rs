//! Auth against the real PostgreSQL: accounts, tokens, key rotation, admins.

mod support;

use std::process::Command;

use anyhow::{Context, bail};
use serde_json::{Value, json};
use support::{Auth, decode, email};
use tunewire_auth::Config;
use tunewire_test_stack::Sandbox;

fn openssl_key(algorithm: &str) -> anyhow::Result<String> {
    let mut command = Command::new("openssl");
    command.args(["genpkey", "-algorithm", algorithm]);
    if algorithm == "rsa" {
        command.args(["-pkeyopt", "rsa_keygen_bits:2048"]);
    }
    let out = command.output()?;
    if !out.status.success() {
        bail!("openssl genpkey failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8(out.stdout)?)
}

#[tokio::test]
async fn registration_validates_input_and_refuses_duplicates() -> anyhow::Result<()> {
    let sandbox = Sandbox::create().await?;
    let auth = Auth::start(Config::local(sandbox.database_url.clone())).await?;
    let address = email();
    for (email, password, code) in [
        ("not-an-email", "long enough", "invalid_email"),
        (address.as_str(), "short", "invalid_password"),
        (address.as_str(), &"x".repeat(257), "invalid_password"),
    ] {
        let r = auth.register(email, password).await?;
        assert_eq!(r.status(), 400, "{email} / {} chars", password.len());
        assert_eq!(r.json::<Value>().await?["error"], code);
    }
    let r = auth.post("/register", json!({"email": address}), None).await?;
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await?["error"], "invalid_json");

    let r = auth.register(&address, "correct horse").await?;
    assert_eq!(r.status(), 201);
    // Registering can never make an admin, whatever the body says.
    let r =
        auth.post("/register", json!({"email": email(), "password": "correct horse", "role": "admin"}), None).await?;
    assert_eq!(r.json::<Value>().await?["role"], "user");
    let r = auth.register(&address.to_uppercase(), "another password").await?;
    assert_eq!(r.status(), 409);
    assert_eq!(r.json::<Value>().await?["error"], "email_taken");
    drop(auth);
    sandbox.cleanup().await
}

#[tokio::test]
async fn tokens_carry_the_claims_and_a_kid_published_in_the_jwks() -> anyhow::Result<()> {
    let sandbox = Sandbox::create().await?;
    let auth = Auth::start(Config::local(sandbox.database_url.clone())).await?;
    let address = email();
    auth.register(&address, "correct horse").await?.error_for_status()?;
    let r = auth.login(&address, "correct horse").await?;
    let body: Value = r.json().await?;
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3600);
    let (header, claims) = decode(body["access_token"].as_str().context("token")?)?;
    assert_eq!(header["alg"], "EdDSA");
    assert!(auth.jwks_kids().await?.contains(&header["kid"].as_str().context("kid")?.to_string()));
    assert_eq!(claims["email"], address.as_str());
    assert_eq!(claims["role"], "user");
    assert_eq!(claims["iss"], "tunewire-auth");
    assert_eq!(claims["aud"], "tunewire");
    assert_eq!(claims["exp"].as_i64().context("exp")? - claims["iat"].as_i64().context("iat")?, 3600);

    let r = auth.login(&address, "wrong horse").await?;
    assert_eq!(r.status(), 401);
    assert_eq!(r.json::<Value>().await?["error"], "unauthorized");
    let r = auth.login(&email(), "correct horse").await?;
    assert_eq!(r.status(), 401, "an unknown email looks like a wrong password");
    drop(auth);
    sandbox.cleanup().await
}

#[tokio::test]
async fn after_a_rotation_the_jwks_still_publishes_the_previous_key() -> anyhow::Result<()> {
    let sandbox = Sandbox::create().await?;
    let (old_pem, new_pem) = (openssl_key("ed25519")?, openssl_key("rsa")?);
    let mut config = Config::local(sandbox.database_url.clone());
    config.signing_key_pem = Some(old_pem.clone().into());
    let before = Auth::start(config.clone()).await?;
    let address = email();
    before.register(&address, "correct horse").await?.error_for_status()?;
    let (old_header, _) = decode(&before.token(&address, "correct horse").await?)?;
    drop(before);

    config.signing_key_pem = Some(new_pem.into());
    config.previous_signing_key_pem = Some(old_pem.into());
    let after = Auth::start(config).await?;
    let (new_header, _) = decode(&after.token(&address, "correct horse").await?)?;
    assert_eq!(new_header["alg"], "RS256", "an RSA key signs RS256");
    assert_ne!(new_header["kid"], old_header["kid"]);
    let kids = after.jwks_kids().await?;
    for header in [&old_header, &new_header] {
        assert!(kids.iter().any(|k| header["kid"] == k.as_str()), "{kids:?} lacks {}", header["kid"]);
    }
    drop(after);
    sandbox.cleanup().await
}

#[tokio::test]
async fn an_admin_comes_from_config_or_the_create_admin_command() -> anyhow::Result<()> {
    let sandbox = Sandbox::create().await?;
    let from_config = email();
    let mut config = Config::local(sandbox.database_url.clone());
    config.admin = Some((from_config.parse()?, "admin password".into()));
    let auth = Auth::start(config).await?;
    let (_, claims) = decode(&auth.token(&from_config, "admin password").await?)?;
    assert_eq!(claims["role"], "admin");

    // The command promotes an existing user and sets the password it is given.
    let promoted = email();
    auth.register(&promoted, "user password").await?.error_for_status()?;
    let out = Command::new(env!("CARGO_BIN_EXE_tunewire-auth"))
        .args(["create-admin", "--email", &promoted])
        .env("DATABASE_URL", &sandbox.database_url)
        .env("AUTH_ADMIN_PASSWORD", "new admin password")
        .output()?;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, claims) = decode(&auth.token(&promoted, "new admin password").await?)?;
    assert_eq!(claims["role"], "admin");

    let out = Command::new(env!("CARGO_BIN_EXE_tunewire-auth"))
        .args(["create-admin", "--email", "not-an-email"])
        .env("DATABASE_URL", &sandbox.database_url)
        .env("AUTH_ADMIN_PASSWORD", "new admin password")
        .output()?;
    assert!(!out.status.success());
    drop(auth);
    sandbox.cleanup().await
}

/// In a rolling deploy the previous version's replicas start on a schema the new one has
/// migrated further: they must start, not fail on a migration they do not know.
#[tokio::test]
async fn a_schema_migrated_by_a_newer_version_does_not_stop_this_one() -> anyhow::Result<()> {
    let sandbox = Sandbox::create().await?;
    let db = tunewire_auth::SCHEMA.connect(&sandbox.database_url, 2).await?;
    sqlx::query(
        "INSERT INTO auth._sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (99990101000000, 'from a newer version', true, '\\x00', 0)",
    )
    .execute(&db)
    .await?;
    tunewire_auth::SCHEMA.migrate(&db).await.context("migrating under a newer version's schema")?;
    let auth = Auth::start(Config::local(sandbox.database_url.clone())).await?;
    let r = auth.register(&email(), "correct horse battery").await?;
    assert_eq!(r.status(), 201);

    // A version among this one's own that it lacks is a lost migration file, and stops it.
    sqlx::query(
        "INSERT INTO auth._sqlx_migrations (version, description, success, checksum, execution_time)
         VALUES (0, 'lost', true, '\\x00', 0)",
    )
    .execute(&db)
    .await?;
    let lost = tunewire_auth::SCHEMA.migrate(&db).await;
    assert!(matches!(lost, Err(sqlx::migrate::MigrateError::VersionMissing(0))), "{lost:?}");
    sandbox.cleanup().await
}
