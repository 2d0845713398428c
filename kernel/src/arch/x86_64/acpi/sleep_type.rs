//! A sleep state's SLP_TYP values from the DSDT's AML, by a bounded parse of one object:
//! `Name (_S3_, Package () { SLP_TYPa, SLP_TYPb, ... })` (ACPI 6.5 section 7.4.2). Only that
//! shape is read (what QEMU's and most firmware's DSDTs hold); a `_S3_` that is a method, or a
//! package whose first elements are not integer constants, is reported, never evaluated.
//! Every read is bounded by the table's bytes: any input is a value or a problem, never a panic.

use core::fmt;

/// AML opcodes (ACPI 6.5 section 20.2).
const NAME_OP: u8 = 0x08;
const PACKAGE_OP: u8 = 0x12;
const ROOT_CHAR: u8 = b'\\';
const ZERO_OP: u8 = 0x00;
const ONE_OP: u8 = 0x01;
const ONES_OP: u8 = 0xff;
const BYTE_PREFIX: u8 = 0x0a;
const WORD_PREFIX: u8 = 0x0b;
const DWORD_PREFIX: u8 = 0x0c;
const QWORD_PREFIX: u8 = 0x0e;
/// SLP_TYP is a 3-bit field of PM1_CNT (bits 10-12).
const SLP_TYP_MAX: u64 = 7;

/// The values to write into PM1a_CNT.SLP_TYP and PM1b_CNT.SLP_TYP to enter the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SleepType {
    pub a: u8,
    pub b: u8,
}

/// Why the DSDT gave no SLP_TYP for the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SleepTypeProblem {
    /// No object of that name: the firmware does not offer the state (QEMU with S3 disabled).
    Absent { name: &'static str },
    /// The name is there but not as `Name (.., Package ..)` (a method, say): not evaluated.
    NotAPackage { name: &'static str },
    /// The package runs past the table, or an element is not an integer constant.
    Malformed { name: &'static str, why: &'static str },
    /// An element does not fit the 3-bit SLP_TYP field.
    OutOfRange { name: &'static str, value: u64 },
    /// The DSDT itself was not usable (none named, or rejected).
    Dsdt(super::AcpiProblem),
}

impl fmt::Display for SleepTypeProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SleepTypeProblem::Absent { name } => {
                write!(f, "the DSDT has no \\{name}: the firmware offers no such sleep state")
            }
            SleepTypeProblem::NotAPackage { name } => {
                write!(f, "the DSDT's \\{name} is not a Name(.., Package) (a method is not evaluated here)")
            }
            SleepTypeProblem::Malformed { name, why } => {
                write!(f, "the DSDT's \\{name} package is malformed: {why}")
            }
            SleepTypeProblem::OutOfRange { name, value } => {
                write!(f, "the DSDT's \\{name} gives SLP_TYP {value}, beyond the 3-bit field")
            }
            SleepTypeProblem::Dsdt(e) => write!(f, "no usable DSDT: {e}"),
        }
    }
}

/// Finds `Name (NAME, Package () { a, b, .. })` in `aml` (a DSDT or SSDT body, after its
/// header) and returns `a` and `b` (`b` = `a` when the package has one element). `name` is
/// the four-character name, e.g. `"_S3_"`.
pub fn find(aml: &[u8], name: &'static str) -> Result<SleepType, SleepTypeProblem> {
    let key = name.as_bytes();
    let mut seen_other = false;
    let mut at = 0;
    while let Some(i) = aml.get(at..).and_then(|rest| rest.windows(key.len()).position(|w| w == key)) {
        let start = at + i;
        at = start + 1;
        // NameOp, then the name (possibly rooted), then PackageOp.
        let before = |n: usize| start.checked_sub(n).map(|j| aml[j]);
        let named =
            before(1) == Some(NAME_OP) || (before(1) == Some(ROOT_CHAR) && before(2) == Some(NAME_OP));
        if !named {
            seen_other = true;
            continue;
        }
        let after = start + key.len();
        if aml.get(after) != Some(&PACKAGE_OP) {
            seen_other = true;
            continue;
        }
        return package(&aml[after + 1..], name);
    }
    Err(if seen_other { SleepTypeProblem::NotAPackage { name } } else { SleepTypeProblem::Absent { name } })
}

/// The package after its PackageOp: PkgLength, NumElements, then the elements.
fn package(bytes: &[u8], name: &'static str) -> Result<SleepType, SleepTypeProblem> {
    let malformed = |why| SleepTypeProblem::Malformed { name, why };
    let (length, length_bytes) = pkg_length(bytes).ok_or(malformed("its PkgLength runs past the table"))?;
    // PkgLength counts itself and what follows.
    let body = bytes
        .get(length_bytes..length)
        .filter(|_| length >= length_bytes)
        .ok_or(malformed("its PkgLength runs past the table"))?;
    let (&count, mut rest) = body.split_first().ok_or(malformed("no element count"))?;
    if count == 0 {
        return Err(malformed("no elements"));
    }
    let mut values = [0u64; 2];
    for slot in values.iter_mut().take(usize::from(count.min(2))) {
        let (value, used) = integer(rest).ok_or(malformed("an element that is not an integer constant"))?;
        if value > SLP_TYP_MAX {
            return Err(SleepTypeProblem::OutOfRange { name, value });
        }
        *slot = value;
        rest = &rest[used..];
    }
    if count == 1 {
        values[1] = values[0];
    }
    Ok(SleepType { a: values[0] as u8, b: values[1] as u8 })
}

