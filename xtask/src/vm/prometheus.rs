//! A real Prometheus on the host scraping the guest's tracer during the run.
//!
//! The guest has a virtio NIC (its driver modules ride in the kernel's initramfs); QEMU's
//! user network forwards a host loopback port to the tracer's metrics port. Debian's
//! `prometheus` scrapes it every second from before the boot; afterwards the samples of
//! its last successful scrape are read back through its HTTP API and judged like the
//! guest's own scrape ([`super::scrape::judge_samples`]).

use std::{
    io::{Read as _, Write as _},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context, bail};
use serde_json::Value;

use super::scrape::Sample;

pub const PROMETHEUS: &str = "/usr/bin/prometheus";

/// A port free on the host's loopback right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The running Prometheus; killed when dropped.
pub struct Prometheus {
    child: Child,
    web_port: u16,
    started: f64,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// `GET path` over HTTP/1.0 (no chunked answers); the body of a 200 answer.
fn get(port: u16, path: &str) -> anyhow::Result<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no HTTP header")?;
    let status = head.lines().next().unwrap_or_default();
    if !status.contains(" 200 ") {
        bail!("GET {path}: {status}: {}", body.trim());
    }
    Ok(body.to_string())
}

fn encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

impl Prometheus {
    /// Start Prometheus in `dir`, scraping `127.0.0.1:target_port` every second.
    pub fn start(dir: &Path, target_port: u16) -> anyhow::Result<Prometheus> {
        if !Path::new(PROMETHEUS).is_file() {
            bail!("no {PROMETHEUS} (cargo xtask setup installs Debian's prometheus)");
        }
        std::fs::create_dir_all(dir)?;
        let config: PathBuf = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\nscrape_configs:\n  \
                 - job_name: vmatrace\n    static_configs:\n      - targets: \
                 ['127.0.0.1:{target_port}']\n"
            ),
        )?;
        let web_port = free_port()?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{web_port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting prometheus")?;
        let p = Prometheus {
            child,
            web_port,
            started: unix_now(),
        };
        let t0 = Instant::now();
        while get(web_port, "/-/ready").is_err() {
            if t0.elapsed() > Duration::from_secs(30) {
                bail!(
                    "prometheus did not get ready in 30 s (see {})",
                    dir.join("prometheus.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(p)
    }

    fn api(&self, path: &str) -> anyhow::Result<Value> {
        let body = get(self.web_port, path)?;
        let v: Value = serde_json::from_str(&body).context("prometheus answer is not JSON")?;
        if v["status"] != "success" {
            bail!("prometheus: {body}");
        }
        Ok(v["data"]["result"].clone())
    }

    /// The samples of the last scrape that reached the tracer, and how many did.
    pub fn last_scrape(&self) -> anyhow::Result<(usize, Vec<Sample>)> {
        // `vmatrace_run_info` is 1 in every successful scrape: its points are the scrapes.
        let end = unix_now();
        let points = self.api(&format!(
            "/api/v1/query_range?query=vmatrace_run_info&start={:.3}&end={end:.3}&step=1s",
            self.started
        ))?;
        let times: Vec<f64> = points
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|s| s["values"].as_array().cloned().unwrap_or_default())
            .filter_map(|p| p.get(0).and_then(Value::as_f64))
            .collect();
        let Some(last) = times.iter().copied().reduce(f64::max) else {
            bail!("prometheus never scraped the guest's tracer (no vmatrace_run_info)");
        };
        let result = self.api(&format!(
            "/api/v1/query?query={}&time={last:.3}",
            encode("{__name__=~\"vmatrace_.+\"}")
        ))?;
        let samples = result
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|r| {
                let metric = r["metric"].as_object()?;
                let name = metric.get("__name__")?.as_str()?.to_string();
                let labels = metric
                    .iter()
                    .filter(|(k, _)| !matches!(k.as_str(), "__name__" | "job" | "instance"))
                    .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect();
                let value = match r["value"].get(1)?.as_str()? {
                    "+Inf" => f64::INFINITY,
                    v => v.parse().ok()?,
                };
                Some(Sample {
                    name,
                    labels,
                    value,
                })
            })
            .collect();
        Ok((times.len(), samples))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(
            encode("{__name__=~\"vmatrace_.+\"}"),
            "%7B__name__%3D~%22vmatrace_.%2B%22%7D"
        );
    }
}
