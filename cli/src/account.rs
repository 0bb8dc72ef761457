//! `login`, `logout`, `whoami`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::Path;

use reqwest::Method;
use tunewire_contract::accounts::Me;
use tunewire_contract::{Credentials as LoginBody, Token as Issued};

use crate::api::Api;
use crate::config::{self, Credentials, Token};
use crate::error::CliError;

fn read_line(prompt: &str) -> Result<String, CliError> {
    if std::io::stdin().is_terminal() {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line).map_err(|e| CliError::io("reading stdin", e))?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

/// The email and password, asked for (the password without echo) or read from stdin.
pub fn ask(email: Option<String>, password_stdin: bool) -> Result<LoginBody, CliError> {
    let email = match email {
        Some(email) => email,
        None => read_line("Email: ")?,
    };
    let password = if password_stdin {
        read_line("")?
    } else {
        rpassword::prompt_password("Password: ")
            .map_err(|e| CliError::Usage(format!("no terminal to ask for the password ({e}); use --password-stdin")))?
    };
    if email.is_empty() || password.is_empty() {
        return Err(CliError::Usage("an email and a password are needed".into()));
    }
    Ok(LoginBody { email, password })
}

/// Creates the account; the server's refusal (address taken, password too short) as is.
pub async fn register(api: &Api, body: &LoginBody) -> Result<(), CliError> {
    let request = api.anonymous(Method::POST, "/v1/auth/register")?.json(body);
    crate::api::ok(api.send(request).await?).await.map(drop)
}

/// Logs in and stores the token.
pub async fn login(api: &Api, dir: &Path, body: LoginBody) -> Result<Credentials, CliError> {
    let email = body.email.clone();
    let issued: Issued =
        api.json(api.anonymous(Method::POST, "/v1/auth/login")?.json(&body)).await.map_err(|e| match e {
            CliError::Unauthorized { message } => {
                CliError::LoginRefused(format!("{message}: check the email and password, or `tunewire register`"))
            }
            e => e,
        })?;
    let credentials = Credentials { server: api.server.clone(), email, token: Token::new(issued.access_token) };
    config::save_credentials(dir, &credentials)?;
    Ok(credentials)
}

pub async fn whoami(api: &Api) -> Result<Me, CliError> {
    api.get("/v1/me").await
}

pub fn describe(me: &Me) -> String {
    let q = &me.quotas;
    format!(
        "{} ({})\njobs in progress: {} of {}\nstored: {} of {}",
        me.account.email,
        me.account.role,
        q.jobs_in_progress.used,
        q.jobs_in_progress.limit,
        crate::output::bytes(u64::try_from(q.stored_bytes.used).unwrap_or(0)),
        crate::output::bytes(u64::try_from(q.stored_bytes.limit).unwrap_or(0)),
    )
}
