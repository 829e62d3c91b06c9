//! The dashboard loop: owns the terminal (raw mode, alternate screen), redraws about four
//! times a second, applies keys, and restores the terminal on every way out: normal exit,
//! error, panic (hook), the caller's stop (its signals: SIGTERM, SIGINT, SIGHUP without a
//! log to reopen) and a hang-up of the terminal itself.

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::{Duration, Instant};

use anyhow::Context;
use crossterm::event::{self, Event as TermEvent};

use super::render;
use super::state::{Action, AppState};
use super::stderr_capture::{Captured, StderrCapture};
use super::tty::{self, Tty};

pub const FRAME: Duration = Duration::from_millis(250);

/// How long the drawing thread may take to notice a hang-up the watch below saw, before
/// it is left behind (stuck in the terminal library: see [`tty`]).
const HANG_UP_GRACE: Duration = Duration::from_secs(1);

/// Why the dashboard ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DashboardExit {
    /// The user pressed q / Ctrl-C: the caller should stop the source.
    UserQuit,
    /// The caller's stop future resolved.
    Stopped,
    /// The terminal hung up (what SIGHUP means): the caller should stop the source.
    /// Standard streams left on the dead terminal now point at `/dev/null`.
    HungUp,
}

/// Run the dashboard until the user quits, `stop` resolves or the terminal hangs up.
/// Needs a terminal on stdout (error otherwise, terminal untouched).
///
/// The drawing loop runs on its own thread, not tokio's blocking pool: if it ever hangs
/// in the terminal library after a hang-up, it is left behind and the session still ends
/// (the runtime would wait for a pool thread forever).
pub async fn run(
    shared: Arc<Mutex<AppState>>,
    stop: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<DashboardExit> {
    let tty = Arc::new(Tty::open().context("cannot open the terminal")?);
    let stopped = Arc::new(AtomicBool::new(false));
    let stop_task = {
        let f = stopped.clone();
        tokio::spawn(async move {
            stop.await;
            f.store(true, Ordering::SeqCst);
        })
    };
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (loop_shared, loop_tty, s) = (shared.clone(), tty.clone(), stopped.clone());
    std::thread::Builder::new()
        .name("vmatrace-tui".into())
        .spawn(move || {
            // A panic drops `tx`: the receiver below reports it.
            let _ = tx.send(run_blocking(&loop_shared, &loop_tty, &s));
        })
        .context("cannot start the dashboard thread")?;
    let result = tokio::select! {
        r = rx => r.context("the dashboard thread panicked (message above)")?,
        () = hung_up(&tty) => {
            tty::detach_hung_up_streams();
            Ok(DashboardExit::HungUp)
        }
    };
    stop_task.abort();
    result
}

/// Resolves [`HANG_UP_GRACE`] after the terminal is seen hung up.
async fn hung_up(tty: &Tty) {
    let mut every = tokio::time::interval(Duration::from_millis(500));
    while !tty.hung_up() {
        every.tick().await;
    }
    tokio::time::sleep(HANG_UP_GRACE).await;
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
    tty: &Tty,
    stopped: &AtomicBool,
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
                if let Err(e) = terminal.draw(|f| render::render(f, &st)) {
                    // The terminal can hang up in the middle of a frame (EIO): that is a
                    // hang-up like any other, not a drawing failure to restore from.
                    if tty.hung_up() {
                        return Ok(DashboardExit::HungUp);
                    }
                    return Err(e).context("drawing");
                }
            }
            let deadline = Instant::now() + FRAME;
            while let Some(left) = deadline.checked_duration_since(Instant::now()) {
                // crossterm's poll (its `use-dev-tty` source: poll(2), level-triggered)
                // returns within `left` on a hung-up terminal too, reading end of file
                // meanwhile; the hang-up itself is seen here.
                if tty.hung_up() {
                    return Ok(DashboardExit::HungUp);
                }
                let ready = match event::poll(left) {
                    Ok(r) => r,
                    Err(_) if tty.hung_up() => return Ok(DashboardExit::HungUp),
                    Err(e) => return Err(e).context("reading the terminal"),
                };
                if !ready {
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
    if matches!(result, Ok(DashboardExit::HungUp)) {
        // Nothing to restore on a terminal that is gone; nothing may write to it either.
        tty::detach_hung_up_streams();
    } else {
        ratatui::restore();
    }
    // What was logged while the screen was ours is still worth reading afterwards.
    let st = lock(shared);
    for l in &st.log {
        eprintln!("{}", crate::export::printable(l));
    }
    result
}
