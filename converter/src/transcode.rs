//! One file to MP3, in-process with FFmpeg's libraries. Blocking and CPU-bound: run it on a
//! blocking thread. Output is 44.1 kHz, mono for mono sources and stereo otherwise, with
//! ID3v2 tags. Timestamps are counted in samples, which also absorbs codec priming.

use std::path::Path;

use ffmpeg::{ChannelLayout, Dictionary, Packet, Rational, codec, filter, format, frame, media};
use ffmpeg_next as ffmpeg;
use tunewire_events::Preset;
use tunewire_events::contract::{SourceFacts, TrackTags};

pub const OUTPUT_RATE: u32 = 44_100;
/// FFmpeg's `FF_QP2LAMBDA`: quality values are given to encoders in lambda units.
const QP2LAMBDA: i32 = 118;
/// Integrated loudness target of normalisation (the streaming services' common level).
pub const TARGET_LUFS: f64 = -14.0;
/// Read errors tolerated before a file is declared damaged.
const MAX_READ_ERRORS: u32 = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TranscodeError {
    /// The input itself is the problem; retrying cannot help. The text is for the uploader.
    #[error("{0}")]
    BadMedia(String),
    /// Our side failed (disk, encoder setup); worth another attempt.
    #[error("{0}")]
    Internal(String),
}

