//! One file to MP3, in-process with FFmpeg's libraries. Blocking and CPU-bound: run it on a
//! blocking thread. It reads the original from any `Read + Seek` (the converter's is GridFS,
//! chunk by chunk) and writes the MP3 to an `Output` as it is encoded, so nothing is staged
//! and memory does not grow with the file. Output is 44.1 kHz, mono for mono sources and
//! stereo otherwise, with ID3v2 tags. Timestamps are counted in samples, which also absorbs
//! codec priming.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ffmpeg::{ChannelLayout, Dictionary, Packet, Rational, codec, filter, format, frame, media};
use ffmpeg_next as ffmpeg;
use tunewire_contract::Preset;
use tunewire_contract::{SourceFacts, TrackTags};
use tunewire_media_input::OpenError;

pub const OUTPUT_RATE: u32 = 44_100;
/// FFmpeg's `FF_QP2LAMBDA`: quality values are given to encoders in lambda units.
const QP2LAMBDA: i32 = 118;
/// Integrated loudness target of normalisation (the streaming services' common level).
pub const TARGET_LUFS: f64 = -14.0;
/// Read errors tolerated before a file is declared damaged.
const MAX_READ_ERRORS: u32 = 64;
/// A tag value longer than this is not a title but an attack on whoever displays it.
pub const MAX_TAG_BYTES: usize = 4096;
/// Covers larger than this are left out (with a warning) rather than copied.
pub const MAX_COVER_BYTES: usize = 16 << 20;
/// The MP3's header (ID3v2 with the cover, the Xing frame) is held until the end; this bounds it.
pub const MAX_HEADER_BYTES: u64 = MAX_COVER_BYTES as u64 + (1 << 20);
/// The highest bitrate a preset produces, for the output's size limit.
const MAX_BITRATE: f64 = 320_000.0;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TranscodeError {
    /// The input itself is the problem; retrying cannot help. The text is for the uploader.
    #[error("{0}")]
    BadMedia(String),
    /// Our side failed (the encoder's set-up, FFmpeg itself); worth a few more attempts.
    #[error("{0}")]
    Internal(String),
    /// The store failed or stopped answering while the original was read: not the file's
    /// doing, and not a reason to give up on it.
    #[error("{0}")]
    Store(String),
}

/// Where the MP3 goes: written as it is encoded, except the header, which the muxer fills in
/// at the end and which must stay rewritable until then.
pub trait Output: Write + Seek + Send + 'static {
    /// Everything written so far is the header; what follows is not rewritten.
    fn header_written(&mut self) -> io::Result<()>;
    /// The file is complete; returns its length.
    fn finish(&mut self) -> io::Result<u64>;
}

impl Output for std::fs::File {
    fn header_written(&mut self) -> io::Result<()> {
        Ok(())
    }
    fn finish(&mut self) -> io::Result<u64> {
        self.flush()?;
        self.seek(SeekFrom::End(0))
    }
}

impl Output for tunewire_media_store::ChunkWriter {
    fn header_written(&mut self) -> io::Result<()> {
        self.head_written()
    }
    fn finish(&mut self) -> io::Result<u64> {
        tunewire_media_store::ChunkWriter::finish(self)
    }
}

pub struct Request<'a> {
    pub preset: Preset,
    pub overrides: &'a TrackTags,
    /// Used as the title when neither the uploader nor the source gives one.
    pub fallback_title: &'a str,
    /// Longer inputs fail with a reason, whether the header says so or the decoder finds out.
    pub max_duration_s: f64,
    /// EBU R128 loudness normalisation to -14 LUFS integrated.
    pub normalize_loudness: bool,
    /// Wall-clock budget for this conversion, reads that block included; past it the job
    /// fails with the reason.
    pub time_limit: Duration,
}

impl Request<'_> {
    /// The MP3 can be no larger than the longest allowed input at the highest bitrate.
    pub fn max_output_bytes(&self) -> u64 {
        (self.max_duration_s * MAX_BITRATE / 8.0 * 1.05) as u64 + MAX_HEADER_BYTES
    }
}

