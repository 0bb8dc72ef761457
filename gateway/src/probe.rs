//! What an upload really is, from its bytes: FFmpeg's demuxer probe, never the file name or
//! the client's `Content-Type`. Runs on the spooled copy, so formats that keep their index at
//! the end (MP4 with a trailing `moov`) are judged correctly, and opens it the way the
//! converter will (`tunewire_media_input`): what the probe accepts, the converter can read.

use std::path::Path;
use std::time::{Duration, Instant};

use ffmpeg_next as ffmpeg;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Media with at least one audio stream: worth converting.
    Audio { format: String },
    /// Media FFmpeg understands, but without sound (a silent video, an image).
    NoAudio { format: String },
    /// Not media FFmpeg can read at all.
    NotMedia,
}

#[derive(Debug, thiserror::Error)]
#[error("FFmpeg could not be initialised: {0}")]
pub struct ProbeInitError(#[from] ffmpeg::Error);

pub fn init() -> Result<(), ProbeInitError> {
    tunewire_media_input::init()?;
    Ok(())
}

/// Longer than any honest file's headers take to read.
const PROBE_TIME_LIMIT: Duration = Duration::from_secs(10);

/// CPU- and disk-bound: call from a blocking thread.
pub fn probe(path: &Path) -> Verdict {
    let Ok(file) = std::fs::File::open(path) else {
        return Verdict::NotMedia;
    };
    let deadline = Instant::now() + PROBE_TIME_LIMIT;
    let Ok(input) = tunewire_media_input::open(file, move || Instant::now() >= deadline) else {
        return Verdict::NotMedia;
    };
    let format = input.format().name().to_string();
    if input.streams().best(ffmpeg::media::Type::Audio).is_some() {
        Verdict::Audio { format }
    } else {
        Verdict::NoAudio { format }
    }
}
