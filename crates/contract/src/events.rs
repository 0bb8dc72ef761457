//! The events, versioned by their routing key. Messages carry ids and small metadata,
//! never media bytes.

use std::fmt;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::ids::{Email, FileId, JobId, UserId};

/// An event type and the routing key it is published under.
pub trait Event: Serialize + DeserializeOwned + Send + 'static {
    const ROUTING_KEY: &'static str;
    fn job_id(&self) -> JobId;
}

/// The encoding the user asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Preset {
    Cbr128,
    #[default]
    Cbr192,
    Cbr256,
    Cbr320,
    V0,
    V2,
}

impl Preset {
    pub const ALL: [Preset; 6] =
        [Preset::Cbr128, Preset::Cbr192, Preset::Cbr256, Preset::Cbr320, Preset::V0, Preset::V2];

    pub fn as_str(self) -> &'static str {
        match self {
            Preset::Cbr128 => "cbr128",
            Preset::Cbr192 => "cbr192",
            Preset::Cbr256 => "cbr256",
            Preset::Cbr320 => "cbr320",
            Preset::V0 => "v0",
            Preset::V2 => "v2",
        }
    }
}

impl FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Preset::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown preset {s:?}; expected one of cbr128, cbr192, cbr256, cbr320, v0, v2"))
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who is waiting for the outcome, carried along so that no consumer has to ask the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub id: UserId,
    pub email: Email,
}

/// Title, artist and album: given by the uploader, or found in the source's tags.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TrackTags {
    pub title: Option<String>,
    pub artist: Option<String>,
    pub album: Option<String>,
    pub genre: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceFile {
    pub file_id: FileId,
    pub filename: String,
    pub size: u64,
    pub sha256: String,
}

/// `media.uploaded`: the original is durable in GridFS bucket `uploads`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaUploaded {
    pub job_id: JobId,
    pub owner: Owner,
    pub source: SourceFile,
    pub preset: Preset,
    /// Fields the uploader typed; they win over the source's own tags.
    #[serde(default)]
    pub overrides: TrackTags,
    /// Normalise loudness to -14 LUFS integrated (EBU R128), as the uploader chose.
    #[serde(default)]
    pub normalize_loudness: bool,
}

/// `media.progress`: a conversion is under way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediaProgress {
    pub job_id: JobId,
    /// From 0.0 to 1.0.
    pub progress: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AudioOutput {
    pub file_id: FileId,
    pub size: u64,
    pub duration_s: f64,
    pub bitrate: u32,
    pub sample_rate: u32,
    pub channels: u16,
}

/// What the converter learnt about the original while converting it.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct SourceFacts {
    pub container: String,
    pub codec: String,
    /// What the container claims.
    pub duration_s: f64,
    pub sample_rate: u32,
    pub channels: u16,
    /// Bits per second; 0 when unknown.
    pub bitrate: u64,
    pub has_cover: bool,
    /// Things the uploader may want to know, e.g. audio shorter than the file claims.
    pub warnings: Vec<String>,
}

/// `media.converted`: the MP3 is durable in GridFS bucket `audio`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MediaConverted {
    pub job_id: JobId,
    pub owner: Owner,
    pub source_filename: String,
    pub preset: Preset,
    pub output: AudioOutput,
    pub tags: TrackTags,
    /// Absent from events of converters before it existed.
    #[serde(default)]
    pub source_facts: SourceFacts,
}

/// `media.failed`: the job will never convert; `reason` is written for the uploader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaFailed {
    pub job_id: JobId,
    pub owner: Owner,
    pub source_filename: String,
    pub reason: String,
}

/// `job.converted`: the gateway applied a `media.converted` to the job it names, whose claimed
/// output it is; the owner and the source's name are the job's own, from the gateway's row.
/// The notifier mails only these: a `media.converted` is a claim anything on the bus could make.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobConverted(pub MediaConverted);

/// `job.failed`: the gateway applied a `media.failed`; owner and source name as in `job.converted`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobFailed(pub MediaFailed);

/// `media.catalogued`: the track is in the catalog and the search index, with its tags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaCatalogued {
    pub job_id: JobId,
    pub tags: Vec<String>,
}

/// `media.deleted`: the owner deleted the job. Whatever any service holds of it goes (the MP3,
/// the catalog row, the search document), and no work on it finishes (no MP3 kept, no email).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaDeleted {
    pub job_id: JobId,
}

/// `media.expired`: retention removed the job's MP3; the catalog forgets the track.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaExpired {
    pub job_id: JobId,
}

/// What a consumer can decode from a delivery: one event type, or an enum of several
/// told apart by routing key.
pub trait Message: Sized + Send + 'static {
    fn decode(routing_key: &str, payload: &[u8]) -> Result<Self, String>;
    /// The job it is about, for the logs and the trace.
    fn job_id(&self) -> Option<JobId>;
}

impl<E: Event> Message for E {
    fn decode(_routing_key: &str, payload: &[u8]) -> Result<Self, String> {
        decode_as(payload)
    }
    fn job_id(&self) -> Option<JobId> {
        Some(Event::job_id(self))
    }
}

/// What the gateway follows to keep a job's state.
#[derive(Debug, Clone, PartialEq)]
// One value per message, moved once: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
pub enum JobUpdate {
    Progress(MediaProgress),
    Converted(MediaConverted),
    Failed(MediaFailed),
    Catalogued(MediaCatalogued),
}

