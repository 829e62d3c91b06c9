//! The `/metrics` endpoint: a minimal HTTP/1.1 server on the session's tokio runtime.
//! One request per connection (`Connection: close`), `GET` or `HEAD /metrics` answered
//! with the latest snapshot ([`super::snapshots`]), anything else 404. No keep-alive, no
//! TLS, no auth: bind it to loopback or a management network (docs/fleet.md).

use std::{net::SocketAddr, time::Duration};

use anyhow::Context;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::{
    metrics::{Format, render},
    snapshots::LatestSummary,
};

/// A request head larger than this is refused: a scrape's is a few hundred bytes.
const MAX_HEAD: usize = 16 * 1024;
/// A client that sends nothing, or reads nothing, for this long is dropped.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Bind now (on the calling thread, before tracing starts, so a taken port is an error at
/// once), serve later on `rt`.
pub fn bind(rt: &tokio::runtime::Runtime, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let l = std::net::TcpListener::bind(addr)
        .with_context(|| format!("--metrics-listen {addr}: cannot listen"))?;
    l.set_nonblocking(true)?;
    let _guard = rt.enter();
    Ok(TcpListener::from_std(l)?)
}

/// Accept connections until the runtime shuts down.
pub async fn serve(listener: TcpListener, latest: LatestSummary) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let latest = latest.clone();
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(IO_TIMEOUT, answer(stream, &latest)).await;
                });
            }
            Err(e) => {
                // EMFILE and the like: back off rather than spin.
                log::warn!("metrics endpoint: accept: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// The parts of a request the endpoint looks at.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub accept: Option<String>,
}

/// Parse a request head (up to the blank line); `None` if it is not HTTP/1.x.
pub fn parse_head(head: &str) -> Option<Request> {
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, target, version) = (first.next()?, first.next()?, first.next()?);
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let accept = lines.find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case("accept")
            .then(|| v.trim().to_string())
    });
    Some(Request {
        method: method.to_string(),
        path: target.split('?').next().unwrap_or("").to_string(),
        accept,
    })
}

/// Status line, content type and body for a request.
pub fn respond(req: Option<&Request>, latest: &LatestSummary) -> (&'static str, String, String) {
    let text = |status, body: &str| (status, "text/plain; charset=utf-8".into(), body.into());
    let Some(req) = req else {
        return text("400 Bad Request", "bad request\n");
    };
    if req.path != "/metrics" {
        return text("404 Not Found", "not found; metrics are at /metrics\n");
    }
    if req.method != "GET" && req.method != "HEAD" {
        return text("405 Method Not Allowed", "GET /metrics\n");
    }
    match latest.get() {
        Some(s) => {
            let f = Format::negotiate(req.accept.as_deref());
            ("200 OK", f.content_type().into(), render(&s, f))
        }
        // Only in the first moment of a session, before the pipeline's first flush.
        None => text("503 Service Unavailable", "no snapshot yet\n"),
    }
}

async fn answer(mut stream: TcpStream, latest: &LatestSummary) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break Some(i);
        }
        if buf.len() > MAX_HEAD {
            break None;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let req = head_end.and_then(|i| parse_head(&String::from_utf8_lossy(&buf[..i])));
    let (status, content_type, body) = respond(req.as_ref(), latest);
    let head_only = req.as_ref().is_some_and(|r| r.method == "HEAD");
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    stream.write_all(&out).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use vmatrace_common::model::Generation;

    use super::*;
    use crate::{
        export::summary::{Summary, SummaryInput},
        pipeline::Pipeline,
        trace::TraceHeader,
    };

    fn latest() -> LatestSummary {
        let p = Pipeline::new(Generation::V7_0);
        let header = TraceHeader::synthetic(Generation::V7_0);
        let l = LatestSummary::default();
        l.set(Summary::build(SummaryInput {
            mode: "replay",
            header: &header,
            totals: &p.totals,
            validator: &p.validator,
            duration_ns: 0,
            stop_reason: String::new(),
            anomaly_log: None,
            recording: None,
            replay: None,
            stats: None,
            programs: Vec::new(),
            startup_cpu_s: None,
            stop_cpu_s: None,
        }));
        l
    }

    #[test]
    fn parses_a_scrape() {
        let r = parse_head(
            "GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nACCEPT: application/openmetrics-text\r\n",
        )
        .expect("parses");
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/metrics");
        assert_eq!(r.accept.as_deref(), Some("application/openmetrics-text"));
        assert!(parse_head("GET /metrics SPDY/3").is_none());
        assert!(parse_head("garbage").is_none());
    }

    #[test]
    fn statuses() {
        let l = latest();
        let req = |m: &str, p: &str| parse_head(&format!("{m} {p} HTTP/1.1\r\n"));
        assert_eq!(respond(req("GET", "/metrics").as_ref(), &l).0, "200 OK");
        assert_eq!(respond(req("GET", "/").as_ref(), &l).0, "404 Not Found");
        assert_eq!(
            respond(req("GET", "/metricsx").as_ref(), &l).0,
            "404 Not Found"
        );
        assert_eq!(
            respond(req("POST", "/metrics").as_ref(), &l).0,
            "405 Method Not Allowed"
        );
        assert_eq!(respond(None, &l).0, "400 Bad Request");
        assert_eq!(
            respond(req("GET", "/metrics").as_ref(), &LatestSummary::default()).0,
            "503 Service Unavailable"
        );
        let (_, ct, body) = respond(req("GET", "/metrics").as_ref(), &l);
        assert!(ct.starts_with("application/openmetrics-text; version=1.0.0"));
        assert!(body.ends_with("# EOF\n"));
    }

    #[test]
    fn serves_over_tcp() {
        let rt = crate::cli::signals::runtime().expect("runtime");
        let listener = bind(&rt, "127.0.0.1:0".parse().expect("addr")).expect("bind");
        let addr = listener.local_addr().expect("addr");
        rt.spawn(serve(listener, latest()));
        let get = |path: &str| {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(addr).expect("connect");
            write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").expect("send");
            let mut r = String::new();
            s.read_to_string(&mut r).expect("read");
            r
        };
        let ok = get("/metrics");
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.contains(
            "Content-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\n"
        ));
        assert!(ok.contains("vmatrace_build_info{"));
        assert!(get("/other").starts_with("HTTP/1.1 404 Not Found\r\n"));
        // The port is taken now: a second bind says which flag to fix.
        let e = bind(&rt, addr).expect_err("taken");
        assert!(format!("{e:#}").contains("--metrics-listen"), "{e:#}");
    }
}
