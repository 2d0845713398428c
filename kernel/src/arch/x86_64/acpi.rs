//! ACPI tables -> plain Rust structs (being written).
