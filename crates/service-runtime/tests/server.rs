//! The HTTP server's own limits, on real sockets: connections beyond the cap wait until one
//! ends; a connection without a request head in time, or idle too long, is closed, while one
//! answering a long response or briefly idle is kept; a request is answered with its peer's
//! address.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;
use tunewire_service_runtime::server::{Limits, peer, spawn_server_with};
use warp::Filter;

async fn serve(limits: Limits) -> anyhow::Result<(std::net::SocketAddr, CancellationToken)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    // `/slow`: an event stream of twenty events 300 ms apart, as a long download would send.
    let slow = warp::path("slow").map(|| {
        let events = futures_util::stream::iter(0..20).then(|i| async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            Ok::<_, std::convert::Infallible>(warp::sse::Event::default().data(i.to_string()))
        });
        warp::sse::reply(events)
    });
    let peer = peer().map(|peer: Option<std::net::SocketAddr>| peer.map(|p| p.ip().to_string()).unwrap_or_default());
    let routes =
        slow.map(|r| Box::new(r) as Box<dyn warp::Reply>).or(peer.map(|r| Box::new(r) as Box<dyn warp::Reply>)).unify();
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
    let (addr, shutdown) = serve(Limits { max_connections: 2, ..Limits::DEFAULT }).await?;
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

#[tokio::test]
async fn slow_heads_and_long_idleness_lose_their_connection_and_long_answers_keep_it() -> anyhow::Result<()> {
    const HEAD_TIMEOUT: Duration = Duration::from_secs(1);
    const IDLE_TIMEOUT: Duration = Duration::from_secs(4);
    let limits = Limits { head_timeout: HEAD_TIMEOUT, idle_timeout: IDLE_TIMEOUT, ..Limits::DEFAULT };
    let (addr, shutdown) = serve(limits).await?;

    // A client that connects and sends nothing.
    let silent = TcpStream::connect(addr).await?;
    let started = Instant::now();
    let (closed, _) = until_closed(silent).await;
    let closed_after = closed - started;
    assert!(closed_after >= HEAD_TIMEOUT && closed_after < Duration::from_secs(9), "closed after {closed_after:?}");

    // A client that sends its headers a little at a time, never finishing.
    let (mut reader, mut writer) = TcpStream::connect(addr).await?.into_split();
    let started = Instant::now();
    writer.write_all(b"GET / HTTP/1.1\r\n").await?;
    let (cut, mut cut_off) = tokio::sync::oneshot::channel::<()>();
    let trickle = async move {
        for _ in 0..40 {
            tokio::select! {
                _ = &mut cut_off => break,
                _ = tokio::time::sleep(Duration::from_millis(250)) => {}
            }
            if writer.write_all(b"X-Slow: 1\r\n").await.is_err() {
                break;
            }
        }
    };
    let mut answer = Vec::new();
    let read = async {
        let read = tokio::time::timeout(Duration::from_secs(30), reader.read_to_end(&mut answer)).await;
        let _ = cut.send(());
        read
    };
    let (_, read) = tokio::join!(trickle, read);
    let closed_after = started.elapsed();
    assert!(read.is_ok(), "the trickling client was never cut off");
    assert!(closed_after >= HEAD_TIMEOUT && closed_after < Duration::from_secs(9), "closed after {closed_after:?}");
    assert!(answer.is_empty(), "{}", String::from_utf8_lossy(&answer));

    // A kept-alive connection idle for longer than the head timeout still serves its next
    // request; idle past the idle timeout, it is closed.
    let mut idle = TcpStream::connect(addr).await?;
    let keep_alive = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    for _ in 0..2 {
        idle.write_all(keep_alive).await?;
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut buf)).await??;
        let answer = String::from_utf8_lossy(&buf[..n]).to_string();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        tokio::time::sleep(HEAD_TIMEOUT * 3).await;
    }
    let idle_from = Instant::now();
    let (closed, rest) = until_closed(idle).await;
    let idle_for = closed - idle_from;
    assert!(rest.is_empty() && idle_for < Duration::from_secs(15), "idle connection kept for {idle_for:?}");

    // A response longer than the idle timeout, with the next request pipelined behind it: a
    // connection answering is not idle.
    let mut pipelined = TcpStream::connect(addr).await?;
    pipelined.write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\n\r\n").await?;
    let mut first = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(10), pipelined.read(&mut first)).await??;
    pipelined.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await?;
    let (_, rest) = until_closed(pipelined).await;
    let answer = format!("{}{rest}", String::from_utf8_lossy(&first[..n]));
    assert!(answer.contains("data:19"), "the stream was cut: {answer}");
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer}");
    shutdown.cancel();
    Ok(())
}
