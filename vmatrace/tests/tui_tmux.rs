//! End to end: drive the real binary's dashboard in tmux (send-keys / capture-pane)
//! through every screen, open an anomaly's evidence, resize, quit, and check that the
//! terminal is left clean (main screen, cooked mode, echo on, cursor shown). Sources:
//! `simulate --tui --inject …` (live-like, with anomalies) and `replay FILE --tui` over a
//! synthetic trace (and over tests/data/*.vmatrace, a real-kernel sample, when present).
//! Also: SIGTERM and a panic in the drawing loop restore the terminal.
//!
//! Skipped (with the reason) when tmux is not installed.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_vmatrace");

/// A private tmux server (its own socket), killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(name: &str, width: u16, height: u16, command: &str) -> Option<Self> {
        if Command::new("tmux").arg("-V").output().is_err() {
            vmatrace::testing::skip(name, "tmux is not installed (apt-get install tmux)");
            return None;
        }
        let t = Tmux {
            socket: format!("vmatrace-{name}-{}", std::process::id()),
        };
        let (w, h) = (width.to_string(), height.to_string());
        let out = t
            .cmd(&[
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-s",
                "t",
                "-x",
                &w,
                "-y",
                &h,
                command,
            ])
            .expect("tmux new-session");
        assert!(out.status.success(), "tmux new-session: {out:?}");
        Some(t)
    }

    fn cmd(&self, args: &[&str]) -> std::io::Result<std::process::Output> {
        Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            // The test may itself run inside tmux; talk to our own server only.
            .env_remove("TMUX")
            .env("TERM", "xterm-256color")
            .output()
    }

    fn keys(&self, keys: &[&str]) {
        for k in keys {
            let out = self.cmd(&["send-keys", "-t", "t", k]).expect("send-keys");
            assert!(out.status.success(), "send-keys {k}: {out:?}");
            std::thread::sleep(Duration::from_millis(150));
        }
    }

    fn capture(&self) -> String {
        let out = self
            .cmd(&["capture-pane", "-p", "-t", "t"])
            .expect("capture-pane");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn display(&self, format: &str) -> String {
        let out = self
            .cmd(&["display", "-p", "-t", "t", format])
            .expect("display");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Wait until the pane shows `needle`; panic with the screen if it never does.
    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let screen = self.capture();
            if screen.contains(needle) {
                return screen;
            }
            if Instant::now() > deadline {
                // What runs in the pane and on which screen: a hung process and a lost
                // key look alike on the screen alone.
                let state = self.display(
                    "command #{pane_current_command}, alternate screen #{alternate_on}, \
                     cursor #{cursor_flag}, #{pane_width}x#{pane_height}",
                );
                panic!(
                    "{needle:?} never appeared ({state}); screen:\n{screen}\nprocesses:\n{}",
                    vmatrace_processes()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `ps` lines of the vmatrace processes (state, wait channel), for a failure message.
fn vmatrace_processes() -> String {
    let ps = Command::new("ps")
        .args(["-eo", "pid,ppid,stat,wchan:24,etime,args"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let ours: Vec<&str> = ps.lines().filter(|l| l.contains("vmatrace")).collect();
    ours.join("\n")
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// The pane command: vmatrace with `args`, then evidence of the terminal's state for the
/// test to read (exit status; icanon/echo flags from stty).
fn session_command(env: &str, args: &str) -> String {
    format!(
        "{env} RUST_BACKTRACE=0 {BIN} {args}; echo EXIT=$?; \
         stty -a | tr ' ;' '\\n\\n' | grep -x -e icanon -e -icanon -e echo -e -echo | tr '\\n' ' '; \
         echo END; sleep 120"
    )
}

fn assert_clean(t: &Tmux, exit: &str) -> String {
    let screen = t.wait_for("END");
    assert!(screen.contains(exit), "want {exit}: {screen}");
    assert!(
        screen.contains("icanon echo") && !screen.contains("-icanon") && !screen.contains("-echo"),
        "terminal left in raw mode: {screen}"
    );
    assert!(
        !screen.contains("1 Overview") && !screen.contains('┌'),
        "dashboard left on the screen: {screen}"
    );
    assert_eq!(
        t.display("#{alternate_on}"),
        "0",
        "still on the alternate screen"
    );
    assert_eq!(t.display("#{cursor_flag}"), "1", "cursor left hidden");
    screen
}

/// Visit every screen and the main interactions; the source must produce anomalies.
fn tour(t: &Tmux) {
    let s = t.wait_for("Events (");
    assert!(s.contains("1 Overview") && s.contains("Coverage") && s.contains("Losses"));

    t.keys(&["2"]);
    let s = t.wait_for("Readers-exclusion wait");
    assert!(
        s.contains("Percentiles") && s.contains("Slowest waits"),
        "{s}"
    );

    t.keys(&["3"]);
    t.wait_for("Top processes by total wait");
    t.keys(&["s"]);
    t.wait_for("Top processes by max wait");
    t.keys(&["v"]);
    t.wait_for("Top VMAs by max wait");
    t.keys(&["/", "z", "z", "q", "Enter"]);
    t.wait_for("filter \"zzq\": 0 match");
    t.keys(&["Escape"]);

    t.keys(&["4"]);
    t.wait_for("Anomalies (");
    t.keys(&["Enter"]);
    let s = t.wait_for("Evidence #1");
    assert!(
        s.contains("expected") && s.contains("observed") && s.contains("Events of this VMA"),
        "{s}"
    );
    t.keys(&["Escape"]);
    t.wait_for("Anomalies (");

    t.keys(&["5"]);
    let s = t.wait_for("Model: phases");
    assert!(s.contains("attached") && s.contains("VMAs tracked"), "{s}");

    t.keys(&["?"]);
    t.wait_for("cycle the sort column");
    t.keys(&["x", "p"]);
    t.wait_for("PAUSED");
    t.keys(&["p", "Tab"]);
    t.wait_for("1 Overview");

    // Resize-safe: shrink to 80x24 and grow to 200x60 while running.
    for (w, h) in [("80", "24"), ("200", "60")] {
        let out = t
            .cmd(&["resize-window", "-t", "t", "-x", w, "-y", h])
            .expect("resize-window");
        assert!(out.status.success(), "resize: {out:?}");
        t.keys(&["1"]);
        let s = t.wait_for("Events (");
        let widest = s.lines().map(|l| l.chars().count()).max().unwrap_or(0);
        assert!(widest <= w.parse().unwrap(), "drew past {w} columns:\n{s}");
    }
}

#[test]
fn simulate_every_screen_evidence_resize_and_clean_quit() {
    let cmd = session_command(
        "",
        "simulate --tui --threads 2 --inject double-exclusion --inject-rate 0.05",
    );
    let Some(t) = Tmux::start("simulate", 100, 30, &cmd) else {
        return;
    };
    t.wait_for("concurrent_exclusion");
    tour(&t);
    t.keys(&["q"]);
    let s = assert_clean(&t, "EXIT=0");
    // Quitting stops the simulated tasks; the summary follows the dashboard.
    assert!(s.contains("verdict: ok") && s.contains("detected"), "{s}");
}

#[test]
fn replay_every_screen_then_summary_after_quit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("sample.vmatrace");
    common::write_sample(&trace, false);
    let mut traces = vec![trace];
    // A real-kernel sample from the VM rig, when one is checked in.
    let data = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data");
    traces.extend(
        std::fs::read_dir(&data)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "vmatrace")),
    );
    for (i, trace) in traces.iter().enumerate() {
        let cmd = session_command("", &format!("replay {} --tui", trace.display()));
        let Some(t) = Tmux::start(&format!("replay{i}"), 140, 30, &cmd) else {
            return;
        };
        let s = t.wait_for("ENDED");
        assert!(s.contains("sample.vmatrace") || i > 0, "{s}");
        for (key, needle) in [
            ("2", "Readers-exclusion wait"),
            ("3", "Top processes"),
            ("4", "Anomalies"),
            ("5", "Model: phases"),
            ("1", "Events ("),
        ] {
            t.keys(&[key]);
            t.wait_for(needle);
        }
        if i == 0 {
            // The synthetic trace: two processes took the write lock 100 times.
            t.keys(&["3"]);
            let s = t.wait_for("Top processes");
            assert!(s.contains("stress[100]") && s.contains("other[200]"), "{s}");
        }
        t.keys(&["q"]);
        let s = assert_clean(&t, "EXIT=0");
        // The exit summary is printed after the dashboard is gone.
        assert!(
            s.to_lowercase().contains("events"),
            "no summary after quit: {s}"
        );
    }
}

#[test]
fn sigterm_restores_the_terminal() {
    let cmd = session_command("", "simulate --tui --threads 2");
    let Some(t) = Tmux::start("sigterm", 90, 26, &cmd) else {
        return;
    };
    t.wait_for("Events (");
    let shell = t.display("#{pane_pid}");
    let out = Command::new("pgrep")
        .args(["-P", &shell, "-x", "vmatrace"])
        .output()
        .expect("pgrep");
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !pid.is_empty(),
        "no vmatrace child of the pane shell {shell}"
    );
    let st = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(st.success());
    assert_clean(&t, "EXIT=0");
}

/// The terminal goes away under the dashboard (ssh dropped, tmux killed): the session
/// ends within seconds, without spinning or panicking on the dead terminal. With an
/// anomaly log, SIGHUP means "reopen the log", so the hang-up itself must end it. The
/// pane's shell ignores SIGHUP to outlive the terminal and record the exit status.
#[test]
fn hang_up_ends_the_session() {
    let dir = tempfile::tempdir().expect("tempdir");
    let trace = dir.path().join("sample.vmatrace");
    common::write_sample(&trace, false);
    let (log, err, rc) = (
        dir.path().join("anomalies.jsonl"),
        dir.path().join("stderr"),
        dir.path().join("rc"),
    );
    let cmd = format!(
        "trap '' HUP; {BIN} replay {} --tui --anomaly-log {} 2>{}; echo $? > {}",
        trace.display(),
        log.display(),
        err.display(),
        rc.display()
    );
    let Some(t) = Tmux::start("hangup", 100, 30, &cmd) else {
        return;
    };
    t.wait_for("ENDED");
    drop(t); // kill-server: the pty's master closes
    let deadline = Instant::now() + Duration::from_secs(20);
    while !rc.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let stderr = std::fs::read_to_string(&err).unwrap_or_default();
    let status = std::fs::read_to_string(&rc).unwrap_or_default();
    assert_eq!(
        status.trim(),
        "0",
        "exit status after a hang-up (empty: still running 20 s later); stderr: {stderr}\n\
         processes:\n{}",
        vmatrace_processes()
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(log.exists(), "the anomaly log was created");
}

#[test]
fn panic_restores_the_terminal_and_shows_the_message() {
    let cmd = session_command("VMATRACE_TUI_TEST_PANIC=8", "simulate --tui --threads 2");
    let Some(t) = Tmux::start("panic", 90, 26, &cmd) else {
        return;
    };
    let s = assert_clean(&t, "EXIT=1");
    assert!(
        s.contains("deliberate panic after 8 frames"),
        "the panic message must reach the restored terminal: {s}"
    );
}

/// A trace recorded on Debian's 7.3.4 kernel in QEMU (`cargo xtask vm-record
/// --duration 1`): on a wide terminal the Writers screen says why the slowest writer
/// waited (its syscall and kernel stack, as the kernel gave them), the Slowest waits name
/// each slow writer's syscall, and Top counts the readers a writer sent to `mmap_lock`.
#[test]
fn a_real_kernels_slow_writer_shows_its_syscall_and_stack() {
    let trace = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/data/sample-7.3.4-cloud-slow-waits.vmatrace");
    let cmd = session_command("", &format!("replay {} --tui", trace.display()));
    let Some(t) = Tmux::start("slowwaits", 160, 45, &cmd) else {
        return;
    };
    t.wait_for("ENDED");
    t.keys(&["2"]);
    let s = t.wait_for("Why the slowest writer waited");
    // The slowest writers of that run were forks waiting in dup_mmap.
    assert!(s.contains("clone · vmatrace["), "{s}");
    for frame in ["__vma_start_write+0x", "dup_mmap+0x", "do_syscall_64+0x"] {
        assert!(s.contains(frame), "no {frame} on the Writers screen:\n{s}");
    }
    assert!(s.contains("syscall") && s.contains("mprotect"), "{s}");
    t.keys(&["3"]);
    let s = t.wait_for("fallbk");
    assert!(s.contains("vmatrace["), "{s}");
    t.keys(&["q"]);
    assert_clean(&t, "EXIT=0");
}