pub struct Request<'a> {
    pub input: &'a Path,
    pub output: &'a Path,
    pub preset: Preset,
    pub overrides: &'a TrackTags,
    /// Used as the title when neither the uploader nor the source gives one.
    pub fallback_title: &'a str,
    pub max_duration_s: f64,
    /// EBU R128 loudness normalisation to -14 LUFS integrated.
    pub normalize_loudness: bool,
    /// Wall-clock budget for this conversion; past it the job fails with the reason.
    pub time_limit: std::time::Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Report {
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
    ffmpeg::init().map_err(internal("initialising FFmpeg"))?;
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

pub fn transcode(req: &Request<'_>, progress: &mut dyn FnMut(f32)) -> Result<Report, TranscodeError> {
    init()?;
    let mut ictx = format::input(&req.input)
        .map_err(|e| TranscodeError::BadMedia(format!("the file is not audio or video that can be read ({e})")))?;

    let started = std::time::Instant::now();
    let (stream_index, parameters, stream_time_base, stream_meta, codec_name) = {
        let stream = ictx
            .streams()
            .best(media::Type::Audio)
            .ok_or_else(|| TranscodeError::BadMedia("no audio track was found in the file".into()))?;
        let codec_name = stream.parameters().id().name().to_string();
        (stream.index(), stream.parameters(), stream.time_base(), stream.metadata().to_owned(), codec_name)
    };
    // Cover art: a picture stream marked "attached" (MP4 covr, FLAC and MP3 pictures).
    let cover = ictx
        .streams()
        .find(|s| s.disposition().contains(format::stream::Disposition::ATTACHED_PIC))
        .map(|s| (s.index(), s.parameters()));
    let claimed_s =
        if ictx.duration() > 0 { ictx.duration() as f64 / f64::from(ffmpeg::ffi::AV_TIME_BASE) } else { 0.0 };
    if claimed_s > req.max_duration_s {
        return Err(TranscodeError::BadMedia(format!(
            "the file lasts {claimed_s:.0} s, longer than the {:.0} s limit",
            req.max_duration_s
        )));
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
    let pick = |over: &Option<String>, key: &str| {
        over.clone().or_else(|| tag(&container_meta, key)).or_else(|| tag(&stream_meta, key))
    };
    let tags = TrackTags {
        title: pick(&req.overrides.title, "title").or_else(|| Some(req.fallback_title.to_string())),
        artist: pick(&req.overrides.artist, "artist"),
        album: pick(&req.overrides.album, "album"),
        genre: pick(&req.overrides.genre, "genre"),
    };
    // Passed through to the MP3 as they are (ID3v2.4 TPE2, TRCK, TDRC).
    let passthrough: Vec<(&str, String)> = [("album_artist", "album_artist"), ("track", "track"), ("date", "date")]
        .into_iter()
        .filter_map(|(out, key)| pick(&None, key).map(|v| (out, v)))
        .collect();
    let mut source = SourceFacts {
        container: ictx.format().name().to_string(),
        codec: codec_name,
        duration_s: claimed_s,
        sample_rate: in_rate,
        channels: in_channels,
        bitrate: u64::try_from(ictx.bit_rate()).unwrap_or(0),
        has_cover: cover.is_some(),
        warnings: Vec::new(),
    };

    let codec = ffmpeg::encoder::find_by_name("libmp3lame")
        .ok_or_else(|| TranscodeError::Internal("FFmpeg was built without libmp3lame".into()))?;
    let mut octx = format::output_as(&req.output, "mp3").map_err(internal("creating the output file"))?;
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
    // APIC frame (and holds the audio back until the picture packet has come).
    let cover_in = match &cover {
        Some((index, parameters)) => {
            let mut ostream =
                octx.add_stream(ffmpeg::encoder::find(codec::Id::None)).map_err(internal("adding the cover stream"))?;
            ostream.set_parameters(parameters.clone());
            // Plain fields ffmpeg-next does not wrap: the muxer picks its own tag, and the
            // stream must say it is a picture, not video.
            unsafe {
                let st = ostream.as_mut_ptr();
                (*(*st).codecpar).codec_tag = 0;
                (*st).disposition = ffmpeg::ffi::AV_DISPOSITION_ATTACHED_PIC;
            }
            Some(*index)
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
    octx.write_header().map_err(internal("writing the MP3 header"))?;
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

    let mut pipeline = Pipeline { graph, encoder, out_time_base, in_samples: 0, out_samples: 0, in_layout };
    let mut packet = Packet::empty();
    let mut read_errors = 0u32;
    let mut decode_errors = 0u32;
    let mut decoded = frame::Audio::empty();
    loop {
        match packet.read(&mut ictx) {
            Ok(()) => {}
            Err(ffmpeg::Error::Eof) => break,
            Err(e) => {
                read_errors += 1;
                if read_errors > MAX_READ_ERRORS {
                    return Err(TranscodeError::BadMedia(format!(
                        "the file is damaged and cannot be read to the end ({e})"
                    )));
                }
                continue;
            }
        }
        if started.elapsed() > req.time_limit {
            return Err(TranscodeError::BadMedia(format!(
                "converting took longer than the {} s limit",
                req.time_limit.as_secs()
            )));
        }
        if Some(packet.stream()) == cover_in {
            packet.set_stream(1);
            packet.set_position(-1);
            // A broken picture is not worth failing the track for.
            if let Err(e) = packet.write(&mut octx) {
                tracing::warn!(error = %e, "the cover could not be copied");
            }
            continue;
        }
        if packet.stream() != stream_index {
            continue;
        }
        if decoder.send_packet(&packet).is_err() {
            decode_errors += 1;
            continue;
        }
        while decoder.receive_frame(&mut decoded).is_ok() {
            pipeline.push(&mut decoded, &mut octx)?;
        }
        if claimed_s > 0.0 {
            progress((pipeline.in_samples as f64 / f64::from(in_rate) / claimed_s).min(1.0) as f32);
        }
    }
    let _ = decoder.send_eof();
    while decoder.receive_frame(&mut decoded).is_ok() {
        pipeline.push(&mut decoded, &mut octx)?;
    }
    pipeline.finish(&mut octx)?;
    if pipeline.out_samples == 0 {
        return Err(TranscodeError::BadMedia(format!(
            "the audio track holds no sound that could be decoded ({decode_errors} damaged packets)"
        )));
    }
    octx.write_trailer().map_err(internal("finishing the MP3 file"))?;
    progress(1.0);
    let decoded_s = pipeline.in_samples as f64 / f64::from(in_rate);
    if claimed_s > 0.0 && decoded_s < claimed_s * (1.0 - SHORT_AUDIO_TOLERANCE) {
        source.warnings.push(format!(
            "the audio decoded to {decoded_s:.1} s, {:.0}% shorter than the {claimed_s:.1} s the file claims: parts of it may be damaged",
            (1.0 - decoded_s / claimed_s) * 100.0
        ));
    }

    Ok(Report {
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
