//! `Upload-Metadata`: comma-separated `key base64(value)` pairs, the value optional. The keys
//! Tunewire reads become the upload's details; others (browser clients add `filetype`,
//! `relativePath`) are ignored.

use base64::Engine;
use tunewire_service_runtime::ApiError;

use crate::upload::{Details, clean_filename};

/// More than any real client sends; the header's whole text is stored with the upload.
pub const MAX_METADATA_BYTES: usize = 8 * 1024;

#[derive(Debug, Default)]
pub struct Metadata {
    pub filename: String,
    pub details: Details,
}

fn invalid(message: impl Into<String>) -> ApiError {
    ApiError::bad_request("invalid_upload_metadata", message)
}

pub fn parse(header: Option<&str>) -> Result<Metadata, ApiError> {
    let header = header.unwrap_or("").trim();
    if header.len() > MAX_METADATA_BYTES {
        return Err(invalid(format!("Upload-Metadata is longer than {MAX_METADATA_BYTES} bytes")));
    }
    let mut seen = std::collections::HashSet::new();
    let (mut filename, mut details) = (None, Details::default());
    for pair in header.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let mut parts = pair.split(' ').filter(|p| !p.is_empty());
        let key = parts.next().unwrap_or_default();
        let value = match parts.next() {
            Some(encoded) => {
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(encoded)
                    .map_err(|_| invalid(format!("the value of {key:?} is not base64")))?;
                String::from_utf8(bytes).map_err(|_| invalid(format!("the value of {key:?} is not UTF-8")))?
            }
            None => String::new(),
        };
        if parts.next().is_some() {
            return Err(invalid(format!("{pair:?} is not `key base64-value`")));
        }
        if !seen.insert(key.to_string()) {
            return Err(invalid(format!("{key:?} is given twice")));
        }
        match key {
            "filename" => filename = Some(value),
            // What Uppy and others name it.
            "name" if filename.is_none() => filename = Some(value),
            "title" => details.title = Some(value),
            "artist" => details.artist = Some(value),
            "album" => details.album = Some(value),
            "preset" => details.preset = Some(value),
            "loudnorm" => details.loudnorm = Some(value),
            _ => {}
        }
    }
    details.tags()?;
    details.preset()?;
    details.loudnorm()?;
    Ok(Metadata { filename: clean_filename(filename.as_deref()), details })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn reads_the_details_and_ignores_what_it_does_not_know() {
        let header = format!(
            "filename {},title {},preset {},loudnorm {}, filetype {},is_confidential",
            b64("talk.mp4"),
            b64("Ünïcode"),
            b64("v2"),
            b64("true"),
            b64("video/mp4")
        );
        let m = parse(Some(&header)).expect("parses");
        assert_eq!(m.filename, "talk.mp4");
        assert_eq!(m.details.title.as_deref(), Some("Ünïcode"));
        assert!(m.details.loudnorm().expect("loudnorm"));
    }

    #[test]
    fn refuses_what_is_malformed_with_the_reason() {
        for (header, says) in [
            ("title !!!", "not base64"),
            ("title YQ== b", "not `key base64-value`"),
            (&format!("title {0},title {0}", b64("x")), "given twice"),
            (&format!("preset {}", b64("flac")), "preset"),
        ] {
            let e = parse(Some(header)).expect_err(header);
            assert!(e.message.contains(says), "{header}: {}", e.message);
        }
    }

    #[test]
    fn a_missing_filename_gets_a_usable_one() {
        assert!(!parse(None).expect("parses").filename.is_empty());
    }
}
