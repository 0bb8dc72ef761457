//! A load balancer that routes like a Kubernetes Service: new TCP connections go round-robin
//! to the replicas whose readiness probe passes, as a kubelet judges it (`GET /readyz` every
//! `period`, an answer within `timeout`, `failure_threshold` failures in a row to leave,
//! one success to come back). With no ready replica a connection is closed at once, as a
//! Service without endpoints refuses it. Open connections stay where they were sent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};

/// A readiness probe as a manifest states it.
#[derive(Debug, Clone, Copy)]
pub struct Probe {
    pub period: Duration,
    pub timeout: Duration,
    pub failure_threshold: u32,
}

struct Replica {
    addr: SocketAddr,
    ready: AtomicBool,
    /// Probes that said "not ready" since the last one that said "ready".
    failures: AtomicUsize,
}

#[derive(Clone)]
pub struct Balancer {
    pub addr: SocketAddr,
    replicas: Arc<Vec<Replica>>,
    /// Connections sent to each replica, in `replicas`' order.
    routed: Arc<Vec<AtomicUsize>>,
    /// Connections refused for want of a ready replica.
    refused: Arc<AtomicUsize>,
}

impl Balancer {
    /// Listens on a random local port in front of `replicas` (their HTTP addresses). Replicas
    /// start ready, as pods that passed their first probe.
    pub async fn start(replicas: &[SocketAddr], probe: Probe) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let balancer = Self {
            addr: listener.local_addr()?,
            replicas: Arc::new(
                replicas
                    .iter()
                    .map(|addr| Replica { addr: *addr, ready: AtomicBool::new(true), failures: AtomicUsize::new(0) })
                    .collect(),
            ),
            routed: Arc::new(replicas.iter().map(|_| AtomicUsize::new(0)).collect()),
            refused: Arc::new(AtomicUsize::new(0)),
        };
        for index in 0..replicas.len() {
            tokio::spawn(balancer.clone().probe_forever(index, probe));
        }
        let routing = balancer.clone();
        tokio::spawn(async move {
            let mut next = 0usize;
            while let Ok((client, _)) = listener.accept().await {
                let ready: Vec<usize> =
                    (0..routing.replicas.len()).filter(|i| routing.replicas[*i].ready.load(Ordering::SeqCst)).collect();
                if ready.is_empty() {
                    routing.refused.fetch_add(1, Ordering::SeqCst);
                    drop(client);
                    continue;
                }
                let chosen = ready[next % ready.len()];
                next = next.wrapping_add(1);
                routing.routed[chosen].fetch_add(1, Ordering::SeqCst);
                let target = routing.replicas[chosen].addr;
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(target).await else { return };
                    let mut client = client;
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        Ok(balancer)
    }

    async fn probe_forever(self, index: usize, probe: Probe) {
        let http = reqwest::Client::new();
        let replica = &self.replicas[index];
        let url = format!("http://{}/readyz", replica.addr);
        loop {
            tokio::time::sleep(probe.period).await;
            let passed = matches!(
                http.get(&url).timeout(probe.timeout).send().await,
                Ok(resp) if resp.status().is_success()
            );
            if passed {
                replica.failures.store(0, Ordering::SeqCst);
                replica.ready.store(true, Ordering::SeqCst);
            } else if replica.failures.fetch_add(1, Ordering::SeqCst) + 1 >= probe.failure_threshold as usize {
                replica.ready.store(false, Ordering::SeqCst);
            }
        }
    }

    /// Connections sent to each replica so far.
    pub fn routed(&self) -> Vec<usize> {
        self.routed.iter().map(|n| n.load(Ordering::SeqCst)).collect()
    }

    /// Connections refused because no replica was ready.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }
}