/// The first I/O error a source or output met, kept because FFmpeg reduces it to an errno.
#[derive(Default)]
struct IoFault(Mutex<Option<io::Error>>);

impl IoFault {
    fn record(&self, e: &io::Error) {
        if let Ok(mut slot) = self.0.lock()
            && slot.is_none()
        {
            *slot = Some(io::Error::new(e.kind(), e.to_string()));
        }
    }
    fn is_set(&self) -> bool {
        self.0.lock().is_ok_and(|slot| slot.is_some())
    }
    fn take(&self) -> Option<io::Error> {
        self.0.lock().ok().and_then(|mut slot| slot.take())
    }
}

/// FFmpeg reports an output fault as an errno; the fault itself says whether it was ours (the
/// store) or the file's (a limit).
fn output_fault(fault: &IoFault) -> Option<TranscodeError> {
    fault.take().map(|e| match e.kind() {
        io::ErrorKind::FileTooLarge => TranscodeError::BadMedia(format!("the MP3 would be too large: {e}")),
        _ => TranscodeError::Internal(format!("writing the MP3: {e}")),
    })
}

fn output_error(fault: &IoFault, otherwise: TranscodeError) -> TranscodeError {
    output_fault(fault).unwrap_or(otherwise)
}

/// What the source went through: its first fault, and whether it was still waiting for the
/// store when FFmpeg last heard from it.
#[derive(Default)]
struct SourceWatch {
    fault: IoFault,
    waiting: std::sync::atomic::AtomicBool,
}

/// The source as FFmpeg sees it, watched. `Interrupted` is not a fault: it is the source
/// waiting, and FFmpeg asks again after polling the deadline.
struct Source<R> {
    inner: R,
    watch: Arc<SourceWatch>,
}

impl<R: Read> Read for Source<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let result = self.inner.read(buf);
        let waiting = matches!(&result, Err(e) if e.kind() == io::ErrorKind::Interrupted);
        self.watch.waiting.store(waiting, std::sync::atomic::Ordering::Relaxed);
        if let Err(e) = &result
            && !waiting
        {
            self.watch.fault.record(e);
        }
        result
    }
}

impl<R: Seek> Seek for Source<R> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.inner.seek(to).inspect_err(|e| self.watch.fault.record(e))
    }
}

/// The output shared between FFmpeg's I/O (which owns one handle) and the transcoder (which
/// marks the header and finishes the file through the other).
struct Shared<O> {
    inner: Arc<Mutex<O>>,
    fault: Arc<IoFault>,
}

impl<O> Shared<O> {
    fn lock(&self) -> io::Result<MutexGuard<'_, O>> {
        self.inner.lock().map_err(|_| io::Error::other("the output was poisoned by a panic"))
    }
}

impl<O: Write> Write for Shared<O> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.lock()?.write(buf).inspect_err(|e| self.fault.record(e))
    }
    fn flush(&mut self) -> io::Result<()> {
        self.lock()?.flush()
    }
}

impl<O: Seek> Seek for Shared<O> {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        self.lock()?.seek(to).inspect_err(|e| self.fault.record(e))
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Bytes of MP3 written.
    pub size: u64,
    pub duration_s: f64,
    pub bitrate: u32,
    pub sample_rate: u32,
    pub channels: u16,
    pub tags: TrackTags,
    pub source: SourceFacts,
}

/// Decoded audio this much shorter than the container claims means the demuxer skipped
/// damage silently: worth a warning.
const SHORT_AUDIO_TOLERANCE: f64 = 0.02;

fn internal(doing: &'static str) -> impl Fn(ffmpeg::Error) -> TranscodeError {
    move |e| TranscodeError::Internal(format!("{doing}: {e}"))
}

/// FFmpeg's global state; safe to call any number of times.
pub fn init() -> Result<(), TranscodeError> {
    tunewire_media_input::init().map_err(internal("initialising FFmpeg"))?;
    ffmpeg::util::log::set_level(ffmpeg::util::log::Level::Error);
    Ok(())
}

fn tag(dict: &ffmpeg::Dictionary<'_>, key: &str) -> Option<String> {
    dict.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v.trim().to_string()).filter(|v| !v.is_empty())
}

