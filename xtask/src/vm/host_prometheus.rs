//! A real Prometheus on the host scrapes the `run` step's tracer in the guest.
//!
//! The guest has no network device (Debian's cloud kernels build `virtio_net` as a module,
//! and the image carries none), so the scrape travels over a virtio serial port: QEMU
//! serves the port as a TCP socket on host loopback ([`qemu_args`]), Prometheus scrapes
//! that socket every second, and the guest relays the port to the tracer's
//! `--metrics-listen` address with busybox `nc`, one connection per scrape (the tracer
//! answers one request per connection, `Connection: close`), for as long as the tracer
//! runs. Scrapes before the relay is up time out: only Prometheus' `up` shows them.
//!
//! After the guest is gone, the last scraped value of each series
//! (`last_over_time(name[<last boot>s])`: range selections skip the staleness markers
//! written when the target went away; the range covers only the last boot, so a guest
//! booted again after an oops is judged on its own scrapes, not on its predecessor's
//! run) is turned back into exposition text and judged against the
//! summary like the guest's own scrape (`scrape::judge`): the relay stays up until the
//! tracer exits, seconds after the workload, so the last scrape sees the frozen values.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use serde_json::Value;

/// The virtio serial port the guest relays to the tracer.
pub const PORT_NAME: &str = "vmatrace.metrics";
const PROMETHEUS: &str = "/usr/bin/prometheus";
/// The series `scrape::judge` compares with the summary.
pub const JUDGED: &[&str] = &[
    "vmatrace_logical_events_total",
    "vmatrace_anomalies_total",
    "vmatrace_reader_outcomes_total",
    "vmatrace_writer_wait_seconds_count",
    "vmatrace_losses_total",
    "vmatrace_build_info",
    "vmatrace_run_info",
];

/// A Prometheus server scraping the guest's port; killed on drop.
pub struct HostPrometheus {
    child: Child,
    /// Its HTTP API.
    web: u16,
    /// The loopback port QEMU serves the guest's metrics port on.
    pub target: u16,
    pub dir: PathBuf,
}

impl Drop for HostPrometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One HTTP/1.0 GET on loopback: the body of a 200 answer.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut r = String::new();
    s.read_to_string(&mut r).ok()?;
    let (head, body) = r.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200")
        .then(|| body.to_string())
        .or_else(|| head.starts_with("HTTP/1.1 200").then(|| body.to_string()))
}

fn percent_encode(q: &str) -> String {
    q.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// QEMU arguments for the metrics port: a TCP server on host loopback. Goes on the
/// virtio-serial controller of `stream::port_args`.
pub fn qemu_args(target: u16) -> Vec<String> {
    vec![
        "-chardev".into(),
        format!("socket,id=metrics,host=127.0.0.1,port={target},server=on,wait=off"),
        "-device".into(),
        format!("virtserialport,chardev=metrics,name={PORT_NAME}"),
    ]
}

/// The scrape configuration: every second, the QEMU socket.
pub fn config(target: u16) -> String {
    format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n\
         scrape_configs:\n  - job_name: vmatrace-guest\n    static_configs:\n      \
         - targets: ['127.0.0.1:{target}']\n"
    )
}

