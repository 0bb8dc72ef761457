//! Last.fm's top tags, with the shapes it really answers: one tag as an object instead of a
//! list, counts as strings, "no tags" as an empty string, and errors as
//! `{"error": N, "message": ...}` under HTTP 200 or 4xx.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Mutex;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tag {
    pub name: String,
    pub weight: i32,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum LastfmError {
    #[error("last.fm is unreachable: {0}")]
    Unreachable(String),
    #[error("last.fm error {code}: {message}")]
    Api { code: i64, message: String },
    #[error("last.fm answered something unexpected: {0}")]
    Shape(String),
}

/// What to do about a failed call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Unreachable, overloaded, rate-limited (29), temporarily down (8, 11, 16): ask again later.
    Transient,
    /// The API key is invalid (10) or suspended (26): stop calling until it is fixed.
    KeyRejected,
    /// Anything else: this lookup will not work; no tags.
    Permanent,
}

impl LastfmError {
    pub fn failure(&self) -> Failure {
        match self {
            LastfmError::Unreachable(_) | LastfmError::Shape(_) => Failure::Transient,
            LastfmError::Api { code: 8 | 11 | 16 | 29, .. } => Failure::Transient,
            LastfmError::Api { code: 10 | 26, .. } => Failure::KeyRejected,
            LastfmError::Api { .. } => Failure::Permanent,
        }
    }
}

/// Error 6: the track or artist is unknown, which just means no tags.
const NOT_FOUND: i64 = 6;
const MIN_WEIGHT: i32 = 10;
const BLOCKLIST: [&str; 6] = ["seen live", "favorites", "favourite", "favorite", "my favorite", "awesome"];

/// Parses a `toptags` answer into clean tags: lower-cased, de-duplicated, noise removed.
pub fn parse_top_tags(body: &Value) -> Result<Vec<Tag>, LastfmError> {
    if let Some(code) = body.get("error").and_then(Value::as_i64) {
        if code == NOT_FOUND {
            return Ok(vec![]);
        }
        let message = body.get("message").and_then(Value::as_str).unwrap_or_default().to_string();
        return Err(LastfmError::Api { code, message });
    }
    let top = body.get("toptags").ok_or_else(|| LastfmError::Shape("no toptags".into()))?;
    let raw: Vec<&Value> = match top.get("tag") {
        Some(Value::Array(list)) => list.iter().collect(),
        Some(one @ Value::Object(_)) => vec![one],
        // `"tag": ""`, a missing key, or `"toptags": ""`: no tags.
        _ => vec![],
    };
    let mut tags: Vec<Tag> = Vec::new();
    for tag in raw {
        let Some(name) = tag.get("name").and_then(Value::as_str) else { continue };
        let name = name.trim().to_lowercase();
        let weight = match tag.get("count") {
            Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
            Some(Value::String(s)) => s.trim().parse().unwrap_or(0),
            _ => 0,
        } as i32;
        if name.is_empty()
            || weight < MIN_WEIGHT
            || BLOCKLIST.contains(&name.as_str())
            || tags.iter().any(|t| t.name == name)
        {
            continue;
        }
        tags.push(Tag { name, weight });
    }
    tags.truncate(10);
    Ok(tags)
}

/// Spaces calls evenly: at most one per `interval`, process-wide. Written by hand: one
/// `Instant` behind a lock is all a single-key limit needs.
struct RateLimit {
    interval: Duration,
    next: Mutex<Instant>,
}

