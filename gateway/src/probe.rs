//! What an upload really is, from its bytes: FFmpeg's demuxer probe, never the file name or
//! the client's `Content-Type`. Runs on the spooled copy, so formats that keep their index at
//! the end (MP4 with a trailing `moov`) are judged correctly.

use std::path::Path;

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
    ffmpeg::init()?;
    ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Fatal);
    Ok(())
}

/// CPU- and disk-bound: call from a blocking thread.
pub fn probe(path: &Path) -> Verdict {
    let Ok(input) = ffmpeg::format::input(path) else {
        return Verdict::NotMedia;
    };
    let format = input.format().name().to_string();
    if input.streams().best(ffmpeg::media::Type::Audio).is_some() {
        Verdict::Audio { format }
    } else {
        Verdict::NoAudio { format }
    }
}
