//! `shmemctl metrics --listen ADDR`: the OpenMetrics text over HTTP at `/metrics`, for a
//! Prometheus that scrapes directly. Off unless asked, and loopback only: the numbers name
//! every channel, and whoever can reach the port is not checked. One request at a time, each
//! answered from a fresh look at the broker (its own connection, so a broker restart costs one
//! failed scrape). A scraper gets at most `REQUEST_TIME` to send its request head and
//! `MAX_HEAD` bytes for it: a silent or trickling client holds the next one up no longer.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use shmem_broker_client::Client;

use crate::metrics;
use crate::snapshot::Snapshot;

/// The whole request head must arrive within this.
const REQUEST_TIME: Duration = Duration::from_secs(2);
/// Longest request head read (a scrape sends a few hundred bytes).
const MAX_HEAD: usize = 8192;
/// How long a closing connection may still send before it is closed anyway.
const LINGER: Duration = Duration::from_millis(500);
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub fn serve(socket: &Path, addr: SocketAddr) -> Result<()> {
    anyhow::ensure!(
        addr.ip().is_loopback(),
        "--listen {addr}: only a loopback address (127.0.0.1, ::1) is allowed: the metrics are \
         served to whoever connects"
    );
    let listener = TcpListener::bind(addr).with_context(|| format!("listening on {addr}"))?;
    let bound = listener.local_addr().context("the listening address")?;
    eprintln!("shmemctl: serving http://{bound}/metrics");
    loop {
        let Ok((stream, _)) = listener.accept() else {
            // Out of fds or a connection reset before accept: the next one may work.
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        // A scraper that misbehaves only loses its own answer.
        let _ = answer(socket, &stream);
        linger(&stream);
    }
}

/// Reads one request head and answers it, then closes the connection.
fn answer(socket: &Path, mut stream: &TcpStream) -> io::Result<()> {
    stream.set_write_timeout(Some(REQUEST_TIME))?;
    let Some(head) = read_head(&mut stream)? else {
        return respond(
            &mut stream,
            "431 Request Header Fields Too Large",
            "text/plain",
            "",
        );
    };
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (parts.next(), parts.next());
    match (method, path) {
        (Some(b"GET"), Some(b"/metrics")) => {
            match Client::connect(socket)
                .map_err(anyhow::Error::from)
                .and_then(|client| Snapshot::take(&client))
                .and_then(|snap| metrics::openmetrics(&snap))
            {
                Ok(text) => respond(&mut stream, "200 OK", CONTENT_TYPE, &text),
                Err(e) => respond(
                    &mut stream,
                    "503 Service Unavailable",
                    "text/plain",
                    &format!("{}\n", crate::report::one_line(&e)),
                ),
            }
        }
        (Some(b"GET"), _) => respond(&mut stream, "404 Not Found", "text/plain", "try /metrics\n"),
        _ => respond(&mut stream, "405 Method Not Allowed", "text/plain", ""),
    }
}

/// The request head (up to the blank line), or `None` if it is longer than `MAX_HEAD`. Fails
/// when it does not all arrive within `REQUEST_TIME`.
fn read_head(stream: &mut &TcpStream) -> io::Result<Option<Vec<u8>>> {
    let deadline = Instant::now() + REQUEST_TIME;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_HEAD {
            return Ok(None);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        stream.set_read_timeout(Some(left))?;
        match stream.read(&mut buf)? {
            0 => return Err(io::ErrorKind::UnexpectedEof.into()),
            n => head.extend_from_slice(&buf[..n]),
        }
    }
    Ok(Some(head))
}

/// Closes our side, then reads what the client still sends (at most 64 KiB, for at most
/// `LINGER`) before the socket closes: closing with its bytes unread would reset the
/// connection, and the client could lose the answer (a refused, over-long request).
fn linger(mut stream: &TcpStream) {
    let _ = stream.shutdown(Shutdown::Write);
    let deadline = Instant::now() + LINGER;
    let mut buf = [0u8; 4096];
    for _ in 0..16 {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn respond(
    stream: &mut &TcpStream,
    status: &str,
    content_type: &str,
    body: &str,
) -> io::Result<()> {
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    stream.flush()
}
