//! The dashboard loop: owns the terminal (raw mode, alternate screen), redraws about four
//! times a second, applies keys, and restores the terminal on every way out: normal exit,
//! error, panic (hook) and SIGTERM/SIGINT/SIGHUP (a flag the loop checks).

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use anyhow::Context;
use crossterm::event::{self, Event as TermEvent};

use super::render;
use super::state::{Action, AppState};
use super::stderr_capture::{Captured, StderrCapture};

pub const FRAME: Duration = Duration::from_millis(250);

/// Why the dashboard ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DashboardExit {
    /// The user pressed q / Ctrl-C: the caller should stop the source.
    UserQuit,
    /// The caller's stop future resolved.
    Stopped,
    /// SIGTERM, SIGINT or SIGHUP arrived.
    Signal,
}

/// Run the dashboard until the user quits, `stop` resolves or a termination signal
/// arrives. Needs a terminal on stdout (error otherwise, terminal untouched).
pub async fn run(
    shared: Arc<Mutex<AppState>>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<DashboardExit> {
    let stopped = Arc::new(AtomicBool::new(false));
    let signalled = Arc::new(AtomicBool::new(false));
    let stop_task = {
        let f = stopped.clone();
        tokio::spawn(async move {
            stop.await;
            f.store(true, Ordering::SeqCst);
        })
    };
    let signal_task = {
        let f = signalled.clone();
        tokio::spawn(async move {
            if wait_for_termination().await {
                f.store(true, Ordering::SeqCst);
            }
        })
    };
    let loop_shared = shared.clone();
    let (s, g) = (stopped.clone(), signalled.clone());
    let result = tokio::task::spawn_blocking(move || run_blocking(&loop_shared, &s, &g)).await;
    stop_task.abort();
    signal_task.abort();
    result.context("dashboard thread")?
}

/// Resolves on SIGTERM/SIGINT/SIGHUP; `false` if handlers cannot be installed.
async fn wait_for_termination() -> bool {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int), Ok(mut hup)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) else {
        return false;
    };
    tokio::select! {
        _ = term.recv() => true,
        _ = int.recv() => true,
        _ = hup.recv() => true,
    }
}

fn lock(shared: &Mutex<AppState>) -> std::sync::MutexGuard<'_, AppState> {
    shared.lock().unwrap_or_else(|p| p.into_inner())
}

/// Set by the panic hook: the terminal was restored, the loop must not draw again.
static PANICKED: AtomicBool = AtomicBool::new(false);

/// Restore fd 2 before anything else in a panic, so the message reaches the terminal,
/// then let ratatui's hook (installed by `ratatui::try_init`) restore the terminal. A
/// panic on any thread counts: tokio catches task panics and the process would go on
/// drawing on a restored (cooked, main-screen) terminal, so the loop stops too.
fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let prev = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.store(true, Ordering::SeqCst);
            StderrCapture::restore();
            ratatui::restore();
            prev(info);
        }));
    });
}

fn run_blocking(
    shared: &Mutex<AppState>,
    stopped: &AtomicBool,
    signalled: &AtomicBool,
) -> anyhow::Result<DashboardExit> {
    use std::io::IsTerminal;
    if !std::io::stdout().is_terminal() {
        anyhow::bail!("the dashboard needs a terminal on stdout (use --headless or --json)");
    }
    let mut terminal = ratatui::try_init().context("cannot set up the terminal")?;
    install_panic_hook();
    let captured: Captured = Arc::default();
    // Not fatal: without the capture, stderr output may scribble on the screen until the
    // next redraw, which is ugly but not wrong.
    let capture = StderrCapture::start(captured.clone()).ok();
    let started = Instant::now();
    // Test hook (tests/tui_tmux.rs): panic in the drawing loop after N frames, to check
    // that a renderer bug leaves a usable terminal and a readable message.
    let panic_after: Option<u64> = std::env::var("VMATRACE_TUI_TEST_PANIC")
        .ok()
        .and_then(|v| v.parse().ok());
    let mut frames = 0u64;
    let mut mappings = crate::mapping::MappingNames::default();
    let result = (|| -> anyhow::Result<DashboardExit> {
        loop {
            frames += 1;
            if panic_after == Some(frames) {
                panic!("VMATRACE_TUI_TEST_PANIC: deliberate panic after {frames} frames");
            }
            if PANICKED.load(Ordering::SeqCst) {
                anyhow::bail!("a thread panicked; the dashboard stopped (message above)");
            }
            if signalled.load(Ordering::SeqCst) {
                return Ok(DashboardExit::Signal);
            }
            if stopped.load(Ordering::SeqCst) {
                return Ok(DashboardExit::Stopped);
            }
            // Name the mappings on screen from /proc, outside the lock: the pipeline's
            // sink must not wait for file reads.
            let unnamed = {
                let st = lock(shared);
                if st.names_mappings() {
                    st.unnamed_mappings()
                } else {
                    Vec::new()
                }
            };
            let named: Vec<_> = unnamed
                .into_iter()
                .filter_map(|k| mappings.resolve(k.0, k.1, k.2).map(|n| (k, n)))
                .collect();
            {
                let mut st = lock(shared);
                st.add_mapping_names(named);
                st.live.uptime = started.elapsed();
                if st.ctx.source == super::SourceKind::Live {
                    st.live.wall_now_ns = Some(crate::export::clock::realtime_ns());
                }
                if let Ok(mut lines) = captured.lock() {
                    for l in lines.drain(..) {
                        st.push_log(l);
                    }
                }
                terminal
                    .draw(|f| render::render(f, &st))
                    .context("drawing")?;
            }
            let deadline = Instant::now() + FRAME;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                if !event::poll(left).context("reading the terminal")? {
                    break;
                }
                match event::read().context("reading the terminal")? {
                    TermEvent::Key(k) if k.is_press() => {
                        if lock(shared).on_key(k) == Action::Quit {
                            return Ok(DashboardExit::UserQuit);
                        }
                        break; // redraw now: the user wants to see the effect.
                    }
                    TermEvent::Resize(..) => break,
                    _ => {}
                }
            }
        }
    })();
    drop(capture);
    ratatui::restore();
    // What was logged while the screen was ours is still worth reading afterwards.
    let st = lock(shared);
    for l in &st.log {
        eprintln!("{}", crate::export::printable(l));
    }
    result
}
