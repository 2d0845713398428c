//! What the root-level test binaries share: a cargo command at the workspace root.

use std::path::Path;
use std::process::{Command, ExitCode, ExitStatus};

/// `cargo` (the one running this test, as `cargo test` tells it in `CARGO`) at the workspace
/// root, where `.cargo/config.toml` names the bare-metal target's runner.
pub fn cargo() -> Command {
    let mut cargo = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cargo.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."));
    cargo
}

/// Runs a nested `cargo test` with this test binary's own arguments (filters, `--nocapture`,
/// `--list`) after its `--`, and exits as it did.
#[allow(dead_code)] // used by the harness-less test binaries only
pub fn nested_cargo_test(cargo_args: &[&str]) -> ExitCode {
    let forwarded: Vec<String> = std::env::args().skip(1).collect();
    println!("\nrunning: cargo {} -- {}", cargo_args.join(" "), forwarded.join(" "));
    let status = cargo().args(cargo_args).arg("--").args(&forwarded).status();
    exit_code(status)
}

fn exit_code(status: std::io::Result<ExitStatus>) -> ExitCode {
    match status {
        Ok(s) if s.success() => ExitCode::SUCCESS,
        Ok(s) => ExitCode::from(s.code().and_then(|c| u8::try_from(c).ok()).filter(|&c| c != 0).unwrap_or(1)),
        Err(e) => {
            eprintln!("cannot run cargo: {e}");
            ExitCode::FAILURE
        }
    }
}
