//! An auth service started in-process on port 0 against the real PostgreSQL.

#![allow(dead_code)] // each test file uses its own part

use anyhow::Context;
use base64::Engine;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tunewire_auth::Config;

pub struct Auth {
    pub url: String,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
}

impl Auth {
    pub async fn start(config: Config) -> anyhow::Result<Self> {
        let shutdown = CancellationToken::new();
        let running = tunewire_auth::start(config, shutdown.clone()).await?;
        Ok(Self { url: format!("http://{}", running.addr), http: reqwest::Client::new(), shutdown })
    }

    pub async fn post(
        &self,
        path: &str,
        body: Value,
        forwarded_for: Option<&str>,
    ) -> anyhow::Result<reqwest::Response> {
        let mut request = self.http.post(format!("{}{path}", self.url)).json(&body);
        if let Some(f) = forwarded_for {
            request = request.header("x-forwarded-for", f);
        }
        Ok(request.send().await?)
    }

    pub async fn register(&self, email: &str, password: &str) -> anyhow::Result<reqwest::Response> {
        self.post("/register", json!({"email": email, "password": password}), None).await
    }

    pub async fn login(&self, email: &str, password: &str) -> anyhow::Result<reqwest::Response> {
        self.post("/login", json!({"email": email, "password": password}), None).await
    }

    pub async fn token(&self, email: &str, password: &str) -> anyhow::Result<String> {
        let body: Value = self.login(email, password).await?.error_for_status()?.json().await?;
        Ok(body["access_token"].as_str().context("no access_token")?.to_string())
    }

    pub async fn jwks_kids(&self) -> anyhow::Result<Vec<String>> {
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

pub fn email() -> String {
    format!("u-{}@example.com", uuid::Uuid::new_v4().simple())
}

/// The token's header and claims, unverified (verification is the gateway's, tested there).
pub fn decode(token: &str) -> anyhow::Result<(Value, Value)> {
    let mut parts = token.split('.');
    let mut next = || -> anyhow::Result<Value> {
        let part = parts.next().context("token has too few parts")?;
        Ok(serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part)?)?)
    };
    Ok((next()?, next()?))
}
