//! The gateway's HTTP API as the client uses it: the bearer token on every call, the API's
//! error body (`{error, message}`) turned into a [`CliError`], connection failures into
//! "unreachable".

use std::time::Duration;

use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde::de::DeserializeOwned;

use crate::config::Token;
use crate::error::CliError;

/// Connecting takes no longer than this; a transfer may take as long as it needs.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone)]
pub struct Api {
    pub server: String,
    token: Option<Token>,
    http: reqwest::Client,
}

impl Api {
    pub fn new(server: String, token: Option<Token>) -> Result<Self, CliError> {
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // A peer gone silently is noticed by the kernel; streams time out their own reads.
            .tcp_keepalive(Duration::from_secs(30))
            .user_agent(concat!("tunewire-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Protocol(e.to_string()))?;
        Ok(Api { server, token, http })
    }

    /// `path` (or an address the server handed out, e.g. a `Location`) resolved against the
    /// server; anything on another origin is refused, so the token never goes elsewhere.
    pub fn url(&self, path: &str) -> Result<reqwest::Url, CliError> {
        let base = reqwest::Url::parse(&format!("{}/", self.server))
            .map_err(|e| CliError::Usage(format!("the server address {:?} is not a URL ({e})", self.server)))?;
        let url = base.join(path).map_err(|e| CliError::Protocol(format!("{path:?}: {e}")))?;
        if url.origin() != base.origin() {
            return Err(CliError::Protocol(format!("the server pointed at another origin ({url}); not following")));
        }
        Ok(url)
    }

    /// A request with the token; `NotLoggedIn` when there is none.
    pub fn request(&self, method: Method, path: &str) -> Result<RequestBuilder, CliError> {
        let token = self.token.as_ref().ok_or(CliError::NotLoggedIn)?;
        Ok(self.http.request(method, self.url(path)?).bearer_auth(token.expose()))
    }

    /// A request without credentials (logging in).
    pub fn anonymous(&self, method: Method, path: &str) -> Result<RequestBuilder, CliError> {
        Ok(self.http.request(method, self.url(path)?))
    }

    /// Sends it; a connection failure is `Unreachable`.
    pub async fn send(&self, request: RequestBuilder) -> Result<Response, CliError> {
        request.send().await.map_err(|e| self.unreachable(&e))
    }

    pub fn unreachable(&self, e: &reqwest::Error) -> CliError {
        let mut reason = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(inner) = source {
            reason = inner.to_string();
            source = inner.source();
        }
        CliError::Unreachable { server: self.server.clone(), reason }
    }

    /// Sends it and reads a JSON answer, refusals as errors.
    pub async fn json<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<T, CliError> {
        let response = ok(self.send(request).await?).await?;
        let bytes = response.bytes().await.map_err(|e| self.unreachable(&e))?;
        serde_json::from_slice(&bytes).map_err(|e| CliError::Protocol(e.to_string()))
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, CliError> {
        self.json(self.request(Method::GET, path)?).await
    }
}

/// The response if it succeeded, else the error its body describes.
pub async fn ok(response: Response) -> Result<Response, CliError> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.bytes().await.unwrap_or_default();
    Err(refusal(status, &body))
}

/// The error an API answer with this status and body stands for.
pub fn refusal(status: StatusCode, body: &[u8]) -> CliError {
    #[derive(serde::Deserialize)]
    struct ErrorBody {
        error: String,
        message: String,
    }
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let (code, message) = match parsed {
        Some(body) => (body.error, body.message),
        // A proxy or balancer answering for a gateway that is not there.
        None if matches!(status.as_u16(), 502..=504) => {
            return CliError::NoGateway(status.to_string());
        }
        None => (format!("http_{}", status.as_u16()), format!("the server answered {status}")),
    };
    if status == StatusCode::UNAUTHORIZED {
        return CliError::Unauthorized { message };
    }
    CliError::Api { status: status.as_u16(), code, message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_the_servers_code_and_words() {
        let body = br#"{"error":"not_media","message":"a.txt is not an audio or video file"}"#;
        let e = refusal(StatusCode::UNSUPPORTED_MEDIA_TYPE, body);
        assert_eq!(e.code(), "not_media");
        assert_eq!(e.to_string(), "a.txt is not an audio or video file");
        let expired = refusal(
            StatusCode::UNAUTHORIZED,
            br#"{"error":"unauthorized","message":"the token has expired; log in again"}"#,
        );
        assert_eq!(expired.exit(), crate::error::Exit::Auth);
        assert!(expired.to_string().ends_with("run `tunewire login`"));
        assert_eq!(refusal(StatusCode::BAD_GATEWAY, b"<html>").exit(), crate::error::Exit::Unreachable);
        assert_eq!(refusal(StatusCode::IM_A_TEAPOT, b"<html>").code(), "http_418");
    }

    #[test]
    fn addresses_the_server_hands_out_stay_on_its_origin() {
        let api = Api::new("http://gw:8080".into(), None).expect("client");
        assert_eq!(api.url("/v1/tus/1").expect("same origin").as_str(), "http://gw:8080/v1/tus/1");
        assert_eq!(api.url("http://gw:8080/v1/tus/2").expect("absolute, same origin").path(), "/v1/tus/2");
        assert!(api.url("http://elsewhere:8080/v1/tus/3").is_err());
        assert!(api.url("https://gw:8080/v1/tus/3").is_err(), "another scheme is another origin");
    }
}