fn bitrate_kbps(preset: Preset) -> Option<u32> {
    match preset {
        Preset::Cbr128 => Some(128),
        Preset::Cbr192 => Some(192),
        Preset::Cbr256 => Some(256),
        Preset::Cbr320 => Some(320),
        Preset::V0 | Preset::V2 => None,
    }
}

/// Converts a file on local disk; for tests and benchmarks of the transcoder alone.
pub fn transcode_file(
    req: &Request<'_>,
    input: &std::path::Path,
    output: &std::path::Path,
    progress: &mut dyn FnMut(f32),
) -> Result<Report, TranscodeError> {
    let input = std::fs::File::open(input).map_err(|e| TranscodeError::Internal(format!("opening the input: {e}")))?;
    let output =
        std::fs::File::create(output).map_err(|e| TranscodeError::Internal(format!("creating the output: {e}")))?;
    transcode(req, input, output, progress)
}

/// A tag the file gives, refused when it is longer than any real one.
fn bounded(value: Option<String>, key: &str) -> Result<Option<String>, TranscodeError> {
    match value {
        Some(v) if v.len() > MAX_TAG_BYTES => Err(TranscodeError::BadMedia(format!(
            "its {key} tag is {} bytes long, over the {MAX_TAG_BYTES}-byte limit",
            v.len()
        ))),
        other => Ok(other),
    }
}

pub fn transcode<I, O>(
    req: &Request<'_>,
    input: I,
    output: O,
    progress: &mut dyn FnMut(f32),
) -> Result<Report, TranscodeError>
where
    I: Read + Seek + Send + 'static,
    O: Output,
{
    let watch = Arc::new(SourceWatch::default());
    let outcome = convert(req, Source { inner: input, watch: watch.clone() }, output, progress);
    // Whatever FFmpeg made of it (an early end of file, a missing stream, a damaged file, the
    // time limit), a store that failed or stopped answering is the store's doing.
    if let Some(e) = watch.fault.take() {
        return Err(TranscodeError::Store(format!("reading the original: {e}")));
    }
    if matches!(outcome, Err(TranscodeError::BadMedia(_))) && watch.waiting.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(TranscodeError::Store(format!(
            "the store stopped answering while the original was read (for more than the {} s limit)",
            req.time_limit.as_secs()
        )));
    }
    outcome
}

