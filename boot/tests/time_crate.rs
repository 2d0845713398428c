//! `cargo test` at the root: the time crate's (`kernel-time`'s) host unit and property tests
//! and its doctests, run as `cargo test -p kernel-time` with this binary's arguments after `--`
//! (the crate is not a default member: `cargo test` at the root acts on `boot`).

mod common;

fn main() -> std::process::ExitCode {
    common::nested_cargo_test(&["test", "-p", "kernel-time"])
}
