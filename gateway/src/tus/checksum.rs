//! `Upload-Checksum` (the checksum extension): `<algorithm> <base64 digest>` of one PATCH's
//! body. A body whose digest differs is 460 and none of it is kept.

use base64::Engine;
use sha2::Digest;
use tunewire_service_runtime::ApiError;
use warp::http::StatusCode;

/// What `Tus-Checksum-Algorithm` offers.
pub const ALGORITHMS: &str = "sha1,sha256";

/// tus's status for a body that does not match its checksum.
pub const MISMATCH: u16 = 460;

pub enum Running {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

pub struct Checksum {
    running: Running,
    expected: Vec<u8>,
}

impl Checksum {
    pub fn parse(header: &str) -> Result<Self, ApiError> {
        let (algorithm, encoded) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
        let running = match algorithm {
            "sha1" => Running::Sha1(sha1::Sha1::new()),
            "sha256" => Running::Sha256(sha2::Sha256::new()),
            other => {
                return Err(ApiError::bad_request(
                    "unsupported_checksum",
                    format!("checksum algorithm {other:?} is not supported; use one of {ALGORITHMS}"),
                ));
            }
        };
        let expected = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .map_err(|_| ApiError::bad_request("invalid_checksum", "the Upload-Checksum digest is not base64"))?;
        Ok(Self { running, expected })
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match &mut self.running {
            Running::Sha1(h) => h.update(bytes),
            Running::Sha256(h) => h.update(bytes),
        }
    }

    pub fn matches(&self) -> bool {
        let digest: Vec<u8> = match &self.running {
            Running::Sha1(h) => h.clone().finalize().to_vec(),
            Running::Sha256(h) => h.clone().finalize().to_vec(),
        };
        digest == self.expected
    }
}

pub fn mismatch() -> ApiError {
    ApiError::new(
        StatusCode::from_u16(MISMATCH).unwrap_or(StatusCode::BAD_REQUEST),
        "checksum_mismatch",
        "the body does not match its Upload-Checksum; none of it was kept: send it again from Upload-Offset",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_the_body_against_its_digest() {
        // `printf hello | sha1sum`, in base64.
        let mut good = Checksum::parse("sha1 qvTGHdzF6KLavt4PO0gs2a6pQ00=").expect("parses");
        good.update(b"hel");
        good.update(b"lo");
        assert!(good.matches());
        let mut bad = Checksum::parse("sha256 qvTGHdzF6KLavt4PO0gs2a6pQ00=").expect("parses");
        bad.update(b"hello");
        assert!(!bad.matches());
        assert!(Checksum::parse("md5 qvTGHdzF6KLavt4PO0gs2a6pQ00=").is_err());
    }
}
