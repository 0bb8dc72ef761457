//! Auth against the real PostgreSQL: accounts, tokens, key rotation, login limits, admins.

use std::process::Command;

use anyhow::{Context, bail};
use base64::Engine;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tunewire_auth::Config;
use tunewire_test_stack::Sandbox;

struct Auth {
    url: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
}

impl Auth {
    async fn start(config: Config) -> anyhow::Result<Self> {
        let shutdown = CancellationToken::new();
        let running = tunewire_auth::start(config, shutdown.clone()).await?;
        Ok(Self { url: format!("http://{}", running.addr), http: reqwest::Client::new(), shutdown })
    }

    async fn post(&self, path: &str, body: Value, forwarded_for: Option<&str>) -> anyhow::Result<reqwest::Response> {
        let mut request = self.http.post(format!("{}{path}", self.url)).json(&body);
        if let Some(f) = forwarded_for {
            request = request.header("x-forwarded-for", f);
        }
        Ok(request.send().await?)
    }

    async fn register(&self, email: &str, password: &str) -> anyhow::Result<reqwest::Response> {
        self.post("/register", json!({"email": email, "password": password}), None).await
    }

    async fn login(&self, email: &str, password: &str) -> anyhow::Result<reqwest::Response> {
        self.post("/login", json!({"email": email, "password": password}), None).await
    }

    async fn token(&self, email: &str, password: &str) -> anyhow::Result<String> {
        let body: Value = self.login(email, password).await?.error_for_status()?.json().await?;
        Ok(body["access_token"].as_str().context("no access_token")?.to_string())
    }

    async fn jwks_kids(&self) -> anyhow::Result<Vec<String>> {
        let jwks: Value = self.http.get(format!("{}/.well-known/jwks.json", self.url)).send().await?.json().await?;
        let keys = jwks["keys"].as_array().context("jwks without keys")?;
        Ok(keys.iter().filter_map(|k| k["kid"].as_str().map(str::to_string)).collect())
    }
}

impl Drop for Auth {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn email() -> String {
    format!("u-{}@example.com", uuid::Uuid::new_v4().simple())
}

/// The token's header and claims, unverified (verification is the gateway's, tested there).
fn decode(token: &str) -> anyhow::Result<(Value, Value)> {
    let mut parts = token.split('.');
    let mut next = || -> anyhow::Result<Value> {
        let part = parts.next().context("token has too few parts")?;
        Ok(serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part)?)?)
    };
    Ok((next()?, next()?))
}

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
    config.signing_key_pem = Some(old_pem.clone());
    let before = Auth::start(config.clone()).await?;
    let address = email();
    before.register(&address, "correct horse").await?.error_for_status()?;
    let (old_header, _) = decode(&before.token(&address, "correct horse").await?)?;
    drop(before);

    config.signing_key_pem = Some(new_pem);
    config.previous_signing_key_pem = Some(old_pem);
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
async fn failed_logins_are_limited_per_email_and_per_address() -> anyhow::Result<()> {
    let sandbox = Sandbox::create().await?;
    let mut config = Config::local(sandbox.database_url.clone());
    config.login_limits.per_email = 3;
    config.login_limits.per_address = 5;
    let auth = Auth::start(config).await?;
    let victim = email();
    auth.register(&victim, "correct horse").await?.error_for_status()?;

    for _ in 0..3 {
        assert_eq!(auth.login(&victim, "wrong horse").await?.status(), 401);
    }
    // Blocked now, even with the right password.
    let r = auth.login(&victim, "correct horse").await?;
    assert_eq!(r.status(), 429);
    let retry_after: u64 = r.headers().get("retry-after").context("Retry-After")?.to_str()?.parse()?;
    assert!((1..=900).contains(&retry_after), "{retry_after}");
    assert_eq!(r.json::<Value>().await?["error"], "too_many_attempts");

    // One address guessing many emails is blocked too; another address is not.
    for _ in 0..5 {
        let r = auth.post("/login", json!({"email": email(), "password": "guess"}), Some("203.0.113.7")).await?;
        assert_eq!(r.status(), 401);
    }
    let r = auth.post("/login", json!({"email": email(), "password": "guess"}), Some("203.0.113.7")).await?;
    assert_eq!(r.status(), 429);
    let r = auth.post("/login", json!({"email": email(), "password": "guess"}), Some("203.0.113.8")).await?;
    assert_eq!(r.status(), 401);
    drop(auth);
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
