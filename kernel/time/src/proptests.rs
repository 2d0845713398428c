//! Property tests of the time layer's conversions, over their whole input range: ns -> device
//! ticks (`NsToTicks`, alone and as a device builds and uses it), ticks -> ns (`ticks_to_ns`),
//! and counter ticks -> ns (`MultShift`). Each property is what the conversion's documentation
//! promises; exact values are computed in 128 bits for comparison.

use crate::clockevents::fake::FakeDriver;
use crate::clockevents::{
    ClockEventDevice, CpuSet, DeviceSpec, Features, MAX_PROGRAMMED_DELTA_NS, NsToTicks, State, ticks_to_ns,
};
use crate::clocksource::{MultShift, NS_PER_S};
use proptest::prelude::*;

/// Device and counter frequencies: 1 Hz to 10 GHz.
const MAX_HZ: u64 = 10_000_000_000;

/// A u64 spread over every magnitude (uniform in its number of bits, then in its value), so
/// small, mid-range and near-`u64::MAX` values all come up.
fn wide_u64() -> impl Strategy<Value = u64> {
    (0u32..64, any::<u64>()).prop_map(|(shift, v)| v >> shift)
}

/// A value in `0..=max`: `max` itself, its half, or anything below.
fn up_to(max: u64) -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(max),
        Just(max / 2),
        any::<u64>().prop_map(move |v| v.checked_rem(max.wrapping_add(1)).unwrap_or(v))
    ]
}

fn frequency() -> impl Strategy<Value = u64> {
    prop_oneof![
        1u64..=MAX_HZ,
        // The frequencies of this kernel's devices: 32 kHz, the PIT, ACPI PM, HPETs, LAPICs, TSCs.
        prop::sample::select(vec![
            32_768u64,
            1_193_182,
            3_579_545,
            14_318_180,
            19_200_000,
            24_000_000,
            100_000_000,
            1_000_000_000,
            2_999_999_999,
            3_000_000_000,
            4_000_000_000,
        ]),
    ]
}

/// `(frequency, max_ns, ns <= max_ns)`.
fn conversion_inputs() -> impl Strategy<Value = (u64, u64, u64)> {
    (frequency(), wide_u64()).prop_flat_map(|(hz, max_ns)| (Just(hz), Just(max_ns), up_to(max_ns)))
}

/// `ceil(ns * hz / 10^9)`: the fewest ticks that last at least `ns`.
fn exact_ticks_up(ns: u64, hz: u64) -> u128 {
    (u128::from(ns) * u128::from(hz)).div_ceil(u128::from(NS_PER_S))
}