fn convert<I, O>(
    req: &Request<'_>,
    source: Source<I>,
    output: O,
    progress: &mut dyn FnMut(f32),
) -> Result<Report, TranscodeError>
where
    I: Read + Seek + Send + 'static,
    O: Output,
{
    init()?;
    let started = Instant::now();
    let deadline = started + req.time_limit;
    let time_limit =
        || TranscodeError::BadMedia(format!("converting took longer than the {} s limit", req.time_limit.as_secs()));
    let watch = source.watch.clone();
    let mut ictx = match tunewire_media_input::open(source, move || Instant::now() >= deadline) {
        Ok(ictx) => ictx,
        Err(OpenError::Interrupted) => return Err(time_limit()),
        Err(OpenError::Internal(e)) => return Err(TranscodeError::Internal(e.to_string())),
        Err(e @ OpenError::NotMedia(_)) => return Err(TranscodeError::BadMedia(e.to_string())),
    };

    let (stream_index, parameters, stream_time_base, stream_meta, codec_name) = {
        let stream = ictx
            .streams()
            .best(media::Type::Audio)
            .ok_or_else(|| TranscodeError::BadMedia("no audio track was found in the file".into()))?;
        let codec_name = stream.parameters().id().name().to_string();
        (stream.index(), stream.parameters(), stream.time_base(), stream.metadata().to_owned(), codec_name)
    };
    let mut warnings = Vec::new();
    // Cover art: the picture a stream marked "attached" carries (MP4 covr, FLAC and MP3
    // pictures), taken from the stream itself so the demuxer can skip every other stream.
    let cover =
        ictx.streams().find(|s| s.disposition().contains(format::stream::Disposition::ATTACHED_PIC)).and_then(|s| {
            let codec = s.parameters().id();
            // The MP3 muxer's APIC frame takes these; anything else would stall the muxer.
            if !matches!(codec, codec::Id::MJPEG | codec::Id::PNG) {
                return None;
            }
            // SAFETY: `attached_pic` is a packet the stream owns for the life of the context.
            let data = unsafe {
                let pic = &(*s.as_ptr()).attached_pic;
                if pic.data.is_null() || pic.size <= 0 {
                    return None;
                }
                std::slice::from_raw_parts(pic.data, pic.size as usize)
            };
            if data.len() > MAX_COVER_BYTES {
                warnings.push(format!(
                    "the cover picture ({} bytes) is over the {MAX_COVER_BYTES}-byte limit and was left out",
                    data.len()
                ));
                return None;
            }
            Some((Packet::copy(data), s.parameters()))
        });
    tunewire_media_input::discard_all_but(&mut ictx, &[stream_index]);
    let claimed_s =
        if ictx.duration() > 0 { ictx.duration() as f64 / f64::from(ffmpeg::ffi::AV_TIME_BASE) } else { 0.0 };
    let too_long = |seconds: f64| {
        TranscodeError::BadMedia(format!(
            "the file lasts {seconds:.0} s, longer than the {:.0} s limit",
            req.max_duration_s
        ))
    };
    if claimed_s > req.max_duration_s {
        return Err(too_long(claimed_s));
    }

    let mut decoder = codec::context::Context::from_parameters(parameters)
        .and_then(|c| c.decoder().audio())
        .map_err(|e| TranscodeError::BadMedia(format!("the audio codec is not supported ({e})")))?;
    decoder.set_packet_time_base(stream_time_base);
    let in_rate = decoder.rate();
    let in_channels = decoder.channels();
    if in_rate == 0 || in_channels == 0 {
        return Err(TranscodeError::BadMedia("the audio track declares no sample rate or channels".into()));
    }
    // WAV without a channel mask has no layout: assume the usual one for the count.
    let mut in_layout = decoder.channel_layout();
    if in_layout.is_empty() {
        in_layout = ChannelLayout::default(i32::from(in_channels));
    }
    let (out_layout, out_layout_name) =
        if in_channels == 1 { (ChannelLayout::MONO, "mono") } else { (ChannelLayout::STEREO, "stereo") };

    // Tags: the uploader's fields win, then the container's, then the stream's.
    let container_meta = ictx.metadata().to_owned();
    let pick = |over: &Option<String>, key: &str| -> Result<Option<String>, TranscodeError> {
        if over.is_some() {
            return Ok(over.clone());
        }
        Ok(bounded(tag(&container_meta, key), key)?.or(bounded(tag(&stream_meta, key), key)?))
    };
    let tags = TrackTags {
        title: pick(&req.overrides.title, "title")?.or_else(|| Some(req.fallback_title.to_string())),
        artist: pick(&req.overrides.artist, "artist")?,
        album: pick(&req.overrides.album, "album")?,
        genre: pick(&req.overrides.genre, "genre")?,
    };
    // Passed through to the MP3 as they are (ID3v2.4 TPE2, TRCK, TDRC).
    let mut passthrough: Vec<(&str, String)> = Vec::new();
    for (out, key) in [("album_artist", "album_artist"), ("track", "track"), ("date", "date")] {
        if let Some(v) = pick(&None, key)? {
            passthrough.push((out, v));
        }
    }
    let mut source = SourceFacts {
        container: ictx.format().name().to_string(),
        codec: codec_name,
        duration_s: claimed_s,
        sample_rate: in_rate,
        channels: in_channels,
        bitrate: u64::try_from(ictx.bit_rate()).unwrap_or(0),
        has_cover: cover.is_some(),
        warnings,
    };

    let codec = ffmpeg::encoder::find_by_name("libmp3lame")
        .ok_or_else(|| TranscodeError::Internal("FFmpeg was built without libmp3lame".into()))?;
    let output_fault_slot = Arc::new(IoFault::default());
    let output = Arc::new(Mutex::new(output));
    let io = format::context::StreamIo::from_write_seek_with_capacity(
        Shared { inner: output.clone(), fault: output_fault_slot.clone() },
        64 * 1024,
    )
    .map_err(internal("creating the output"))?;
    let mut octx = format::output_to_stream(io, None, Some("mp3")).map_err(internal("creating the output"))?;
    let output_failed =
        |e: ffmpeg::Error| output_error(&output_fault_slot, TranscodeError::Internal(format!("writing the MP3: {e}")));
    let mut encoder = codec::context::Context::new_with_codec(codec)
        .encoder()
        .audio()
        .map_err(internal("creating the MP3 encoder"))?;
    encoder.set_rate(OUTPUT_RATE as i32);
    encoder.set_channel_layout(out_layout);
    encoder.set_channels(out_layout.channels());
    encoder.set_format(format::Sample::F32(format::sample::Type::Planar));
    encoder.set_time_base((1, OUTPUT_RATE as i32));
    match bitrate_kbps(req.preset) {
        Some(kbps) => encoder.set_bit_rate(kbps as usize * 1000),
        None => {
            let quality = if req.preset == Preset::V0 { 0 } else { 2 };
            // ffmpeg-next exposes no setter for audio VBR quality; these are plain fields.
            unsafe {
                let ctx = encoder.as_mut_ptr();
                (*ctx).flags |= ffmpeg::ffi::AV_CODEC_FLAG_QSCALE as i32;
                (*ctx).global_quality = quality * QP2LAMBDA;
            }
        }
    }
    let encoder = encoder.open_as(codec).map_err(internal("opening the MP3 encoder"))?;
    {
        let mut ostream = octx.add_stream(codec).map_err(internal("adding the output stream"))?;
        // Copying the opened encoder's parameters keeps the LAME delay/padding header.
        ostream.set_parameters(&encoder);
        ostream.set_time_base((1, OUTPUT_RATE as i32));
    }
    // The cover goes in as a second, attached-picture stream: the mp3 muxer writes it as an
    // APIC frame, and holds audio back until the picture has come, so it is written first.
    let cover_packet = match cover {
        Some((packet, parameters)) => {
            let mut ostream =
                octx.add_stream(ffmpeg::encoder::find(codec::Id::None)).map_err(internal("adding the cover stream"))?;
            ostream.set_parameters(parameters);
            // Plain fields ffmpeg-next does not wrap: the muxer picks its own tag, and the
            // stream must say it is a picture, not video.
            unsafe {
                let st = ostream.as_mut_ptr();
                (*(*st).codecpar).codec_tag = 0;
                (*st).disposition = ffmpeg::ffi::AV_DISPOSITION_ATTACHED_PIC;
            }
            Some(packet)
        }
        None => None,
    };
    let mut out_meta = Dictionary::new();
    for (key, value) in
        [("title", &tags.title), ("artist", &tags.artist), ("album", &tags.album), ("genre", &tags.genre)]
    {
        if let Some(v) = value {
            out_meta.set(key, v);
        }
    }
    for (key, value) in &passthrough {
        out_meta.set(key, value);
    }
    // libavformat overwrites `encoder` (TSSE) with its own name in write_header; TENC
    // ("encoded by") carries ours.
    out_meta.set("encoded_by", "Tunewire");
    octx.set_metadata(out_meta);
    octx.write_header().map_err(output_failed)?;
    if let Some(mut packet) = cover_packet {
        packet.set_stream(1);
        packet.set_position(-1);
        packet.write(&mut octx).map_err(output_failed)?;
    }
    // The ID3v2 tag and the Xing frame are out; the muxer comes back to the Xing frame at the
    // end, everything after it is written once.
    // SAFETY: `pb` is the custom I/O context `output_to_stream` installed.
    unsafe { ffmpeg::ffi::avio_flush((*octx.as_mut_ptr()).pb) };
    output
        .lock()
        .map_err(|_| TranscodeError::Internal("the output was poisoned".into()))?
        .header_written()
        .map_err(|e| output_error(&output_fault_slot, TranscodeError::Internal(format!("writing the MP3: {e}"))))?;
    let out_time_base = octx.stream(0).map(|s| s.time_base()).unwrap_or(Rational(1, OUTPUT_RATE as i32));

    let mut graph = filter::Graph::new();
    let args = format!(
        "time_base=1/{in_rate}:sample_rate={in_rate}:sample_fmt={}:channel_layout=0x{:x}",
        decoder.format().name(),
        in_layout.bits()
    );
    let abuffer = filter::find("abuffer").ok_or_else(|| TranscodeError::Internal("no abuffer filter".into()))?;
    let abuffersink =
        filter::find("abuffersink").ok_or_else(|| TranscodeError::Internal("no abuffersink filter".into()))?;
    // The filter input takes the decoder's parameters as they are: refusing them (a channel
    // count FFmpeg has no layout for, a nonsense rate) is the file's doing, not ours.
    graph.add(&abuffer, "in", &args).map_err(|e| {
        TranscodeError::BadMedia(format!(
            "its audio ({} channels at {} Hz) is not a format FFmpeg can process ({e})",
            decoder.channels(),
            decoder.rate()
        ))
    })?;
    graph.add(&abuffersink, "out", "").map_err(internal("configuring the filter output"))?;
    // loudnorm (one pass, dynamic mode) works at 192 kHz internally; the resampler after it
    // brings the rate back down.
    let loudness =
        if req.normalize_loudness { format!("loudnorm=I={TARGET_LUFS}:TP=-1.5:LRA=11,") } else { String::new() };
    let spec = format!(
        "{loudness}aresample={OUTPUT_RATE},aformat=sample_fmts=fltp:sample_rates={OUTPUT_RATE}:channel_layouts={out_layout_name}"
    );
    graph
        .output("in", 0)
        .and_then(|p| p.input("out", 0))
        .and_then(|p| p.parse(&spec))
        .map_err(internal("building the filter graph"))?;
    graph.validate().map_err(internal("validating the filter graph"))?;
    // The MP3 encoder takes exactly frame_size samples per frame (1152 at 44.1 kHz).
    if let Some(mut sink) = graph.get("out") {
        sink.sink().set_frame_size(encoder.frame_size());
    }

    let max_samples = (req.max_duration_s * f64::from(in_rate)) as i64;
    let mut pipeline = Pipeline { graph, encoder, out_time_base, in_samples: 0, out_samples: 0, in_layout };
    let mut read_errors = 0u32;
    let mut decode_errors = 0u32;
    let mut decoded = frame::Audio::empty();
    loop {
        // A fresh packet each time: reading into one that still holds a buffer leaks it.
        let mut packet = Packet::empty();
        match packet.read(&mut ictx) {
            Ok(()) => {}
            Err(ffmpeg::Error::Eof) => break,
            Err(ffmpeg::Error::Exit) => return Err(time_limit()),
            Err(e) => {
                // A store fault is sticky: nothing more will be read.
                if watch.fault.is_set() {
                    return Err(TranscodeError::Internal(e.to_string()));
                }
                read_errors += 1;
                if read_errors > MAX_READ_ERRORS {
                    return Err(TranscodeError::BadMedia(format!(
                        "the file is damaged and cannot be read to the end ({e})"
                    )));
                }
                continue;
            }
        }
        if Instant::now() >= deadline {
            return Err(time_limit());
        }
        if packet.stream() != stream_index {
            continue;
        }
        if decoder.send_packet(&packet).is_err() {
            decode_errors += 1;
            continue;
        }
        while decoder.receive_frame(&mut decoded).is_ok() {
            pipeline.push(&mut decoded, &mut octx).map_err(|e| output_error(&output_fault_slot, e))?;
        }
        // Counted as decoded, not as the header claims: a file can lie about its length.
        if pipeline.in_samples > max_samples {
            return Err(TranscodeError::BadMedia(format!(
                "the audio decodes to more than the {:.0} s limit",
                req.max_duration_s
            )));
        }
        if claimed_s > 0.0 {
            progress((pipeline.in_samples as f64 / f64::from(in_rate) / claimed_s).min(1.0) as f32);
        }
    }
    let _ = decoder.send_eof();
    while decoder.receive_frame(&mut decoded).is_ok() {
        pipeline.push(&mut decoded, &mut octx).map_err(|e| output_error(&output_fault_slot, e))?;
    }
    pipeline.finish(&mut octx).map_err(|e| output_error(&output_fault_slot, e))?;
    if pipeline.out_samples == 0 {
        return Err(TranscodeError::BadMedia(format!(
            "the audio track holds no sound that could be decoded ({decode_errors} damaged packets)"
        )));
    }
    octx.write_trailer().map_err(output_failed)?;
    unsafe { ffmpeg::ffi::avio_flush((*octx.as_mut_ptr()).pb) };
    // The muxer ignores a failed seek back to the Xing frame; we do not.
    if let Some(e) = output_fault(&output_fault_slot) {
        return Err(e);
    }
    let size = output
        .lock()
        .map_err(|_| TranscodeError::Internal("the output was poisoned".into()))?
        .finish()
        .map_err(|e| TranscodeError::Internal(format!("finishing the MP3: {e}")))?;
    progress(1.0);
    let decoded_s = pipeline.in_samples as f64 / f64::from(in_rate);
    if claimed_s > 0.0 && decoded_s < claimed_s * (1.0 - SHORT_AUDIO_TOLERANCE) {
        source.warnings.push(format!(
            "the audio decoded to {decoded_s:.1} s, {:.0}% shorter than the {claimed_s:.1} s the file claims: parts of it may be damaged",
            (1.0 - decoded_s / claimed_s) * 100.0
        ));
    }

    Ok(Report {
        size,
        duration_s: pipeline.out_samples as f64 / f64::from(OUTPUT_RATE),
        bitrate: bitrate_kbps(req.preset).map_or(0, |k| k * 1000),
        sample_rate: OUTPUT_RATE,
        channels: out_layout.channels() as u16,
        tags,
        source,
    })
}

