use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = vmatrace::cli::Cli::parse();
    match vmatrace::cli::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            // An error can quote a trace (a header field, a plan note): spelled out.
            eprintln!(
                "vmatrace: {}",
                vmatrace::export::printable(&format!("{e:#}"))
            );
            ExitCode::FAILURE
        }
    }
}