proptest! {
    /// The shift is chosen so that `max_ns * mult` fits in 64 bits; where not even shift 0
    /// does (above 1 GHz, near `u64::MAX` ns) the usable maximum is lowered instead. No delta
    /// up to the usable maximum overflows, and the maximum is only ever lowered that far.
    #[test]
    fn ns_to_ticks_never_overflows_up_to_its_maximum((hz, max_ns, ns) in conversion_inputs()) {
        let c = NsToTicks::new(hz, max_ns);
        prop_assert!(c.max_ns <= max_ns);
        prop_assert!(
            c.mult.checked_mul(c.max_ns.max(1)).is_some(),
            "{hz} Hz, max {max_ns} ns: mult {} shift {} overflows", c.mult, c.shift
        );
        prop_assert!(c.max_ns == max_ns || c.shift == 0, "the maximum was lowered though a shift was left");
        c.ticks(ns.min(c.max_ns)); // panics on overflow
    }

    /// Never early: at least `ceil(ns * hz / 10^9)` ticks, and late by at most the rounded-up
    /// mult's error, `ns >> shift` ticks.
    #[test]
    fn ns_to_ticks_rounds_up_within_its_error_bound((hz, max_ns, ns) in conversion_inputs()) {
        let c = NsToTicks::new(hz, max_ns);
        prop_assume!(c.mult.checked_mul(ns).is_some()); // the overflow is the property above
        let got = u128::from(c.ticks(ns));
        let exact = exact_ticks_up(ns, hz);
        prop_assert!(got >= exact, "{hz} Hz: {ns} ns -> {got} ticks, below {exact}");
        prop_assert!(
            got <= exact + u128::from(ns >> c.shift),
            "{hz} Hz: {ns} ns -> {got} ticks, more than {exact} + {} (shift {})", ns >> c.shift, c.shift
        );
    }

    /// Whatever maximum delta a driver registers, a usable device is programmed at most
    /// `MAX_PROGRAMMED_DELTA_NS` ahead, converts with the largest shift (up to 32) that this
    /// bounded range allows, and programs every delta never early and late by at most the
    /// conversion's error, clamped to the hardware's limits or not.
    #[test]
    fn device_conversion_is_as_precise_as_its_bounded_range_allows(
        hz in frequency(),
        max_delta_ticks in wide_u64(),
        deadline_ns in wide_u64(),
    ) {
        let spec = DeviceSpec {
            name: "x".into(),
            features: Features::ONESHOT,
            rating: 1,
            cpus: CpuSet::single(0),
            frequency_hz: hz,
            min_delta_ticks: 1,
            // At least 1 ms: a shorter maximum is refused.
            max_delta_ticks: max_delta_ticks.max(hz.div_ceil(1_000)),
        };
        prop_assume!(spec.problem().is_none()); // below 100 Hz: a tick is over 10 ms
        let driver = FakeDriver::leak();
        let d = ClockEventDevice::new(spec, driver);
        let c = d.conversion();
        prop_assert!(d.max_delta_ns <= MAX_PROGRAMMED_DELTA_NS, "max delta {} ns", d.max_delta_ns);
        prop_assert!((d.max_delta_ns..=MAX_PROGRAMMED_DELTA_NS).contains(&c.max_ns), "converts up to {} ns", c.max_ns);
        if c.shift < 32 {
            let finer_mult = (u128::from(hz) << (c.shift + 1)).div_ceil(u128::from(NS_PER_S));
            prop_assert!(
                finer_mult * u128::from(c.max_ns) > u128::from(u64::MAX),
                "{hz} Hz up to {} ns: shift {} though {} fits", c.max_ns, c.shift, c.shift + 1
            );
        }
        d.switch_state(State::Shutdown, 0).unwrap();
        d.switch_state(State::Oneshot, 0).unwrap();
        let delta = deadline_ns.clamp(d.min_delta_ns(), d.max_delta_ns);
        prop_assert_eq!(d.program(deadline_ns, 0), Ok(delta));
        let ticks = u128::from(driver.last_next().unwrap());
        let exact = exact_ticks_up(delta, hz);
        prop_assert!(ticks >= exact, "{hz} Hz: {delta} ns programmed as {ticks} ticks, below {exact}");
        prop_assert!(
            ticks <= exact + u128::from(delta >> c.shift),
            "{hz} Hz: {delta} ns programmed as {ticks} ticks, {exact} exact (shift {})", c.shift
        );
    }

    /// A tick count turned into ns rounded up and back into ticks never comes out shorter: the
    /// round trip `clockevents` does for its min/max deltas.
    #[test]
    fn ticks_to_ns_up_and_back_is_never_shorter(hz in frequency(), ticks in wide_u64()) {
        let ns = ticks_to_ns(ticks, hz, true);
        prop_assume!(ns < u64::MAX); // saturated: no ns value represents it
        let c = NsToTicks::new(hz, ns);
        prop_assume!(c.mult.checked_mul(ns).is_some()); // the overflow is the property above
        prop_assert!(c.ticks(ns) >= ticks, "{hz} Hz: {ticks} ticks -> {ns} ns -> {} ticks", c.ticks(ns));
    }

    /// `ticks_to_ns` rounds in the direction asked, to the nearest ns on that side, or
    /// saturates at `u64::MAX`.
    #[test]
    fn ticks_to_ns_rounds_in_the_direction_asked(hz in frequency(), ticks in wide_u64()) {
        let exact_num = u128::from(ticks) * u128::from(NS_PER_S); // exact ns = exact_num / hz
        let hz128 = u128::from(hz);
        let down = ticks_to_ns(ticks, hz, false);
        let up = ticks_to_ns(ticks, hz, true);
        if exact_num / hz128 >= u128::from(u64::MAX) {
            prop_assert_eq!(up, u64::MAX, "saturates instead of wrapping");
        } else {
            prop_assert!(u128::from(down) * hz128 <= exact_num, "down is not below the exact value");
            prop_assert!((u128::from(down) + 1) * hz128 > exact_num, "down is not the nearest below");
            prop_assert!(u128::from(up) * hz128 >= exact_num, "up is not above the exact value");
            prop_assert!(up == 0 || (u128::from(up) - 1) * hz128 < exact_num, "up is not the nearest above");
            prop_assert!(up - down <= 1);
        }
    }

    /// `MultShift` never rounds up (a converted time is never later than the true one), stays
    /// within one part in 2^32 (+1 ns of truncation), saturates rather than wraps, and is
    /// monotonic.
    #[test]
    fn mult_shift_never_rounds_up_and_stays_within_its_error(
        hz in frequency(),
        ticks in wide_u64(),
        more in wide_u64(),
    ) {
        let c = MultShift::ticks_to_ns(hz);
        let exact = u128::from(ticks) * u128::from(NS_PER_S) / u128::from(hz);
        let got = u128::from(c.apply(ticks));
        if exact > u128::from(u64::MAX) {
            prop_assert_eq!(got, u128::from(u64::MAX), "{} Hz, {} ticks must saturate", hz, ticks);
        } else {
            prop_assert!(got <= exact, "{hz} Hz, {ticks} ticks: {got} ns > exact {exact}");
            prop_assert!(exact - got <= exact / (1 << 32) + 1, "{hz} Hz, {ticks} ticks: {got} ns vs {exact}");
        }
        prop_assert!(c.apply(ticks.saturating_add(more)) >= c.apply(ticks), "not monotonic");
    }

    /// The HPET's form, a tick length of `period_fs` femtoseconds (up to the specification's
    /// 100 ns): same promises.
    #[test]
    fn mult_shift_from_a_period_never_rounds_up(period_fs in 1u64..=100_000_000, ticks in wide_u64()) {
        let c = MultShift::ns_per_tick(period_fs, 1_000_000);
        let exact = u128::from(ticks) * u128::from(period_fs) / 1_000_000;
        let got = u128::from(c.apply(ticks));
        if exact > u128::from(u64::MAX) {
            prop_assert_eq!(got, u128::from(u64::MAX));
        } else {
            prop_assert!(got <= exact, "{period_fs} fs, {ticks} ticks: {got} ns > exact {exact}");
            prop_assert!(exact - got <= exact / (1 << 32) + 1, "{period_fs} fs, {ticks} ticks: {got} vs {exact}");
        }
    }
}
