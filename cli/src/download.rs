//! `tunewire download`: a converted job's MP3, named after the original, written to
//! `NAME.mp3.JOB_ID.part` and renamed when whole; a `.part` left by an interrupted run is
//! continued with a Range request (a job's MP3 never changes, and the part is that job's
//! alone). Two jobs of one command with the same name get `NAME (2).mp3` and so on.

use std::path::{Path, PathBuf};

use futures_util::StreamExt;
use reqwest::{Method, StatusCode};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tunewire_contract::jobs::JobState;

use crate::api::{self, Api};
use crate::error::CliError;
use crate::jobs;
use crate::progress::Progress;

#[derive(Debug, Serialize)]
pub struct Downloaded {
    pub job_id: String,
    pub path: PathBuf,
    pub bytes: u64,
    /// Bytes an earlier, interrupted download had already written.
    pub resumed_at: u64,
}

/// The MP3's file name: the original's, with `.mp3`, and nothing that leaves the folder.
pub fn file_name(original: &str) -> String {
    let base = original.rsplit(['/', '\\']).next().unwrap_or_default();
    let stem = match base.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem,
        _ => base,
    };
    let clean: String = stem.chars().map(|c| if c.is_control() || c == ':' { '_' } else { c }).collect();
    let clean = clean.trim().trim_start_matches('.');
    format!("{}.mp3", if clean.is_empty() { "track" } else { clean })
}

/// `name`, or `name (2)`, `name (3)`... whichever `taken` does not hold yet; then taken.
pub fn unique(name: String, taken: &mut std::collections::HashSet<String>) -> String {
    let stem = name.strip_suffix(".mp3").unwrap_or(&name).to_owned();
    let mut candidate = name;
    let mut n = 2;
    while taken.contains(&candidate) {
        candidate = format!("{stem} ({n}).mp3");
        n += 1;
    }
    taken.insert(candidate.clone());
    candidate
}

pub async fn one(
    api: &Api,
    id: &str,
    dir: &Path,
    progress: &Progress,
    taken: &mut std::collections::HashSet<String>,
) -> Result<Downloaded, CliError> {
    let job = jobs::get(api, id).await?;
    let (Some(output), JobState::Converted) = (&job.output, job.state) else {
        return Err(CliError::Api {
            status: 409,
            code: "not_converted".into(),
            message: format!("job {id} is {}, there is no MP3 to download", job.state),
        });
    };
    let name = unique(file_name(&job.source.filename), taken);
    let target = dir.join(&name);
    let part = PathBuf::from(format!("{}.{}.part", target.display(), job.id));
    let have = tokio::fs::metadata(&part).await.map(|m| m.len()).unwrap_or(0);

    let mut request = api.request(Method::GET, &format!("/v1/files/{}", output.file_id))?;
    if have > 0 {
        request = request.header("range", format!("bytes={have}-"));
    }
    let response = api.send(request).await?;
    let (resumed_at, response) = match response.status() {
        StatusCode::PARTIAL_CONTENT if content_range_start(response.headers()) == Some(have) => (have, response),
        // Nothing past what we have: the part is whole if it is the file's length.
        StatusCode::RANGE_NOT_SATISFIABLE if content_range_length(response.headers()) == Some(have) => {
            finish(&part, &target).await?;
            return Ok(Downloaded { job_id: id.to_owned(), path: target, bytes: have, resumed_at: have });
        }
        StatusCode::PARTIAL_CONTENT | StatusCode::RANGE_NOT_SATISFIABLE => {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(CliError::Failed(format!(
                "{}: the partial download does not fit the file on the server; it was removed, run again",
                part.display()
            )));
        }
        _ => (0, api::ok(response).await?),
    };
    let total = resumed_at + response.content_length().unwrap_or(0);
    let bar = progress.file(&name, total);
    bar.at(resumed_at);
    if resumed_at > 0 {
        bar.status(&format!("resuming at {}", crate::output::bytes(resumed_at)));
    }
    let what = || format!("writing {}", part.display());
    let expected = response.content_length().map(|n| resumed_at + n);
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed_at > 0)
        .truncate(resumed_at == 0)
        // A link planted where the part goes (a shared folder) is not followed.
        .custom_flags(libc::O_NOFOLLOW)
        .open(&part)
        .await
        .map_err(|e| CliError::io(what(), e))?;
    let mut written = resumed_at;
    let mut body = response.bytes_stream();
    loop {
        let chunk = tokio::time::timeout(crate::sse::SILENCE, body.next())
            .await
            .map_err(|_| CliError::Unreachable { server: api.server.clone(), reason: "the download stalled".into() })?;
        let Some(chunk) = chunk else { break };
        let chunk = chunk.map_err(|e| api.unreachable(&e))?;
        file.write_all(&chunk).await.map_err(|e| CliError::io(what(), e))?;
        written += chunk.len() as u64;
        bar.at(written);
    }
    file.flush().await.map_err(|e| CliError::io(what(), e))?;
    drop(file);
    if expected.is_some_and(|n| n != written) {
        return Err(CliError::Unreachable {
            server: api.server.clone(),
            reason: format!("the download ended at {written} bytes; run again to continue"),
        });
    }
    finish(&part, &target).await?;
    bar.done(&format!("saved {}", target.display()));
    Ok(Downloaded { job_id: id.to_owned(), path: target, bytes: written, resumed_at })
}

/// `N` of `Content-Range: bytes N-M/L`.
fn content_range_start(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    let value = headers.get("content-range")?.to_str().ok()?;
    value.strip_prefix("bytes ")?.split('-').next()?.trim().parse().ok()
}

/// `L` of `Content-Range: bytes */L` (or `N-M/L`).
fn content_range_length(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    headers.get("content-range")?.to_str().ok()?.rsplit('/').next()?.trim().parse().ok()
}

async fn finish(part: &Path, target: &Path) -> Result<(), CliError> {
    tokio::fs::rename(part, target).await.map_err(|e| CliError::io(format!("renaming {}", part.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_come_from_the_original_and_stay_in_the_folder() {
        assert_eq!(file_name("talk.mp4"), "talk.mp3");
        assert_eq!(file_name("../../etc/passwd"), "passwd.mp3");
        assert_eq!(file_name("..."), "track.mp3");
        assert_eq!(file_name("noext"), "noext.mp3");
        assert_eq!(file_name("a.b.wav"), "a.b.mp3");
    }

    #[test]
    fn names_taken_in_one_command_are_numbered() {
        let mut taken = std::collections::HashSet::new();
        assert_eq!(unique("a.mp3".into(), &mut taken), "a.mp3");
        assert_eq!(unique("a.mp3".into(), &mut taken), "a (2).mp3");
        assert_eq!(unique("a.mp3".into(), &mut taken), "a (3).mp3");
    }
}
