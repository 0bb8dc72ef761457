//! The JSON error contract of every Tunewire HTTP API: `{"error": code, "message": text}`,
//! where `code` is stable for programs and `message` is for people. A refusal that will pass
//! later (a limit, a busy service) also says when: `Retry-After` and `retry_after_s`.

use std::convert::Infallible;

use serde::Serialize;
use warp::http::StatusCode;
use warp::reject::{
    InvalidHeader, InvalidQuery, LengthRequired, MethodNotAllowed, MissingHeader, PayloadTooLarge, UnsupportedMediaType,
};
use warp::{Rejection, Reply};

#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    /// Whole seconds, at least 1.
    pub retry_after_s: Option<u64>,
}

/// Every error's body.
#[derive(Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema, utoipa::ToResponse))]
#[cfg_attr(feature = "openapi", response(description = "What went wrong, for programs (error) and people (message)"))]
pub struct ErrorBody<'a> {
    /// A stable machine code, e.g. `not_media`.
    pub error: &'a str,
    pub message: &'a str,
    /// For a refusal that will pass: seconds to wait, as in `Retry-After`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub retry_after_s: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into(), retry_after_s: None }
    }
    /// The same refusal, telling the client when to try again (rounded up, at least 1 s).
    pub fn retry_after(mut self, wait: std::time::Duration) -> Self {
        let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        self.retry_after_s = Some(seconds.max(1));
        self
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }
    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }
    /// A failure on our side; the details go to the log, not to the client.
    pub fn internal(code: &'static str, detail: impl std::fmt::Display) -> Self {
        tracing::error!(code, error = %detail, "request failed");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, code, "internal error; it has been logged")
    }
    pub fn unavailable(code: &'static str, detail: impl std::fmt::Display) -> Self {
        tracing::warn!(code, error = %detail, "dependency unavailable");
        Self::new(StatusCode::SERVICE_UNAVAILABLE, code, "a dependency is unavailable; try again shortly")
    }
}

impl warp::reject::Reject for ApiError {}

impl Reply for ApiError {
    fn into_response(self) -> warp::reply::Response {
        let body = warp::reply::json(&ErrorBody {
            error: self.code,
            message: &self.message,
            retry_after_s: self.retry_after_s,
        });
        let mut response = warp::reply::with_status(body, self.status).into_response();
        if let Some(seconds) = self.retry_after_s {
            response.headers_mut().insert(warp::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

/// Turns every rejection, ours or warp's, into the JSON error contract.
pub async fn recover(rejection: Rejection) -> Result<warp::reply::Response, Infallible> {
    let unmatched = rejection.is_not_found() || rejection.find::<MethodNotAllowed>().is_some();
    let error = if let Some(e) = rejection.find::<ApiError>() {
        e.clone()
    } else if rejection.is_not_found() {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    } else if let Some(e) = rejection.find::<warp::filters::body::BodyDeserializeError>() {
        ApiError::bad_request("invalid_json", format!("the JSON body is invalid: {e}"))
    } else if let Some(e) = rejection.find::<MissingHeader>() {
        if e.name().eq_ignore_ascii_case("authorization") {
            ApiError::unauthorized("a bearer token is required (Authorization: Bearer <token>)")
        } else {
            ApiError::bad_request("missing_header", e.to_string())
        }
    } else if let Some(e) = rejection.find::<InvalidHeader>() {
        ApiError::bad_request("invalid_header", e.to_string())
    } else if rejection.find::<InvalidQuery>().is_some() {
        ApiError::bad_request("invalid_query", "the query string is invalid")
    } else if rejection.find::<PayloadTooLarge>().is_some() {
        ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "the request body is too large")
    } else if rejection.find::<UnsupportedMediaType>().is_some() {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_content_type",
            "the request's Content-Type is not supported here",
        )
    } else if rejection.find::<LengthRequired>().is_some() {
        ApiError::new(StatusCode::LENGTH_REQUIRED, "length_required", "a Content-Length header is required")
    } else if let Some(e) = rejection.find::<warp::filters::cors::CorsForbidden>() {
        ApiError::new(StatusCode::FORBIDDEN, "cors_forbidden", format!("cross-origin request refused: {e}"))
    } else if rejection.find::<MethodNotAllowed>().is_some() {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed on this route")
    } else {
        ApiError::internal("unhandled_rejection", format!("{rejection:?}"))
    };
    let mut response = error.into_response();
    if unmatched && rejection.find::<ApiError>().is_none() {
        response.extensions_mut().insert(crate::telemetry::http::Unmatched);
    }
    Ok(response)
}
