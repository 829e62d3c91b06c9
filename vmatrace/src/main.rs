use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = vmatrace::cli::Cli::parse();
    match vmatrace::cli::dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vmatrace: {e:#}");
            ExitCode::FAILURE
        }
    }
}
