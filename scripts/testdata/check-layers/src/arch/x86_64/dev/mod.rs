// A driver: each line marked below names the time room in one of the ways a path can.
use crate::time; // VIOLATION
use crate::{ // VIOLATION (a leaf is reported at its `use`)
    other,
    time::now_ns,
};
use super::super::super::time as clock; // VIOLATION
use super::sibling::{self, helper};
// crate::time::now_ns() in a comment is no import
pub fn read() -> u64 {
    let _ = "crate::time::now_ns";
    let _ = clock::now_ns(); // VIOLATION
    let _ = crate::time::now_ns(); // VIOLATION
    sibling::x() + helper()
}
