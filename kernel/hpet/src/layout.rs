//! Where the registers sit in the block: byte offsets from its base (spec 2.3.1, table 2).
//! Every register is 64 bits wide; a driver may read or write it as a whole.

/// General Capabilities and ID register (read-only; [`crate::Capabilities`]).
pub const GENERAL_CAPABILITIES_ID: usize = 0x000;
/// General Configuration register ([`crate::GeneralConfig`]).
pub const GENERAL_CONFIGURATION: usize = 0x010;
/// General Interrupt Status register: bit N is comparator N's level-triggered interrupt; write
/// 1 to clear it.
pub const GENERAL_INTERRUPT_STATUS: usize = 0x020;
/// Main Counter Value register (write only while the counter is halted, spec 2.3.7).
pub const MAIN_COUNTER_VALUE: usize = 0x0f0;

/// Offset of comparator 0's registers; the general registers fill the block up to it.
pub const COMPARATORS_OFFSET: usize = 0x100;
/// Distance between two comparators' registers.
pub const COMPARATOR_STRIDE: usize = 0x20;
/// Timer N Configuration and Capability register (Tn_CONF_CAP), from the comparator's offset
/// ([`crate::ComparatorConfig`]).
pub const TIMER_CONFIG_CAPABILITY: usize = 0x00;
/// Timer N Comparator Value register (Tn_COMPARATOR_VAL), from the comparator's offset.
pub const TIMER_COMPARATOR_VALUE: usize = 0x08;
/// Timer N FSB Interrupt Route register (Tn_FSB_INT_ROUTE), from the comparator's offset
/// ([`crate::fsb_route`]).
pub const TIMER_FSB_INTERRUPT_ROUTE: usize = 0x10;

/// NUM_TIM_CAP is 5 bits: at most 32 comparators per block.
pub const MAX_COMPARATORS: usize = 32;
/// The register space of a 32-comparator block, rounded up to a 4 KiB page: what a driver maps.
pub const REGISTER_SPACE: usize = 0x1000;

/// Offset of comparator `n`'s registers (`n` below [`crate::Capabilities::comparators`]).
#[inline]
pub const fn comparator_offset(n: usize) -> usize {
    COMPARATORS_OFFSET + n * COMPARATOR_STRIDE
}

const _: () = assert!(comparator_offset(MAX_COMPARATORS) <= REGISTER_SPACE);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_match_the_specification_table() {
        assert_eq!(comparator_offset(0), 0x100);
        assert_eq!(comparator_offset(1) + TIMER_COMPARATOR_VALUE, 0x128);
        assert_eq!(comparator_offset(2) + TIMER_FSB_INTERRUPT_ROUTE, 0x150);
        assert_eq!(comparator_offset(MAX_COMPARATORS - 1) + TIMER_FSB_INTERRUPT_ROUTE, 0x4f0);
    }
}
