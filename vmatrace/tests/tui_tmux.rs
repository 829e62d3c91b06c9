//! End to end: drive the real binary's dashboard in tmux (send-keys / capture-pane)
//! through every screen, open an anomaly's evidence, resize, quit, and check that the
//! terminal is left clean (main screen, cooked mode, echo on). Also: SIGTERM restores the
//! terminal.
//!
//! Uses the hidden `vmatrace dashboard-demo` source (synthetic events and anomalies), so
//! it needs neither root, a kernel, nor a trace file. Skipped (with the reason) when tmux
//! is not installed.

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
        let out = t
            .cmd(&[
                "-f",
                "/dev/null",
                "new-session",
                "-d",
                "-s",
                "t",
                "-x",
                &width.to_string(),
                "-y",
                &height.to_string(),
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
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let screen = self.capture();
            if screen.contains(needle) {
                return screen;
            }
            if Instant::now() > deadline {
                panic!("{needle:?} never appeared; screen:\n{screen}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

/// The pane command: the dashboard, then evidence of a clean terminal for the test to read.
fn session_command() -> String {
    session_command_with("")
}

fn session_command_with(extra: &str) -> String {
    format!(
        "RUST_BACKTRACE=0 {BIN} dashboard-demo {extra}; echo EXIT=$?; stty -a | tr ' ;' '\\n\\n' | grep -x -e icanon -e -icanon -e echo -e -echo | tr '\\n' ' '; echo END; sleep 120"
    )
}

fn assert_clean(t: &Tmux) {
    assert_clean_with_exit(t, "EXIT=0");
}

fn assert_clean_with_exit(t: &Tmux, exit: &str) {
    let screen = t.wait_for("END");
    assert!(screen.contains(exit), "exit status: {screen}");
    assert!(
        screen.contains("icanon echo") && !screen.contains("-icanon") && !screen.contains("-echo"),
        "terminal left in raw mode: {screen}"
    );
    assert!(
        !screen.contains("Overview") && !screen.contains('┌'),
        "dashboard left on the screen: {screen}"
    );
    assert_eq!(
        t.display("#{alternate_on}"),
        "0",
        "still on the alternate screen"
    );
    assert_eq!(t.display("#{cursor_flag}"), "1", "cursor left hidden");
}

#[test]
fn every_screen_evidence_resize_and_clean_quit() {
    let Some(t) = Tmux::start("screens", 100, 30, &session_command()) else {
        return;
    };
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
    t.keys(&["/", "j", "a", "v", "a", "Enter"]);
    let s = t.wait_for("filter \"java\"");
    assert!(!s.contains("postgres["), "filter let postgres through: {s}");
    t.keys(&["Escape"]);

    t.keys(&["4"]);
    t.wait_for("Anomalies (");
    // The demo raises its first anomalies within a second.
    t.wait_for("reader_while_excluded");
    t.keys(&["Enter"]);
    let s = t.wait_for("Evidence #1");
    assert!(s.contains("expected") && s.contains("observed") && s.contains("Events of this VMA"));
    assert!(
        s.contains("F+2"),
        "refcount shown with the flag decoded: {s}"
    );
    t.keys(&["Escape"]);
    t.wait_for("Anomalies (");

    t.keys(&["5"]);
    t.wait_for("Model: phases");

    t.keys(&["?"]);
    t.wait_for("cycle the sort column");
    t.keys(&["x"]);
    t.keys(&["p"]);
    t.wait_for("PAUSED");
    t.keys(&["p"]);
    t.wait_for("LIVE");

    // Resize-safe: shrink to 80x24 and grow to 200x60 while running.
    for (w, h) in [("80", "24"), ("200", "60")] {
        let out = t
            .cmd(&["resize-window", "-t", "t", "-x", w, "-y", h])
            .unwrap();
        assert!(out.status.success(), "resize: {out:?}");
        t.keys(&["1"]);
        let s = t.wait_for("Events (");
        let widest = s.lines().map(|l| l.chars().count()).max().unwrap_or(0);
        assert!(
            widest <= w.parse::<usize>().unwrap(),
            "drew past {w} columns"
        );
    }

    t.keys(&["q"]);
    assert_clean(&t);
}

#[test]
fn sigterm_restores_the_terminal() {
    let Some(t) = Tmux::start("sigterm", 90, 26, &session_command()) else {
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
    assert_clean(&t);
}

#[test]
fn panic_restores_the_terminal_and_shows_the_message() {
    let Some(t) = Tmux::start("panic", 90, 26, &session_command_with("--panic-after 10")) else {
        return;
    };
    assert_clean_with_exit(&t, "EXIT=1");
    let s = t.capture();
    assert!(
        s.contains("deliberate panic after 10 rounds"),
        "the panic message must reach the restored terminal: {s}"
    );
    assert!(s.contains("dashboard stopped"), "{s}");
}