impl RateLimit {
    async fn wait(&self) {
        let slot = {
            let mut next = self.next.lock().await;
            let slot = (*next).max(Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot.into()).await;
    }
}

#[derive(Clone)]
pub struct Lastfm {
    url: String,
    api_key: String,
    http: reqwest::Client,
    limit: Arc<RateLimit>,
    key_rejected: Arc<AtomicBool>,
}

impl Lastfm {
    pub fn new(url: String, api_key: String, http: reqwest::Client, per_second: f64) -> Self {
        let interval = Duration::from_secs_f64(1.0 / per_second.max(0.01));
        Self {
            url,
            api_key,
            http,
            limit: Arc::new(RateLimit { interval, next: Mutex::new(Instant::now()) }),
            key_rejected: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Set once Last.fm called the key invalid or suspended; calls stop until a restart with
    /// a good key.
    pub fn key_rejected(&self) -> bool {
        self.key_rejected.load(Ordering::Relaxed)
    }

    async fn call(&self, params: &[(&str, &str)]) -> Result<Vec<Tag>, LastfmError> {
        if self.key_rejected() {
            return Err(LastfmError::Api { code: 10, message: "the API key was rejected earlier".into() });
        }
        self.limit.wait().await;
        let outcome = self.request(params).await;
        if outcome.as_ref().is_err_and(|e| e.failure() == Failure::KeyRejected) {
            tracing::error!("Last.fm rejected LASTFM_API_KEY: no more calls until it is fixed");
            self.key_rejected.store(true, Ordering::Relaxed);
        }
        outcome
    }

    async fn request(&self, params: &[(&str, &str)]) -> Result<Vec<Tag>, LastfmError> {
        let mut query = vec![("api_key", self.api_key.as_str()), ("format", "json")];
        query.extend_from_slice(params);
        let resp = self
            .http
            .get(&self.url)
            .query(&query)
            .timeout(Duration::from_secs(5))
            .send()
            .await
            // The URL carries the API key: it stays out of errors, logs and the backlog's rows.
            .map_err(|e| LastfmError::Unreachable(e.without_url().to_string()))?;
        let status = resp.status();
        if status.is_server_error() {
            return Err(LastfmError::Unreachable(format!("HTTP {status}")));
        }
        let body: Value =
            resp.json().await.map_err(|e| LastfmError::Shape(format!("HTTP {status}: {}", e.without_url())))?;
        parse_top_tags(&body)
    }

    /// Track tags, or the artist's when the track has none. Returns the tags and their source.
    pub async fn top_tags(&self, artist: &str, title: &str) -> Result<(Vec<Tag>, &'static str), LastfmError> {
        let track = self
            .call(&[("method", "track.gettoptags"), ("artist", artist), ("track", title), ("autocorrect", "1")])
            .await?;
        if !track.is_empty() {
            return Ok((track, "lastfm-track"));
        }
        let by_artist = self.call(&[("method", "artist.gettoptags"), ("artist", artist), ("autocorrect", "1")]).await?;
        Ok((by_artist, "lastfm-artist"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_list_with_string_counts_is_cleaned() {
        let body = json!({"toptags": {"tag": [
            {"name": "Rock", "count": 100}, {"name": "rock", "count": "90"},
            {"name": "seen live", "count": 80}, {"name": "indie", "count": "55"}, {"name": "rare", "count": 2}
        ]}});
        let tags = parse_top_tags(&body).unwrap();
        assert_eq!(tags, vec![Tag { name: "rock".into(), weight: 100 }, Tag { name: "indie".into(), weight: 55 }]);
    }

    #[test]
    fn a_single_tag_comes_as_an_object() {
        let body = json!({"toptags": {"tag": {"name": "jazz", "count": "42"}}});
        assert_eq!(parse_top_tags(&body).unwrap(), vec![Tag { name: "jazz".into(), weight: 42 }]);
    }

    #[test]
    fn no_tags_may_be_an_empty_string() {
        assert!(parse_top_tags(&json!({"toptags": {"tag": "", "@attr": {}}})).unwrap().is_empty());
        assert!(parse_top_tags(&json!({"toptags": ""})).unwrap().is_empty());
    }

    #[test]
    fn failures_say_whether_to_retry_stop_or_give_up() {
        let api = |code| LastfmError::Api { code, message: String::new() };
        assert_eq!(api(29).failure(), Failure::Transient);
        assert_eq!(api(10).failure(), Failure::KeyRejected);
        assert_eq!(api(26).failure(), Failure::KeyRejected);
        assert_eq!(api(4).failure(), Failure::Permanent);
        assert_eq!(LastfmError::Unreachable("refused".into()).failure(), Failure::Transient);
    }

    #[test]
    fn error_6_is_no_tags_and_others_are_errors() {
        assert!(parse_top_tags(&json!({"error": 6, "message": "Track not found"})).unwrap().is_empty());
        assert_eq!(
            parse_top_tags(&json!({"error": 29, "message": "Rate limit exceeded"})),
            Err(LastfmError::Api { code: 29, message: "Rate limit exceeded".into() })
        );
    }
}
