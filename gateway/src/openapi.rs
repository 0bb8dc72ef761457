//! The public API's description, generated: each handler's `#[utoipa::path]` and the types
//! it reads and writes make the OpenAPI document served at `/v1/openapi.json`, and the
//! metrics' route templates come from its paths.

use std::sync::LazyLock;

use tunewire_service_runtime::http_error::ErrorBody;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{OpenApi as Document, PathItem};
use utoipa::{Modify, OpenApi};

use crate::{download, job_routes, proxy, session, tus, upload};

/// Bytes of a file, in a request or an answer.
#[derive(utoipa::ToSchema)]
#[schema(value_type = String, format = Binary)]
pub struct Binary(#[expect(dead_code, reason = "a schema only")] Vec<u8>);

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Tunewire gateway",
        version = "1.0.0",
        description = "Upload a video or audio file, follow its conversion to MP3, download it. \
                       Every error is JSON {\"error\": code, \"message\": text}. \
                       The web app signs in with `POST /v1/session`: its cookie stands for the bearer token, \
                       and a request signed in by it that changes something carries `X-CSRF-Token`."
    ),
    servers((url = "/")),
    paths(
        openapi_document,
        proxy::register,
        proxy::login,
        proxy::change_password,
        session::sign_in,
        session::sign_out,
        job_routes::me,
        upload::upload,
        job_routes::list_jobs,
        job_routes::get_job,
        job_routes::delete_job,
        job_routes::job_event_stream,
        job_routes::job_feed,
        download::serve,
        download::signed_download,
        proxy::search,
        tus::described::options,
        tus::described::create,
        tus::described::head,
        tus::described::patch,
        tus::described::delete,
    ),
    components(responses(ErrorBody)),
    modifiers(&BearerTokens, &OneOperationIdEach)
)]
struct Api;

#[utoipa::path(get, path = "/v1/openapi.json", operation_id = "openapi", tag = "api", summary = "This document",
    responses(
        (status = 200, description = "OpenAPI 3.1", content_type = "application/json", body = Object),
        (status = "default", response = ErrorBody),
    ))]
#[expect(dead_code, reason = "documents the route `routes` serves from DOCUMENT")]
fn openapi_document() {}

struct BearerTokens;

impl Modify for BearerTokens {
    fn modify(&self, openapi: &mut Document) {
        let scheme = HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build();
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// One handler may serve several methods (`GET` and `HEAD`, `POST` and `PUT`); each
/// operation still gets an id of its own, the method appended.
struct OneOperationIdEach;

impl Modify for OneOperationIdEach {
    fn modify(&self, openapi: &mut Document) {
        for item in openapi.paths.paths.values_mut() {
            let PathItem { get, put, post, delete, options, head, patch, trace, .. } = item;
            let operations = [("get", get), ("put", put), ("post", post), ("delete", delete)].into_iter().chain([
                ("options", options),
                ("head", head),
                ("patch", patch),
                ("trace", trace),
            ]);
            let operations: Vec<_> = operations.filter_map(|(method, op)| Some((method, op.as_mut()?))).collect();
            let shared = operations.len() > 1
                && operations.windows(2).all(|pair| pair[0].1.operation_id == pair[1].1.operation_id);
            if shared {
                for (method, op) in operations {
                    op.operation_id = op.operation_id.take().map(|id| format!("{id}_{method}"));
                }
            }
        }
    }
}

static API: LazyLock<Document> = LazyLock::new(Api::openapi);

/// The document as served.
pub static DOCUMENT: LazyLock<String> = LazyLock::new(|| API.to_json().unwrap_or_default());

/// A documented path: its template (`/v1/jobs/{id}`) and its segments, `None` for a parameter.
pub struct RouteTemplate {
    pub template: String,
    pub segments: Vec<Option<String>>,
}

/// The documented paths, for labelling metrics.
pub static ROUTE_TEMPLATES: LazyLock<Vec<RouteTemplate>> = LazyLock::new(|| {
    API.paths
        .paths
        .keys()
        .map(|template| RouteTemplate {
            template: template.clone(),
            segments: template
                .trim_matches('/')
                .split('/')
                .map(|part| (!part.starts_with('{')).then(|| part.to_string()))
                .collect(),
        })
        .collect()
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_has_an_id_of_its_own() {
        let doc: serde_json::Value = serde_json::from_str(&DOCUMENT).unwrap();
        let mut ids: Vec<&str> = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .flat_map(|item| item.as_object().unwrap().values())
            .filter_map(|op| op["operationId"].as_str())
            .collect();
        let count = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), count, "{ids:?}");
        assert!(ids.contains(&"download_head") && ids.contains(&"upload_put"), "{ids:?}");
    }

    #[test]
    fn password_bounds_are_auth_s() {
        let doc: serde_json::Value = serde_json::from_str(&DOCUMENT).unwrap();
        let bounds = tunewire_contract::accounts::PASSWORD_CHARS;
        for (schema, field) in [("Credentials", "password"), ("PasswordChange", "new_password")] {
            let password = &doc["components"]["schemas"][schema]["properties"][field];
            assert_eq!(password["minLength"], *bounds.start(), "{schema}");
            assert_eq!(password["maxLength"], *bounds.end(), "{schema}");
        }
    }
}
