//! Kernel options arrive through fw_cfg; unknown and malformed ones are reported, defaults kept.
#![no_std]
#![no_main]

use kernel_tests::kernel::Kernel;
use kernel_tests::kernel::cmdline::OptionProblem;

kernel_tests::qemu_test!(
    variants: b"
        none:
        debug: --cmdline 'loglevel=debug bogus=1 flag' --expect-log \"unknown kernel option 'bogus=1'\" --expect-log 'command line: \"loglevel=debug bogus=1 flag\"'
        malformed: --cmdline 'loglevel=loud' --expect-log 'kernel option loglevel=loud: expected'
    ",
    tests: [options_match_the_command_line],
);

fn options_match_the_command_line(k: &Kernel) {
    match k.cmdline.as_str() {
        "" => {
            assert_eq!(k.options, Default::default());
            assert!(k.option_problems.is_empty());
        }
        "loglevel=debug bogus=1 flag" => {
            assert_eq!(k.options.loglevel, log::LevelFilter::Debug);
            assert_eq!(
                k.option_problems,
                [OptionProblem::Unknown("bogus=1".into()), OptionProblem::Unknown("flag".into())]
            );
        }
        "loglevel=loud" => {
            assert_eq!(k.options.loglevel, log::LevelFilter::Info);
            assert_eq!(k.option_problems.len(), 1);
        }
        other => panic!("unexpected command line {other:?}"),
    }
}
