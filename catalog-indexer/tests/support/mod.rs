//! What both catalog suites feed the indexer: a `media.converted` for a track.

use anyhow::Context;
use tunewire_contract::{AudioOutput, Owner, TrackTags};
use tunewire_contract::{FileId, JobId, MediaConverted, Preset, UserId};

pub fn converted(owner: UserId, title: &str, artist: &str, album: Option<&str>) -> anyhow::Result<MediaConverted> {
    Ok(MediaConverted {
        job_id: JobId::new(),
        owner: Owner { id: owner, email: "owner@example.com".parse()? },
        source_filename: format!("{title}.mp4"),
        preset: Preset::default(),
        output: AudioOutput {
            file_id: FileId::from_bytes(*uuid::Uuid::new_v4().as_bytes().first_chunk().context("bytes")?),
            size: 1000,
            duration_s: 200.0,
            bitrate: 192_000,
            sample_rate: 44_100,
            channels: 2,
        },
        tags: TrackTags {
            title: Some(title.into()),
            artist: Some(artist.into()),
            album: album.map(str::to_string),
            genre: None,
        },
        source_facts: Default::default(),
    })
}
