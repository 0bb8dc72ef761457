//! An upload's file name: from the form's part or a raw body's headers, made safe to store
//! and to show.

/// A file name safe to store and to show: no folders, no control characters, bounded.
pub fn clean_filename(raw: Option<&str>) -> String {
    let base = raw.unwrap_or("").rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = base.chars().filter(|c| !c.is_control()).take(200).collect();
    let cleaned = cleaned.trim().trim_start_matches('.').to_string();
    if cleaned.is_empty() { "upload".into() } else { cleaned }
}

/// The file name of a raw-body upload: `X-Filename` (UTF-8, may be percent-encoded) or the
/// `filename` of a `Content-Disposition` header.
pub fn raw_filename(x_filename: Option<&[u8]>, disposition: Option<&str>) -> Option<String> {
    if let Some(raw) = x_filename {
        let decoded = percent_encoding::percent_decode(raw).decode_utf8().ok()?;
        return Some(decoded.into_owned());
    }
    let disposition = disposition?;
    disposition.split(';').map(str::trim).find_map(|param| {
        let value = param.strip_prefix("filename=")?;
        Some(value.trim_matches('"').to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filenames_lose_folders_and_control_characters() {
        assert_eq!(clean_filename(Some("../../etc/passwd")), "passwd");
        assert_eq!(clean_filename(Some("C:\\music\\song.mp4")), "song.mp4");
        assert_eq!(clean_filename(Some("a\u{0}b\nc.mkv")), "abc.mkv");
        assert_eq!(clean_filename(None), "upload");
        assert_eq!(clean_filename(Some("..")), "upload");
    }

    #[test]
    fn raw_filenames_come_from_either_header() {
        assert_eq!(raw_filename(Some(b"Caf%C3%A9.mp4"), None).as_deref(), Some("Café.mp4"));
        assert_eq!(raw_filename(Some("Café.mp4".as_bytes()), None).as_deref(), Some("Café.mp4"));
        assert_eq!(raw_filename(None, Some("attachment; filename=\"a b.wav\"")).as_deref(), Some("a b.wav"));
        assert_eq!(raw_filename(None, Some("inline")), None);
        assert_eq!(raw_filename(None, None), None);
    }
}
