//! `cargo test` at the root: the register crates' (`hpet-regs`, `ioapic-regs`) host unit tests
//! and doctests, run as `cargo test -p hpet-regs -p ioapic-regs` with this binary's arguments
//! after `--` (the crates are not default members: `cargo test` at the root acts on `boot`).

mod common;

fn main() -> std::process::ExitCode {
    common::nested_cargo_test(&["test", "-p", "hpet-regs", "-p", "ioapic-regs"])
}
