//! A multipart upload's parts: the file, streamed into the store as it arrives, and the
//! details, each bounded.

use bytes::Buf;
use futures_util::{StreamExt, TryStreamExt};
use tunewire_service_runtime::ApiError;
use warp::multipart::FormData;

use super::details::MAX_FIELD_BYTES;
use super::{Details, Received, clean_filename, receive};
use crate::caller::Caller;
use crate::state::State;

async fn read_field(part: warp::multipart::Part) -> Result<String, ApiError> {
    let name = part.name().to_string();
    let mut bytes = Vec::new();
    let mut stream = part.stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad_request("invalid_multipart", e.to_string()))?;
        bytes.extend_from_slice(chunk.chunk());
        if bytes.len() > MAX_FIELD_BYTES {
            return Err(ApiError::bad_request(
                "field_too_long",
                format!("field {name:?} is longer than {MAX_FIELD_BYTES} bytes"),
            ));
        }
    }
    String::from_utf8(bytes)
        .map_err(|_| ApiError::bad_request("invalid_field", format!("field {name:?} is not UTF-8 text")))
}

pub(super) async fn parse_form(
    form: &mut FormData,
    caller: &Caller,
    state: &State,
    received: &mut Option<Received>,
    details: &mut Details,
) -> Result<(), ApiError> {
    while let Some(part) = form.next().await {
        let part = part.map_err(|e| ApiError::bad_request("invalid_multipart", e.to_string()))?;
        match part.name() {
            "file" => {
                if received.is_some() {
                    return Err(ApiError::bad_request("too_many_files", "send one `file` part per upload"));
                }
                let filename = clean_filename(part.filename());
                let body =
                    part.stream().map_ok(|mut buf| buf.copy_to_bytes(buf.remaining())).map_err(|e| e.to_string());
                *received = Some(receive(state, caller, filename, Box::pin(body)).await?);
            }
            "title" => details.title = Some(read_field(part).await?),
            "artist" => details.artist = Some(read_field(part).await?),
            "album" => details.album = Some(read_field(part).await?),
            "preset" => details.preset = Some(read_field(part).await?),
            "loudnorm" => details.loudnorm = Some(read_field(part).await?),
            other => {
                let other = other.to_string();
                return Err(ApiError::bad_request("unknown_field", format!("unexpected form field {other:?}")));
            }
        }
    }
    Ok(())
}
