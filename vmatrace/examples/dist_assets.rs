//! Writes what the Debian package ships beside the binary and derives from its command
//! line: a man page per subcommand (`man1/vmatrace.1`, `man1/vmatrace-run.1`, ...) and
//! shell completions (`completions/vmatrace.bash`, `_vmatrace`, `vmatrace.fish`).
//! `cargo xtask deb` runs it; an example (not a subcommand) keeps clap_mangen and
//! clap_complete out of the shipped binary.
//!
//! Usage: `cargo run --release -p vmatrace --example dist_assets -- OUT_DIR`

use std::path::PathBuf;

use clap::CommandFactory;
use clap_complete::Shell;

fn main() -> std::io::Result<()> {
    let out = PathBuf::from(
        std::env::args_os()
            .nth(1)
            .unwrap_or_else(|| "dist-assets".into()),
    );
    let man = out.join("man1");
    let completions = out.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    let cmd = vmatrace::cli::Cli::command();
    // One page for `vmatrace` and one per subcommand, named `vmatrace-<sub>`.
    clap_mangen::generate_to(cmd.clone(), &man)?;
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd.clone(), "vmatrace", &completions)?;
    }
    Ok(())
}