/// How a job ended, as the gateway vouches for it, for the notifier; or that it is gone.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum Outcome {
    Converted(MediaConverted),
    Failed(MediaFailed),
    Deleted(MediaDeleted),
    /// An unchecked `media.converted` or `media.failed`, under a binding of an earlier version
    /// (kept by a broker until the setup removes it): never mailed, and not worth a dead letter.
    Unvouched {
        routing_key: String,
    },
}

/// What the catalog follows: tracks to add, and tracks to forget.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)]
pub enum CatalogChange {
    Converted(MediaConverted),
    Deleted(MediaDeleted),
    Expired(MediaExpired),
}

fn decode_as<E: Event>(payload: &[u8]) -> Result<E, String> {
    serde_json::from_slice(payload).map_err(|e| e.to_string())
}

impl Message for JobUpdate {
    fn decode(routing_key: &str, payload: &[u8]) -> Result<Self, String> {
        match routing_key {
            MediaProgress::ROUTING_KEY => decode_as(payload).map(JobUpdate::Progress),
            MediaConverted::ROUTING_KEY => decode_as(payload).map(JobUpdate::Converted),
            MediaFailed::ROUTING_KEY => decode_as(payload).map(JobUpdate::Failed),
            MediaCatalogued::ROUTING_KEY => decode_as(payload).map(JobUpdate::Catalogued),
            other => Err(format!("unexpected routing key {other:?}")),
        }
    }
    fn job_id(&self) -> Option<JobId> {
        Some(match self {
            JobUpdate::Progress(e) => e.job_id,
            JobUpdate::Converted(e) => e.job_id,
            JobUpdate::Failed(e) => e.job_id,
            JobUpdate::Catalogued(e) => e.job_id,
        })
    }
}

impl Message for Outcome {
    fn decode(routing_key: &str, payload: &[u8]) -> Result<Self, String> {
        match routing_key {
            JobConverted::ROUTING_KEY => decode_as(payload).map(|JobConverted(c)| Outcome::Converted(c)),
            JobFailed::ROUTING_KEY => decode_as(payload).map(|JobFailed(f)| Outcome::Failed(f)),
            MediaDeleted::ROUTING_KEY => decode_as(payload).map(Outcome::Deleted),
            MediaConverted::ROUTING_KEY | MediaFailed::ROUTING_KEY => {
                Ok(Outcome::Unvouched { routing_key: routing_key.to_string() })
            }
            other => Err(format!("unexpected routing key {other:?}")),
        }
    }
    fn job_id(&self) -> Option<JobId> {
        match self {
            Outcome::Converted(e) => Some(e.job_id),
            Outcome::Failed(e) => Some(e.job_id),
            Outcome::Deleted(e) => Some(e.job_id),
            Outcome::Unvouched { .. } => None,
        }
    }
}

impl Message for CatalogChange {
    fn decode(routing_key: &str, payload: &[u8]) -> Result<Self, String> {
        match routing_key {
            MediaConverted::ROUTING_KEY => decode_as(payload).map(CatalogChange::Converted),
            MediaDeleted::ROUTING_KEY => decode_as(payload).map(CatalogChange::Deleted),
            MediaExpired::ROUTING_KEY => decode_as(payload).map(CatalogChange::Expired),
            other => Err(format!("unexpected routing key {other:?}")),
        }
    }
    fn job_id(&self) -> Option<JobId> {
        Some(match self {
            CatalogChange::Converted(e) => e.job_id,
            CatalogChange::Deleted(e) => e.job_id,
            CatalogChange::Expired(e) => e.job_id,
        })
    }
}

macro_rules! event {
    ($ty:ty, $key:literal) => {
        impl Event for $ty {
            const ROUTING_KEY: &'static str = $key;
            fn job_id(&self) -> JobId {
                self.job_id
            }
        }
    };
}

event!(MediaUploaded, "media.uploaded");
event!(MediaProgress, "media.progress");
event!(MediaConverted, "media.converted");
event!(MediaFailed, "media.failed");
event!(MediaCatalogued, "media.catalogued");
event!(MediaDeleted, "media.deleted");
event!(MediaExpired, "media.expired");

impl Event for JobConverted {
    const ROUTING_KEY: &'static str = "job.converted";
    fn job_id(&self) -> JobId {
        self.0.job_id
    }
}

impl Event for JobFailed {
    const ROUTING_KEY: &'static str = "job.failed";
    fn job_id(&self) -> JobId {
        self.0.job_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn preset_parses_its_own_names_only() {
        for p in Preset::ALL {
            assert_eq!(p.as_str().parse::<Preset>().unwrap(), p);
        }
        assert!("CBR192".parse::<Preset>().is_err());
        assert!("cbr64".parse::<Preset>().unwrap_err().contains("cbr192"));
    }

    #[test]
    fn uploaded_event_rejects_an_invalid_file_id() {
        let json = serde_json::json!({
            "job_id": JobId::new(), "preset": "cbr192",
            "owner": {"id": UserId::new(), "email": "a@b.io"},
            "source": {"file_id": "not-an-id", "filename": "a.mp4", "size": 1, "sha256": ""}
        });
        assert!(serde_json::from_value::<MediaUploaded>(json).is_err());
    }
}
