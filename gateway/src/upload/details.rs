//! What the client says about the file besides its bytes, and how each is checked.

use std::collections::HashMap;

use tunewire_contract::{Preset, TrackTags};
use tunewire_service_runtime::ApiError;
use utoipa::{IntoParams, ToSchema};

/// What the client says about the file besides its bytes: form fields, or a raw body's
/// query. Read as text and checked by the gateway, so a bad value gets its own reason.
#[derive(Debug, Default, Clone, ToSchema, IntoParams, serde::Serialize, serde::Deserialize)]
#[into_params(parameter_in = Query)]
pub struct Details {
    #[schema(max_length = 1024)]
    #[param(max_length = 1024)]
    pub title: Option<String>,
    #[schema(max_length = 1024)]
    #[param(max_length = 1024)]
    pub artist: Option<String>,
    #[schema(max_length = 1024)]
    #[param(max_length = 1024)]
    pub album: Option<String>,
    /// The MP3's encoding (default `cbr192`).
    #[schema(value_type = Option<Preset>)]
    #[param(value_type = Option<Preset>)]
    pub preset: Option<String>,
    /// Normalise loudness to -14 LUFS (EBU R128).
    #[schema(value_type = Option<bool>)]
    #[param(value_type = Option<bool>)]
    pub loudnorm: Option<String>,
}

/// A multipart upload: the file and its details.
#[derive(ToSchema)]
#[expect(dead_code, reason = "describes the form `parse_form` reads")]
pub struct UploadForm {
    file: crate::openapi::Binary,
    #[serde(flatten)]
    details: Details,
}

pub(super) const MAX_FIELD_BYTES: usize = 1024;

impl Details {
    /// A raw upload's details, from its query string.
    pub fn from_query(query: HashMap<String, String>) -> Result<Self, ApiError> {
        let mut details = Details::default();
        for (key, value) in query {
            match key.as_str() {
                "title" => details.title = Some(value),
                "artist" => details.artist = Some(value),
                "album" => details.album = Some(value),
                "preset" => details.preset = Some(value),
                "loudnorm" => details.loudnorm = Some(value),
                other => {
                    return Err(ApiError::bad_request(
                        "unknown_field",
                        format!("unexpected query parameter {other:?}"),
                    ));
                }
            }
        }
        Ok(details)
    }

    pub(crate) fn tags(&self) -> Result<TrackTags, ApiError> {
        let clean = |name: &str, value: &Option<String>| -> Result<Option<String>, ApiError> {
            let value = value.as_deref().map(str::trim).filter(|v| !v.is_empty());
            match value {
                Some(v) if v.len() > MAX_FIELD_BYTES => Err(ApiError::bad_request(
                    "field_too_long",
                    format!("field {name:?} is longer than {MAX_FIELD_BYTES} bytes"),
                )),
                Some(v) if v.chars().any(char::is_control) => {
                    Err(ApiError::bad_request("invalid_field", format!("field {name:?} contains control characters")))
                }
                other => Ok(other.map(str::to_string)),
            }
        };
        Ok(TrackTags {
            title: clean("title", &self.title)?,
            artist: clean("artist", &self.artist)?,
            album: clean("album", &self.album)?,
            genre: None,
        })
    }

    pub(crate) fn loudnorm(&self) -> Result<bool, ApiError> {
        match self.loudnorm.as_deref().map(str::trim).map(str::to_ascii_lowercase).as_deref() {
            None | Some("") | Some("false") | Some("0") | Some("no") => Ok(false),
            Some("true") | Some("1") | Some("yes") => Ok(true),
            Some(other) => {
                Err(ApiError::bad_request("invalid_loudnorm", format!("loudnorm must be true or false, not {other:?}")))
            }
        }
    }

    pub(crate) fn preset(&self) -> Result<Preset, ApiError> {
        match self.preset.as_deref().map(str::trim).filter(|p| !p.is_empty()) {
            None => Ok(Preset::default()),
            Some(p) => p.parse().map_err(|e: String| ApiError::bad_request("invalid_preset", e)),
        }
    }
}
