//! The HTTP server's own limits, on real sockets: a client trickling its headers is cut off,
//! and connections beyond the cap wait until one ends.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tunewire_service_runtime::server::{Limits, peer, spawn_server_with};
use warp::Filter;

async fn serve(limits: Limits) -> anyhow::Result<(std::net::SocketAddr, CancellationToken)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let routes = peer().map(|peer: Option<std::net::SocketAddr>| peer.map(|p| p.ip().to_string()).unwrap_or_default());
    let shutdown = CancellationToken::new();
    spawn_server_with(listener, routes, limits, shutdown.clone());
    Ok((addr, shutdown))
}

/// Reads until the server closes the connection; when that happened, and what it sent.
async fn until_closed(mut socket: TcpStream) -> (Instant, String) {
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), socket.read_to_end(&mut answer)).await;
    (Instant::now(), String::from_utf8_lossy(&answer).to_string())
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";

#[tokio::test]
async fn a_request_answers_with_its_peer_and_trickled_headers_are_cut_off() -> anyhow::Result<()> {
    let (addr, shutdown) = serve(Limits { max_connections: 8, header_read_timeout: Duration::from_secs(1) }).await?;
    let mut socket = TcpStream::connect(addr).await?;
    socket.write_all(REQUEST).await?;
    let (_, answer) = until_closed(socket).await;
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("127.0.0.1"), "{answer}");

    let mut slow = TcpStream::connect(addr).await?;
    slow.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await?;
    let started = Instant::now();
    let (closed, answer) = until_closed(slow).await;
    assert!(closed - started < Duration::from_secs(20), "the half-sent request was never cut off");
    assert!(!answer.contains("200"), "{answer}");
    shutdown.cancel();
    Ok(())
}

#[tokio::test]
async fn beyond_the_connection_cap_a_client_waits_for_a_place() -> anyhow::Result<()> {
    let (addr, shutdown) = serve(Limits { max_connections: 2, header_read_timeout: Duration::from_secs(2) }).await?;
    // Two connections take both places and hold them until the header timeout ends them.
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut socket = TcpStream::connect(addr).await?;
        socket.write_all(b"GET / HTTP/1.1\r\n").await?;
        holders.push(tokio::spawn(until_closed(socket)));
    }
    // A third connection is accepted only once a holder is gone, about 2 s from now; without
    // the cap it would be served in milliseconds.
    let started = Instant::now();
    let mut third = TcpStream::connect(addr).await?;
    third.write_all(REQUEST).await?;
    let (answered, answer) = until_closed(third).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let waited = answered - started;
    assert!(waited >= Duration::from_secs(1), "served after {waited:?}, while both places were taken");
    for holder in holders {
        holder.await?;
    }
    shutdown.cancel();
    Ok(())
}
