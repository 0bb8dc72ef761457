//! Untrusted bytes into FFmpeg's demuxers, the one way both the gateway's probe and the
//! converter open an upload: from a `Read + Seek` of our own (never a path or URL FFmpeg
//! opens itself), only through the demuxers we accept, with no protocol for a demuxer to
//! open another file or address with, and with a callback that can end a blocked open or
//! read. Must never read from anywhere but the source it is given.

use std::io::{Read, Seek};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use ffmpeg::format::context::{Input, StreamIo};
use ffmpeg_next as ffmpeg;

/// The demuxers an upload may be read with: audio and video containers people upload.
/// Playlists and indirections (hls, concat, ffmetadata, image sequences, sdp, tee) are left
/// out: they exist to make FFmpeg open other files and URLs.
pub const ACCEPTED_DEMUXERS: &str = "mov,mp4,m4a,3gp,matroska,webm,avi,flv,asf,mpeg,mpegts,ogg,flac,wav,w64,aiff,\
mp3,aac,ac3,eac3,dts,truehd,mlp,caf,amr,au,wv,ape,tta,mpc,mpc8,rm,gsm,voc,dv,mxf,nut,xwma,dsf,iff,s337m";

/// No protocol has this name, so a demuxer that tries to open a nested input (a reference
/// in a container, say) is refused whatever the URL.
const NO_PROTOCOL: &str = "none";

/// FFmpeg's custom I/O buffer: larger reads mean fewer calls into the source.
const IO_BUFFER: usize = 256 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The bytes are not media FFmpeg will read with the accepted demuxers.
    #[error("the file is not audio or video that can be read ({0})")]
    NotMedia(ffmpeg::Error),
    /// The callback asked to stop before the file was open.
    #[error("opening the file was stopped")]
    Interrupted,
    /// Our side (memory, FFmpeg's set-up).
    #[error("FFmpeg could not open a reader: {0}")]
    Internal(ffmpeg::Error),
}

/// No single allocation FFmpeg makes for an upload may be larger: a picture, a tag or a
/// sample table that claims more is a file built to exhaust memory.
pub const MAX_ALLOCATION: usize = 64 << 20;

/// FFmpeg's global state; safe to call any number of times.
pub fn init() -> Result<(), ffmpeg::Error> {
    ffmpeg::init()?;
    // SAFETY: sets one process-wide integer; FFmpeg reads it on each allocation.
    unsafe { ffmpeg::ffi::av_max_alloc(MAX_ALLOCATION) };
    ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Fatal);
    Ok(())
}

/// Opens `source` for demuxing. `stop` is polled during the open and every read after it
/// (the source should return `ErrorKind::Interrupted` now and then while it waits, so that
/// it is); once it returns true, reads fail with `ffmpeg::Error::Exit`.
pub fn open<R, F>(source: R, mut stop: F) -> Result<Input, OpenError>
where
    R: Read + Seek + Send + 'static,
    F: FnMut() -> bool + Send + 'static,
{
    let io = StreamIo::from_read_seek_with_capacity(source, IO_BUFFER).map_err(OpenError::Internal)?;
    let mut options = ffmpeg::Dictionary::new();
    options.set("format_whitelist", ACCEPTED_DEMUXERS);
    options.set("protocol_whitelist", NO_PROTOCOL);
    let stopped = Arc::new(AtomicBool::new(false));
    let seen = stopped.clone();
    let opened = ffmpeg::format::input_from_stream_with_interrupt(io, None, Some(options), move || {
        let now = stop();
        if now {
            seen.store(true, Ordering::Relaxed);
        }
        now
    });
    match opened {
        Ok(input) => Ok(input),
        Err(ffmpeg::Error::Exit) => Err(OpenError::Interrupted),
        Err(_) if stopped.load(Ordering::Relaxed) => Err(OpenError::Interrupted),
        Err(e @ ffmpeg::Error::Other { errno: ffmpeg::ffi::ENOMEM }) => Err(OpenError::Internal(e)),
        Err(e) => Err(OpenError::NotMedia(e)),
    }
}

/// Tells the demuxer to drop every stream but `keep` before reading it: their packets are
/// skipped in the container, never allocated.
pub fn discard_all_but(input: &mut Input, keep: &[usize]) {
    let count = input.nb_streams() as usize;
    for index in (0..count).filter(|i| !keep.contains(i)) {
        if let Some(mut stream) = input.stream_mut(index) {
            // ffmpeg-next has no setter for the demuxer-side `discard` field.
            unsafe {
                (*stream.as_mut_ptr()).discard = ffmpeg::ffi::AVDiscard::AVDISCARD_ALL;
            }
        }
    }
}
