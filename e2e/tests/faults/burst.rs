//! A burst of uploads, sent the way a well-behaved client does: a few at a time, and a 503
//! or a dropped connection (a dependency is down) retried after a pause until accepted.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use tunewire_e2e::Pipeline;
use tunewire_test_stack::media::ffmpeg;

/// How long one upload keeps being retried while a dependency is down.
const CLIENT_PATIENCE: Duration = Duration::from_secs(180);
const AT_ONCE: usize = 4;

#[derive(Debug, Clone)]
pub struct Upload {
    /// Unique across the burst; the upload's title, so emails can be told apart.
    pub title: String,
    pub job_id: String,
}

pub struct Burst {
    pub uploads: Vec<Upload>,
    pub refused_then_retried: usize,
}

/// Distinct (so none is deduplicated) mono clips of `seconds` each, named `{prefix}-NN.wav`.
pub fn make_clips(p: &Pipeline, prefix: &str, count: usize, seconds: u32) -> anyhow::Result<Vec<PathBuf>> {
    (0..count)
        .map(|i| {
            let path = p.scratch.join(format!("{prefix}-{i:02}.wav"));
            let spec = format!("sine=frequency={}:duration={seconds}:sample_rate=8000", 200 + 7 * i);
            // The name inside the file too: two bursts' clips never share bytes (the gateway
            // would hand back the first one's job).
            let tag = format!("comment={prefix}-{i:02}");
            ffmpeg(&["-y", "-f", "lavfi", "-i", &spec, "-ac", "1", "-metadata", &tag, path.to_str().context("path")?])?;
            Ok(path)
        })
        .collect()
}

/// Uploads every clip; `accepted` counts acceptances as they happen, so that a scenario can
/// break something mid-burst.
pub async fn send(p: &Pipeline, token: &str, clips: &[PathBuf], accepted: Arc<AtomicUsize>) -> anyhow::Result<Burst> {
    let refused = Arc::new(AtomicUsize::new(0));
    let mut uploads = Vec::new();
    for batch in clips.chunks(AT_ONCE) {
        let sent = batch.iter().map(|clip| {
            let (accepted, refused) = (accepted.clone(), refused.clone());
            async move {
                let upload = upload_until_accepted(p, token, clip, &refused).await?;
                accepted.fetch_add(1, Ordering::SeqCst);
                anyhow::Ok(upload)
            }
        });
        for upload in futures_util::future::join_all(sent).await {
            uploads.push(upload?);
        }
    }
    Ok(Burst { uploads, refused_then_retried: refused.load(Ordering::SeqCst) })
}

async fn upload_until_accepted(
    p: &Pipeline,
    token: &str,
    clip: &std::path::Path,
    refused: &AtomicUsize,
) -> anyhow::Result<Upload> {
    let name = clip.file_name().and_then(|n| n.to_str()).context("clip name")?.to_string();
    let title = name.trim_end_matches(".wav").to_string();
    let deadline = Instant::now() + CLIENT_PATIENCE;
    let mut was_refused = false;
    loop {
        let outcome = p.upload_with(token, clip, &name, &[("title", &title), ("artist", "Fault Suite")]).await;
        let retry_reason = match outcome {
            Ok(resp) if resp.status() == 202 || resp.status() == 200 => {
                let body: Value = resp.json().await?;
                let job_id = body["job_id"].as_str().with_context(|| format!("no job_id in {body}"))?.to_string();
                if was_refused {
                    refused.fetch_add(1, Ordering::SeqCst);
                }
                return Ok(Upload { title, job_id });
            }
            Ok(resp) if resp.status() == 503 => format!("503 {}", resp.text().await.unwrap_or_default()),
            Ok(resp) => bail!("{name}: {} {}", resp.status(), resp.text().await.unwrap_or_default()),
            Err(e) => format!("{e:#}"),
        };
        was_refused = true;
        if Instant::now() >= deadline {
            bail!("{name}: still refused after {CLIENT_PATIENCE:?}: {retry_reason}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
