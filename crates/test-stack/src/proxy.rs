//! A TCP proxy a test can cut: point a service at it, call `down()` to drop every connection
//! and refuse new ones (the dependency "goes away"), `stall()` to keep connections open but
//! pass nothing (a dependency that hangs), `up()` to let traffic through again.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Up,
    Stalled,
    Down,
}

#[derive(Clone)]
pub struct Proxy {
    pub addr: SocketAddr,
    up: Arc<watch::Sender<Mode>>,
}

/// Copies one direction; a stalled link holds what it read until it flows again.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut mode: watch::Receiver<Mode>) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = mode.wait_for(|m| *m == Mode::Down) => return,
        };
        match mode.wait_for(|m| *m != Mode::Stalled).await {
            Ok(m) if *m == Mode::Up => {}
            _ => return,
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

impl Proxy {
    /// Listens on a random local port and forwards to `target` (`host:port`).
    pub async fn start(target: String) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (up, _) = watch::channel(Mode::Up);
        let up = Arc::new(up);
        let state = up.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if *state.borrow() == Mode::Down {
                    drop(client);
                    continue;
                }
                let target = target.clone();
                let mode = state.subscribe();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(&target).await else { return };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(pump(client_read, server_write, mode.clone()), pump(server_read, client_write, mode));
                });
            }
        });
        Ok(Self { addr, up })
    }

    pub fn down(&self) {
        self.up.send_replace(Mode::Down);
    }

    pub fn stall(&self) {
        self.up.send_replace(Mode::Stalled);
    }

    pub fn up(&self) {
        self.up.send_replace(Mode::Up);
    }

    /// `url` with its `host:port` replaced by the proxy's.
    pub fn url_for(&self, url: &str) -> String {
        let (start, end) = host_span(url);
        format!("{}{}{}", &url[..start], self.addr, &url[end..])
    }
}

/// Where `host:port` sits in `scheme://user:pass@host:port/path`.
fn host_span(url: &str) -> (usize, usize) {
    let after_scheme = url.find("://").map(|i| i + 3).unwrap_or(0);
    let authority_end = url[after_scheme..].find('/').map(|i| after_scheme + i).unwrap_or(url.len());
    let start = url[after_scheme..authority_end].rfind('@').map(|i| after_scheme + i + 1).unwrap_or(after_scheme);
    (start, authority_end)
}

/// The `host:port` a URL points at.
pub fn host_port(url: &str) -> String {
    let (start, end) = host_span(url);
    url[start..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_split_at_their_host() {
        assert_eq!(host_port("amqp://u:p@127.0.0.1:5672/vh"), "127.0.0.1:5672");
        assert_eq!(host_port("mongodb://127.0.0.1:27017"), "127.0.0.1:27017");
        let proxy = Proxy {
            addr: "127.0.0.1:9".parse().unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0))),
            up: Arc::new(watch::channel(Mode::Up).0),
        };
        assert_eq!(proxy.url_for("amqp://u:p@127.0.0.1:5672/vh"), "amqp://u:p@127.0.0.1:9/vh");
    }
}