/// PkgLength (ACPI 6.5 section 20.2.4): the length and how many bytes encode it.
fn pkg_length(bytes: &[u8]) -> Option<(usize, usize)> {
    let lead = *bytes.first()?;
    let follow = usize::from(lead >> 6);
    if follow == 0 {
        return Some((usize::from(lead & 0x3f), 1));
    }
    let mut length = usize::from(lead & 0x0f);
    for k in 0..follow {
        length |= usize::from(*bytes.get(1 + k)?) << (4 + 8 * k);
    }
    Some((length, 1 + follow))
}

/// An integer constant (ZeroOp, OneOp, OnesOp, Byte/Word/DWord/QWordConst): its value and size.
fn integer(bytes: &[u8]) -> Option<(u64, usize)> {
    let le = |n: usize| -> Option<(u64, usize)> {
        let b = bytes.get(1..1 + n)?;
        Some((b.iter().rev().fold(0u64, |v, &x| v << 8 | u64::from(x)), 1 + n))
    };
    match *bytes.first()? {
        ZERO_OP => Some((0, 1)),
        ONE_OP => Some((1, 1)),
        ONES_OP => Some((u64::MAX, 1)),
        BYTE_PREFIX => le(1),
        WORD_PREFIX => le(2),
        DWORD_PREFIX => le(4),
        QWORD_PREFIX => le(8),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU's `Name (_S3, Package (0x04) { One, One, Zero, Zero })` inside `Scope (\)`.
    const QEMU_S3: &[u8] = &[
        0x10, 0x0e, b'\\', // Scope (\) ...
        NAME_OP, b'_', b'S', b'3', b'_', PACKAGE_OP, 0x06, 0x04, ONE_OP, ONE_OP, ZERO_OP, ZERO_OP,
    ];

    #[test]
    fn qemu_s3_package_gives_slp_typ_1() {
        assert_eq!(find(QEMU_S3, "_S3_"), Ok(SleepType { a: 1, b: 1 }));
    }

    #[test]
    fn byte_constants_and_a_rooted_name_are_read() {
        let aml =
            [NAME_OP, b'\\', b'_', b'S', b'3', b'_', PACKAGE_OP, 0x06, 0x02, BYTE_PREFIX, 5, BYTE_PREFIX, 3];
        assert_eq!(find(&aml, "_S3_"), Ok(SleepType { a: 5, b: 3 }));
    }

    #[test]
    fn a_one_element_package_gives_the_same_type_to_both_blocks() {
        let aml = [NAME_OP, b'_', b'S', b'3', b'_', PACKAGE_OP, 0x04, 0x01, BYTE_PREFIX, 5];
        assert_eq!(find(&aml, "_S3_"), Ok(SleepType { a: 5, b: 5 }));
    }

    #[test]
    fn a_two_byte_pkg_length_is_decoded() {
        let mut aml =
            alloc::vec![NAME_OP, b'_', b'S', b'3', b'_', PACKAGE_OP, 0x40 | 0x04, 0x01, 0x02, ONE_OP, ONE_OP];
        aml.resize(aml.len() + 0x14 - 4, ZERO_OP);
        assert_eq!(pkg_length(&aml[6..]), Some((0x14, 2)));
        assert_eq!(find(&aml, "_S3_"), Ok(SleepType { a: 1, b: 1 }));
    }

    #[test]
    fn without_s3_the_state_is_absent() {
        let s4: Vec<u8> = QEMU_S3.iter().map(|&b| if b == b'3' { b'4' } else { b }).collect();
        assert_eq!(find(&s4, "_S3_"), Err(SleepTypeProblem::Absent { name: "_S3_" }));
        assert_eq!(find(&[], "_S3_"), Err(SleepTypeProblem::Absent { name: "_S3_" }));
    }

    #[test]
    fn a_method_named_s3_is_not_evaluated() {
        let aml = [0x14, 0x08, b'_', b'S', b'3', b'_', 0x00, 0xa4, ONE_OP];
        assert_eq!(find(&aml, "_S3_"), Err(SleepTypeProblem::NotAPackage { name: "_S3_" }));
    }

    #[test]
    fn truncated_or_odd_packages_are_malformed_never_a_panic() {
        for n in 0..QEMU_S3.len() - 1 {
            let r = find(&QEMU_S3[..n], "_S3_");
            assert!(
                matches!(
                    r,
                    Err(SleepTypeProblem::Malformed { .. }
                        | SleepTypeProblem::Absent { .. }
                        | SleepTypeProblem::NotAPackage { .. })
                ),
                "{n}: {r:?}"
            );
        }
        let string = [NAME_OP, b'_', b'S', b'3', b'_', PACKAGE_OP, 0x05, 0x02, 0x0d, b'x', 0x00];
        assert!(matches!(find(&string, "_S3_"), Err(SleepTypeProblem::Malformed { .. })));
        let empty = [NAME_OP, b'_', b'S', b'3', b'_', PACKAGE_OP, 0x02, 0x00];
        assert!(matches!(find(&empty, "_S3_"), Err(SleepTypeProblem::Malformed { .. })));
    }

    #[test]
    fn a_type_beyond_three_bits_is_refused() {
        let aml = [NAME_OP, b'_', b'S', b'3', b'_', PACKAGE_OP, 0x04, 0x01, BYTE_PREFIX, 9];
        assert_eq!(find(&aml, "_S3_"), Err(SleepTypeProblem::OutOfRange { name: "_S3_", value: 9 }));
        let ones = [NAME_OP, b'_', b'S', b'3', b'_', PACKAGE_OP, 0x03, 0x01, ONES_OP];
        assert!(matches!(find(&ones, "_S3_"), Err(SleepTypeProblem::OutOfRange { .. })));
    }
}
