//! The two emails: a converted track with its download link, or a failure with its reason.

use chrono::{DateTime, Utc};
use tunewire_events::{MediaConverted, MediaFailed};

pub struct Email {
    pub subject: String,
    pub text: String,
    pub html: String,
}

/// Escapes text for HTML element content and attribute values.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;").replace('\'', "&#39;")
}

fn duration(seconds: f64) -> String {
    let total = seconds.round() as u64;
    format!("{}:{:02}", total / 60, total % 60)
}

pub fn converted(event: &MediaConverted, link: &str, expires: DateTime<Utc>) -> Email {
    let title = event.tags.title.clone().unwrap_or_else(|| event.source_filename.clone());
    let artist = event.tags.artist.clone().unwrap_or_else(|| "unknown artist".into());
    let size_mb = event.output.size as f64 / 1_048_576.0;
    let when = expires.format("%Y-%m-%d %H:%M UTC");
    let facts = format!("{} · {size_mb:.1} MB · preset {}", duration(event.output.duration_s), event.preset);
    Email {
        subject: format!("Your MP3 is ready: {title}"),
        text: format!(
            "Your upload {file} is converted.\n\n{title} by {artist}\n{facts}\n\nDownload it (no login needed) until {when}:\n{link}\n",
            file = event.source_filename
        ),
        html: format!(
            "<p>Your upload <b>{file}</b> is converted.</p><p><b>{t}</b> by {a}<br>{f}</p>\
             <p><a href=\"{l}\">Download the MP3</a> (no login needed) until {when}.</p>",
            file = escape(&event.source_filename),
            t = escape(&title),
            a = escape(&artist),
            f = escape(&facts),
            l = escape(link),
        ),
    }
}

pub fn failed(event: &MediaFailed) -> Email {
    Email {
        subject: format!("We could not convert {}", event.source_filename),
        text: format!("Your upload {} could not be converted: {}.\n", event.source_filename, event.reason),
        html: format!(
            "<p>Your upload <b>{}</b> could not be converted: {}.</p>",
            escape(&event.source_filename),
            escape(&event.reason)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_is_escaped_and_text_is_not() {
        assert_eq!(escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
        assert_eq!(duration(61.4), "1:01");
    }
}
