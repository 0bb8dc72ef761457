//! The HTTP server's own limits, on real sockets: connections beyond the cap wait until one
//! ends, and a request is answered with its peer's address.

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
async fn beyond_the_connection_cap_a_client_waits_for_a_place() -> anyhow::Result<()> {
    let (addr, shutdown) = serve(Limits { max_connections: 2 }).await?;
    let mut socket = TcpStream::connect(addr).await?;
    socket.write_all(REQUEST).await?;
    let (_, answer) = until_closed(socket).await;
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("127.0.0.1"), "{answer}");

    // Two connections take both places with requests they never finish.
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut socket = TcpStream::connect(addr).await?;
        socket.write_all(b"GET / HTTP/1.1\r\n").await?;
        holders.push(socket);
    }
    let third = tokio::spawn(async move {
        let mut third = TcpStream::connect(addr).await?;
        third.write_all(REQUEST).await?;
        anyhow::Ok(until_closed(third).await)
    });
    // The third is served only after a holder hangs up.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let freed = Instant::now();
    drop(holders.pop());
    let (answered, answer) = third.await??;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answered >= freed, "the third connection was served while both places were taken");
    shutdown.cancel();
    Ok(())
}
