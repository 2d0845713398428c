// The self-test's crate root: `arch::x86_64` is the drivers' room, `time` the time room.
pub mod arch;
pub mod time;
