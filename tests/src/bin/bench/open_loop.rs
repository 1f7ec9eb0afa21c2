//! Latency at a fixed request rate (open loop): requests are due every
//! 1/rate seconds whether or not earlier ones were answered, and each
//! latency counts from when its request was due, so a stall shows in every
//! request it delays (no coordinated omission, unlike a closed loop such as
//! wrk's).

use anyhow::{bail, Context, Result};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex};

/// How late tokio's timer may wake.
const TIMER_RESOLUTION: Duration = Duration::from_millis(1);

#[derive(Debug, Clone, Copy)]
pub struct Latency {
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub sent: usize,
    /// Answers other than 200, and failed connections.
    pub errors: usize,
}

/// `rate` requests per second for `seconds`, over up to `connections`
/// keep-alive connections (enough that none waits for a free one at the
/// rates used).
pub fn run(
    port: u16,
    request: &[u8],
    rate: f64,
    seconds: f64,
    connections: usize,
) -> Result<Latency> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(schedule(port, request.to_vec(), rate, seconds, connections))
}

async fn schedule(
    port: u16,
    request: Vec<u8>,
    rate: f64,
    seconds: f64,
    connections: usize,
) -> Result<Latency> {
    let n = (rate * seconds) as usize;
    let (tx, rx) = mpsc::unbounded_channel::<Instant>();
    let rx = Arc::new(Mutex::new(rx));
    let request = Arc::new(request);
    let mut workers = Vec::new();
    for _ in 0..connections {
        let (rx, request) = (rx.clone(), request.clone());
        workers.push(tokio::spawn(async move {
            let mut results = Vec::new();
            let mut conn: Option<BufReader<TcpStream>> = None;
            loop {
                let Some(due) = rx.lock().await.recv().await else {
                    return results;
                };
                let ok = exchange(&mut conn, port, &request).await.is_ok();
                if !ok {
                    conn = None;
                }
                results.push((due.elapsed(), ok));
            }
        }));
    }
    let start = Instant::now() + Duration::from_millis(50);
    let period = Duration::from_secs_f64(1.0 / rate);
    for i in 0..n {
        let due = start + period * i as u32;
        // Tokio's timer wakes on whole milliseconds: up to 1 ms late, and
        // at high rates requests would go out in bursts. It only gets
        // close; a thread sleep (tens of microseconds late) waits the
        // rest. This task runs on the caller's thread, not a worker's.
        tokio::time::sleep_until((due - TIMER_RESOLUTION).into()).await;
        if let Some(rest) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(rest);
        }
        tx.send(due).context("workers gone")?;
    }
    drop(tx);
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await?);
    }
    let errors = all.iter().filter(|(_, ok)| !ok).count();
    let ms = all.iter().map(|(d, _)| d.as_secs_f64() * 1e3).collect();
    Ok(Latency::of(ms, errors))
}

impl Latency {
    /// From every latency in milliseconds.
    fn of(mut ms: Vec<f64>, errors: usize) -> Latency {
        ms.sort_by(|a, b| a.total_cmp(b));
        let at = |q: f64| ms.get(((ms.len() as f64 * q) as usize).min(ms.len().saturating_sub(1)));
        Latency {
            p50_ms: at(0.5).copied().unwrap_or(0.0),
            p99_ms: at(0.99).copied().unwrap_or(0.0),
            max_ms: ms.last().copied().unwrap_or(0.0),
            sent: ms.len(),
            errors,
        }
    }
}

/// One request on a keep-alive HTTP/1.1 connection (opened if needed); the
/// answer read whole (it must have a content-length).
async fn exchange(
    conn: &mut Option<BufReader<TcpStream>>,
    port: u16,
    request: &[u8],
) -> Result<()> {
    if conn.is_none() {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.set_nodelay(true)?;
        *conn = Some(BufReader::new(tcp));
    }
    let Some(c) = conn.as_mut() else {
        bail!("no connection");
    };
    c.get_mut().write_all(request).await?;
    let mut line = String::new();
    c.read_line(&mut line).await?;
    let ok = line.starts_with("HTTP/1.1 200");
    let mut length = None;
    loop {
        line.clear();
        if c.read_line(&mut line).await? == 0 {
            bail!("connection closed");
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse::<usize>().ok();
            }
        }
    }
    let length = length.context("an answer without content-length")?;
    let mut body = vec![0; length];
    c.read_exact(&mut body).await?;
    if !ok {
        bail!("not 200");
    }
    Ok(())
}

/// The request bytes: a chat completion POST with this body and token.
pub fn request(body: &[u8], token: &str, reply: &str) -> Vec<u8> {
    let mut r = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: bench\r\ncontent-type: application/json\r\nauthorization: Bearer {token}\r\nx-test-reply: {reply}\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// The disk alone at the same pace: `rate` appends per second of `bytes`
/// each to a scratch file in `dir`, each followed by fdatasync, as the
/// collector makes a written-ahead record durable. Latency is the write
/// and its sync. What a written-ahead request cannot be faster than on
/// this disk, measured in the same run as the requests.
pub fn disk_sync(dir: &std::path::Path, rate: f64, seconds: f64, bytes: usize) -> Result<Latency> {
    use std::io::Write;
    let path = dir.join("fdatasync-probe");
    let mut file = std::fs::File::create(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    let record = vec![b'r'; bytes];
    let n = (rate * seconds) as usize;
    let period = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    let mut ms = Vec::with_capacity(n);
    for i in 0..n {
        // Pacing, not synchronisation: the next append is due then.
        if let Some(wait) = (start + period * i as u32).checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let t = Instant::now();
        file.write_all(&record)?;
        file.sync_data()?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    drop(file);
    std::fs::remove_file(&path)?;
    Ok(Latency::of(ms, 0))
}
