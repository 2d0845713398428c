//! `cargo test` at the root: the kernel library's host unit and property tests.
//!
//! The `kernel` package cannot be a default member of the workspace: its binary is bare metal
//! only, and `cargo build` or `cargo run` at the root would build it for the host. So its
//! library's tests (built for the host, where the library links `std` under `cfg(test)`) run
//! from here as `cargo test -p kernel --lib`, with this binary's arguments after `--`.

mod common;

fn main() -> std::process::ExitCode {
    common::nested_cargo_test(&["test", "-p", "kernel", "--lib"])
}