/// Decoded frames through the filter graph (resample, format, layout, framing) into the
/// encoder and the muxer.
struct Pipeline {
    graph: filter::Graph,
    encoder: codec::encoder::Audio,
    out_time_base: Rational,
    in_samples: i64,
    out_samples: i64,
    in_layout: ChannelLayout,
}

impl Pipeline {
    fn push(&mut self, decoded: &mut frame::Audio, octx: &mut format::context::Output) -> Result<(), TranscodeError> {
        if decoded.channel_layout().is_empty() {
            decoded.set_channel_layout(self.in_layout);
        }
        decoded.set_pts(Some(self.in_samples));
        self.in_samples += decoded.samples() as i64;
        let mut source =
            self.graph.get("in").ok_or_else(|| TranscodeError::Internal("filter input vanished".into()))?;
        source.source().add(decoded).map_err(|e| {
            TranscodeError::BadMedia(format!("the audio changes format mid-stream, which is not supported ({e})"))
        })?;
        self.drain_filter(octx)
    }

    fn drain_filter(&mut self, octx: &mut format::context::Output) -> Result<(), TranscodeError> {
        let mut filtered = frame::Audio::empty();
        loop {
            let mut sink =
                self.graph.get("out").ok_or_else(|| TranscodeError::Internal("filter output vanished".into()))?;
            if sink.sink().frame(&mut filtered).is_err() {
                return Ok(());
            }
            filtered.set_pts(Some(self.out_samples));
            self.out_samples += filtered.samples() as i64;
            self.encoder.send_frame(&filtered).map_err(internal("encoding a frame"))?;
            self.drain_encoder(octx)?;
        }
    }

    fn drain_encoder(&mut self, octx: &mut format::context::Output) -> Result<(), TranscodeError> {
        let mut encoded = Packet::empty();
        while self.encoder.receive_packet(&mut encoded).is_ok() {
            encoded.set_stream(0);
            encoded.rescale_ts(Rational(1, OUTPUT_RATE as i32), self.out_time_base);
            encoded.write_interleaved(octx).map_err(internal("writing the MP3 file"))?;
        }
        Ok(())
    }

    /// End of stream, in order: filter tail, then encoder.
    fn finish(&mut self, octx: &mut format::context::Output) -> Result<(), TranscodeError> {
        if let Some(mut source) = self.graph.get("in") {
            let _ = source.source().flush();
        }
        self.drain_filter(octx)?;
        let _ = self.encoder.send_eof();
        self.drain_encoder(octx)
    }
}
