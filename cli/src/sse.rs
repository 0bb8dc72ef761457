//! Server-Sent Events as the gateway sends them (`event:` and `data:` lines, a blank line
//! after each event), read off a byte stream.

use futures_util::{Stream, StreamExt};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub name: String,
    pub data: String,
}

/// Splits what has arrived into whole events; what is left waits for more bytes.
#[derive(Default)]
pub struct Parser {
    buffer: String,
}

/// An event larger than this is not one of ours.
const MAX_EVENT: usize = 1 << 20;

impl Parser {
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Event>, String> {
        self.buffer.push_str(&String::from_utf8_lossy(chunk));
        let mut events = Vec::new();
        while let Some(end) = self.buffer.find("\n\n") {
            let block: String = self.buffer.drain(..end + 2).collect();
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
                match body.next().await? {
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
        let events = parser.push(b":1}\n\nevent:deleted\ndata:abc\n\n").expect("ok");
        assert_eq!(
            events,
            vec![
                Event { name: "job".into(), data: "{\"id\":1}".into() },
                Event { name: "deleted".into(), data: "abc".into() },
            ]
        );
    }
}
