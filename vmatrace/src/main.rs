use std::process::ExitCode;

use clap::Parser;
use vmatrace::cli::exit;

fn main() -> ExitCode {
    // Fix the run's identity and start time first: everything this run writes carries it.
    vmatrace::export::run_identity::this_run();
    vmatrace::logging::init();
    exit::install_panic_hook();
    let cli = vmatrace::cli::Cli::parse();
    let status = match vmatrace::cli::dispatch(cli) {
        Ok(()) => 0,
        Err(e) => {
            vmatrace::tui::tty::detach_hung_up_streams();
            // An error can quote a trace (a header field, a plan note): spelled out,
            // keeping the message's own line breaks.
            eprintln!(
                "vmatrace: {}",
                vmatrace::export::text::printable_lines(&format!("{e:#}"))
            );
            exit::status_of(&e)
        }
    };
    // A panic on any thread is a bug: never report success after one, whatever the
    // command made of the lost thread.
    if exit::panicked() && status == 0 {
        return ExitCode::from(exit::EXIT_ERROR);
    }
    ExitCode::from(status)
}
