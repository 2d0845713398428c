//! `cargo test` at the root: the QEMU integration tests of `tests/`.
//!
//! Each of them is a test kernel built for `x86_64-unknown-none`, and cargo boots it through
//! that target's runner (`scripts/runner`, `.cargo/config.toml`), which it uses only when it
//! builds for that target. So they run from here as
//! `cargo test -p kernel-tests --target x86_64-unknown-none --no-fail-fast`, with this binary's
//! arguments after `--` (variant filters such as `memory::uefi`, `--nocapture`, `--list`).

mod common;

fn main() -> std::process::ExitCode {
    common::nested_cargo_test(&[
        "test",
        "-p",
        "kernel-tests",
        "--target",
        "x86_64-unknown-none",
        "--no-fail-fast",
    ])
}
