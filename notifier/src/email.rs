//! The two emails, rendered from the templates in `notifier/templates/` (compiled in, so a
//! deployed binary cannot miss them): a converted track with its download link and when it
//! expires, or a failure with its reason in plain words. HTML templates are auto-escaped.

use chrono::{DateTime, Utc};
use minijinja::Environment;
use serde::Serialize;
use tunewire_contract::{MediaConverted, MediaFailed};

pub struct Email {
    pub subject: String,
    pub text: String,
    pub html: String,
}

#[derive(Debug, thiserror::Error)]
#[error("rendering the {template} email: {source}")]
pub struct RenderError {
    template: &'static str,
    source: minijinja::Error,
}

pub struct Templates {
    env: Environment<'static>,
}

const TEMPLATES: [(&str, &str); 6] = [
    ("converted.subject.txt", include_str!("../templates/converted.subject.txt")),
    ("converted.txt", include_str!("../templates/converted.txt")),
    ("converted.html", include_str!("../templates/converted.html")),
    ("failed.subject.txt", include_str!("../templates/failed.subject.txt")),
    ("failed.txt", include_str!("../templates/failed.txt")),
    ("failed.html", include_str!("../templates/failed.html")),
];

#[derive(Serialize)]
struct ConvertedView<'a> {
    filename: &'a str,
    title: &'a str,
    artist: Option<&'a str>,
    duration: String,
    size: String,
    preset: String,
    link: &'a str,
    expires: String,
}

#[derive(Serialize)]
struct FailedView<'a> {
    filename: &'a str,
    reason: &'a str,
}

fn duration(seconds: f64) -> String {
    let total = seconds.max(0.0).round() as u64;
    match total / 3600 {
        0 => format!("{}:{:02}", total / 60, total % 60),
        hours => format!("{hours}:{:02}:{:02}", total / 60 % 60, total % 60),
    }
}

fn size(bytes: u64) -> String {
    if bytes >= 1 << 20 {
        format!("{:.1} MB", bytes as f64 / 1_048_576.0)
    } else {
        format!("{} KB", bytes.div_ceil(1024))
    }
}

impl Templates {
    /// Fails only if a template does not parse, which the unit tests rule out.
    pub fn load() -> Result<Self, RenderError> {
        let mut env = Environment::new();
        for (name, source) in TEMPLATES {
            env.add_template(name, source).map_err(|source| RenderError { template: "every", source })?;
        }
        Ok(Self { env })
    }

    fn render(&self, template: &'static str, view: &impl Serialize) -> Result<String, RenderError> {
        let rendered = self.env.get_template(template).and_then(|t| t.render(minijinja::value::Serde(view)));
        rendered.map(|s| s.trim().to_string()).map_err(|source| RenderError { template, source })
    }

    fn email(&self, kind: &'static str, view: &impl Serialize) -> Result<Email, RenderError> {
        let [subject, text, html] = match kind {
            "converted" => ["converted.subject.txt", "converted.txt", "converted.html"],
            _ => ["failed.subject.txt", "failed.txt", "failed.html"],
        };
        Ok(Email {
            // A subject is one line, whatever the file name held.
            subject: self.render(subject, view)?.replace(['\r', '\n'], " "),
            text: self.render(text, view)? + "\n",
            html: self.render(html, view)? + "\n",
        })
    }

    pub fn converted(&self, event: &MediaConverted, link: &str, expires: DateTime<Utc>) -> Result<Email, RenderError> {
        let view = ConvertedView {
            filename: &event.source_filename,
            title: event.tags.title.as_deref().unwrap_or(&event.source_filename),
            artist: event.tags.artist.as_deref(),
            duration: duration(event.output.duration_s),
            size: size(event.output.size),
            preset: event.preset.to_string(),
            link,
            expires: expires.format("%Y-%m-%d %H:%M UTC").to_string(),
        };
        self.email("converted", &view)
    }

    pub fn failed(&self, event: &MediaFailed) -> Result<Email, RenderError> {
        let view = FailedView { filename: &event.source_filename, reason: event.reason.trim().trim_end_matches('.') };
        self.email("failed", &view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tunewire_contract::{AudioOutput, Owner, TrackTags};
    use tunewire_contract::{FileId, JobId, Preset, UserId};

    fn owner() -> Owner {
        Owner { id: UserId::new(), email: "ann@example.com".parse().unwrap_or_else(|_| unreachable!()) }
    }

    #[test]
    fn a_converted_email_names_the_track_and_escapes_html() -> Result<(), RenderError> {
        let event = MediaConverted {
            job_id: JobId::new(),
            owner: owner(),
            source_filename: "<b>mix</b>.mp4".into(),
            preset: Preset::default(),
            output: AudioOutput {
                file_id: FileId::from_bytes([1; 12]),
                size: 5 * 1_048_576,
                duration_s: 3725.4,
                bitrate: 192_000,
                sample_rate: 44_100,
                channels: 2,
            },
            tags: TrackTags { title: Some("Tom & Jerry".into()), artist: None, album: None, genre: None },
            source_facts: Default::default(),
        };
        let expires = DateTime::from_timestamp(1_800_000_000, 0).unwrap_or_default();
        let email = Templates::load()?.converted(&event, "https://x.test/v1/downloads/a.b", expires)?;
        assert_eq!(email.subject, "Your MP3 is ready: Tom & Jerry");
        assert!(email.text.contains("Tom & Jerry\n"), "{}", email.text);
        assert!(email.text.contains("1:02:05 · 5.0 MB · preset cbr192"), "{}", email.text);
        assert!(email.text.contains("until 2027-01-15 08:00 UTC"), "{}", email.text);
        assert!(email.html.contains("<b>Tom &amp; Jerry</b>"), "{}", email.html);
        assert!(email.html.contains("&lt;b&gt;mix&lt;&#x2f;b&gt;.mp4"), "{}", email.html);
        assert!(!email.html.contains("Artist"), "no artist row without an artist");
        Ok(())
    }

    #[test]
    fn a_failed_email_gives_the_reason_in_plain_words() -> Result<(), RenderError> {
        let event = MediaFailed {
            job_id: JobId::new(),
            owner: owner(),
            source_filename: "holiday.mp4".into(),
            reason: "no audio track was found in the file.".into(),
        };
        let email = Templates::load()?.failed(&event)?;
        assert_eq!(email.subject, "We could not convert holiday.mp4");
        assert!(email.text.contains("we could not convert holiday.mp4: no audio track was found in the file.\n"));
        Ok(())
    }

    #[test]
    fn sizes_and_durations_read_naturally() {
        assert_eq!(duration(61.4), "1:01");
        assert_eq!(size(1500), "2 KB");
    }
}
