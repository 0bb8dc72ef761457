//! Server-Sent Events as the gateway sends them (`event:` and `data:` lines, a blank line
//! after each event), read off a byte stream.

use futures_util::{Stream, StreamExt};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub name: String,
    pub data: String,
}

/// Splits what has arrived into whole events; what is left waits for more bytes (kept as
/// bytes: a character may be split across chunks).
#[derive(Default)]
pub struct Parser {
    buffer: Vec<u8>,
}

/// A stream quiet for longer than this is dead: the gateway sends a keep-alive every 15 s.
pub const SILENCE: std::time::Duration = std::time::Duration::from_secs(60);

/// An event larger than this is not one of ours.
const MAX_EVENT: usize = 1 << 20;

impl Parser {
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Event>, String> {
        self.buffer.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
            let block = String::from_utf8_lossy(&block);
            let (mut name, mut data) = (String::from("message"), Vec::new());
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    name = value.trim().to_owned();
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push(value.strip_prefix(' ').unwrap_or(value).to_owned());
                }
            }
            // Comments and keep-alives carry no data.
            if !data.is_empty() {
                events.push(Event { name, data: data.join("\n") });
            }
        }
        if self.buffer.len() > MAX_EVENT {
            return Err(format!("an event of more than {MAX_EVENT} bytes"));
        }
        Ok(events)
    }
}

/// The events of a response body, until it ends.
pub fn events<S, E>(body: S) -> impl Stream<Item = Result<Event, String>>
where
    S: Stream<Item = Result<bytes::Bytes, E>> + Unpin,
    E: std::fmt::Display,
{
    futures_util::stream::unfold(
        (body, Parser::default(), std::collections::VecDeque::new()),
        |(mut body, mut parser, mut ready)| async move {
            loop {
                if let Some(event) = ready.pop_front() {
                    return Some((Ok(event), (body, parser, ready)));
                }
                let next = match tokio::time::timeout(SILENCE, body.next()).await {
                    Ok(next) => next?,
                    Err(_) => {
                        return Some((Err(format!("nothing came for {} s", SILENCE.as_secs())), (body, parser, ready)));
                    }
                };
                match next {
                    Ok(chunk) => match parser.push(&chunk) {
                        Ok(events) => ready.extend(events),
                        Err(e) => return Some((Err(e), (body, parser, ready))),
                    },
                    Err(e) => return Some((Err(e.to_string()), (body, parser, ready))),
                }
            }
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_and_keep_alives_are_skipped() {
        let mut parser = Parser::default();
        assert_eq!(parser.push(b": keep-alive\n\nevent: job\ndata: {\"id\"").expect("ok"), vec![]);
        let events = parser.push(b":1}\n\nevent:deleted\ndata:abc\n\nevent: job\ndata: \xc3").expect("ok");
        assert_eq!(
            events,
            vec![
                Event { name: "job".into(), data: "{\"id\":1}".into() },
                Event { name: "deleted".into(), data: "abc".into() },
            ]
        );
        // "é" split across two chunks.
        assert_eq!(parser.push(b"\xa9\n\n").expect("ok"), vec![Event { name: "job".into(), data: "é".into() }]);
    }
}