impl HostPrometheus {
    /// Start Debian's Prometheus with its data under `dir` (a fresh TSDB).
    pub fn start(dir: &Path) -> anyhow::Result<HostPrometheus> {
        if !Path::new(PROMETHEUS).exists() {
            bail!("{PROMETHEUS} is missing (Debian's `prometheus`: cargo xtask setup installs it)");
        }
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir)?;
        let (target, web) = (free_port()?, free_port()?);
        let cfg = dir.join("prometheus.yml");
        std::fs::write(&cfg, config(target))?;
        let log = std::fs::File::create(dir.join("prometheus.log"))?;
        let child = Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{web}"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .context("starting prometheus")?;
        let p = HostPrometheus {
            child,
            web,
            target,
            dir: dir.to_path_buf(),
        };
        let t = Instant::now();
        while http_get(web, "/-/ready").is_none() {
            if t.elapsed() > Duration::from_secs(60) {
                bail!(
                    "prometheus not ready after 60 s (log: {})",
                    dir.join("prometheus.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(p)
    }

    /// An instant query: the samples as (labels, value).
    fn query(&self, q: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let Some(body) = http_get(
            self.web,
            &format!("/api/v1/query?query={}", percent_encode(q)),
        ) else {
            return Vec::new();
        };
        parse_vector(&body)
    }

    /// How many scrapes of the guest succeeded, and how many were tried, in the last
    /// `window`.
    pub fn scrapes(&self, window: Duration) -> (u64, u64) {
        let w = (window.as_secs() + u64::from(window.subsec_nanos() > 0)).max(1);
        let one = |q: &str| self.query(q).first().map(|(_, v)| *v as u64).unwrap_or(0);
        (
            one(&format!("sum_over_time(up[{w}s])")),
            one(&format!("count_over_time(up[{w}s])")),
        )
    }

    /// The last value scraped in the last `window` of every series of `names`, as
    /// exposition text (Prometheus' own `job` and `instance` labels kept: nothing judged
    /// reads them).
    pub fn last_values(&self, names: &[&str], window: Duration) -> String {
        let mut text = String::new();
        for name in names {
            for (labels, value) in self.query(&last_query(name, window)) {
                let l = labels
                    .iter()
                    .filter(|(k, _)| k.as_str() != "__name__")
                    .map(|(k, v)| format!("{k}=\"{v}\""))
                    .collect::<Vec<_>>()
                    .join(",");
                let _ = writeln!(text, "{name}{{{l}}} {value}");
            }
        }
        text
    }
}

/// The last value of each series of `name` within `window` (rounded up to whole seconds):
/// older boots' series, with their own `run_id`, fall outside it.
pub fn last_query(name: &str, window: Duration) -> String {
    let secs = window.as_secs() + u64::from(window.subsec_nanos() > 0);
    format!("last_over_time({name}[{}s])", secs.max(1))
}

/// The samples of an instant-vector answer of the query API.
pub fn parse_vector(body: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let Ok(v) = serde_json::from_str::<Value>(body) else {
        return Vec::new();
    };
    v["data"]["result"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| {
                    let labels = r["metric"]
                        .as_object()?
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                        .collect();
                    let value = r["value"][1].as_str()?.parse().ok()?;
                    Some((labels, value))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The guest's relay: from the tracer's readiness until it exits, each connection the
/// host opens on the port is carried to `addr` by one `nc` (`$TP` is the tracer's pid;
/// `$RELAY` is set to the relay's pid when the port exists).
pub fn relay_sh(addr: &str) -> String {
    let mut s = String::from("MP=\nRELAY=\n");
    s.push_str(&super::guest_shell::find_port_sh("MP", PORT_NAME));
    let _ = writeln!(
        s,
        "if [ -n \"$MP\" ]; then (exec 5<>$MP; while kill -0 $TP 2>/dev/null; do nc {} <&5 >&5 2>/dev/null; sleep 0.2; done) & RELAY=$!; fi",
        addr.replace(':', " ")
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_query_api_answer() {
        let body = r#"{"status":"success","data":{"resultType":"vector","result":[
            {"metric":{"event":"vma_free","instance":"127.0.0.1:1","job":"vmatrace-guest"},"value":[1765000000.1,"41521"]},
            {"metric":{"event":"vma_alloc"},"value":[1765000000.1,"7"]}]}}"#;
        let v = parse_vector(body);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].0.get("event").map(String::as_str), Some("vma_free"));
        assert_eq!(v[0].1, 41521.0);
        assert!(parse_vector("not json").is_empty());
    }

    #[test]
    fn queries_cover_only_the_last_boot() {
        assert_eq!(
            last_query("vmatrace_run_info", Duration::from_millis(61_900)),
            "last_over_time(vmatrace_run_info[62s])"
        );
        assert_eq!(last_query("x", Duration::ZERO), "last_over_time(x[1s])");
    }

    #[test]
    fn qemu_serves_the_port_on_loopback_and_the_guest_relays_it() {
        let a = qemu_args(40123).join(" ");
        assert!(a.contains("socket,id=metrics,host=127.0.0.1,port=40123,server=on,wait=off"));
        assert!(a.contains("virtserialport,chardev=metrics,name=vmatrace.metrics"));
        let r = relay_sh("127.0.0.1:9464");
        assert!(r.contains("exec 5<>$MP"), "{r}");
        assert!(r.contains("nc 127.0.0.1 9464 <&5 >&5"), "{r}");
        assert!(r.contains("while kill -0 $TP"), "{r}");
        assert!(config(40123).contains("127.0.0.1:40123"));
    }
}
