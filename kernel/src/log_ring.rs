//! A CPU's ring of log lines written in interrupt context, where waiting on the serial
//! console's lock (held by another CPU writing a line byte by byte) would stall the interrupt:
//! a line is formatted into a fixed slot at once (truncated to [`LINE_BYTES`]), and printed
//! later, outside interrupt context, by the same CPU. Nothing here allocates. When the ring is
//! full a new line is dropped and counted (the earlier lines usually say what started it).

use core::fmt::{self, Write};

/// Lines a ring holds before it drops.
pub const LINES: usize = 8;
/// Bytes of one line's text (`module: message`); longer text is cut and ends in `~`.
pub const LINE_BYTES: usize = 160;

/// One line as it was logged.
#[derive(Clone, Copy)]
pub struct Line {
    /// The clocksource when it was logged.
    pub at_ns: u64,
    /// None only in an empty slot: so the rings are all zeros and live in `.bss`, not in the
    /// kernel's image.
    level: Option<log::Level>,
    len: u8,
    text: [u8; LINE_BYTES],
}

impl Line {
    const EMPTY: Line = Line { at_ns: 0, level: None, len: 0, text: [0; LINE_BYTES] };

    /// Its level.
    pub fn level(&self) -> log::Level {
        self.level.unwrap_or(log::Level::Info)
    }

    /// Its text (`module: message`), cut at a character boundary if it was too long.
    pub fn text(&self) -> &str {
        let bytes = &self.text[..usize::from(self.len)];
        match core::str::from_utf8(bytes) {
            Ok(s) => s,
            // Cut inside a character: up to the last whole one.
            Err(e) => core::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or(""),
        }
    }
}

/// Writes into a line's slot, cutting what does not fit.
struct SlotWriter<'a> {
    text: &'a mut [u8; LINE_BYTES],
    len: usize,
    cut: bool,
}

impl Write for SlotWriter<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = LINE_BYTES - self.len;
        let n = s.len().min(room);
        self.text[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if n < s.len() {
            self.cut = true;
        }
        Ok(())
    }
}

/// A CPU's pending lines, oldest first.
pub struct LogRing {
    lines: [Line; LINES],
    /// Index of the oldest line, and how many are held.
    head: usize,
    held: usize,
    /// Lines dropped because the ring was full, since the last [`take_dropped`](Self::take_dropped).
    dropped: u64,
}

impl Default for LogRing {
    fn default() -> Self {
        Self::new()
    }
}

impl LogRing {
    pub const fn new() -> LogRing {
        LogRing { lines: [Line::EMPTY; LINES], head: 0, held: 0, dropped: 0 }
    }

    /// Formats `args` into the next free slot; false (and counted) when the ring is full.
    pub fn push(&mut self, at_ns: u64, level: log::Level, args: fmt::Arguments) -> bool {
        if self.held == LINES {
            self.dropped += 1;
            return false;
        }
        let slot = &mut self.lines[(self.head + self.held) % LINES];
        slot.at_ns = at_ns;
        slot.level = Some(level);
        let mut w = SlotWriter { text: &mut slot.text, len: 0, cut: false };
        let _ = w.write_fmt(args);
        if w.cut {
            // The cut mark replaces the last byte, after the last whole character before it.
            let keep = match core::str::from_utf8(&w.text[..LINE_BYTES - 1]) {
                Ok(_) => LINE_BYTES - 1,
                Err(e) => e.valid_up_to(),
            };
            w.text[keep] = b'~';
            w.len = keep + 1;
        }
        slot.len = w.len as u8;
        self.held += 1;
        true
    }

    /// The oldest line, taken out.
    pub fn pop(&mut self) -> Option<Line> {
        if self.held == 0 {
            return None;
        }
        let line = self.lines[self.head];
        self.head = (self.head + 1) % LINES;
        self.held -= 1;
        Some(line)
    }

    /// Lines held.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Whether nothing is waiting (lines or a count of dropped ones).
    pub fn is_empty(&self) -> bool {
        self.held == 0 && self.dropped == 0
    }

    /// Lines dropped since the last call.
    pub fn take_dropped(&mut self) -> u64 {
        core::mem::take(&mut self.dropped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use alloc::vec::Vec;

    fn drain(r: &mut LogRing) -> Vec<String> {
        core::iter::from_fn(|| r.pop()).map(|l| String::from(l.text())).collect()
    }

    #[test]
    fn lines_come_out_in_order_with_their_time_and_level() {
        let mut r = LogRing::new();
        assert!(r.push(5, log::Level::Warn, format_args!("hpet: {}", 1)));
        assert!(r.push(7, log::Level::Error, format_args!("tick: {}", 2)));
        let first = r.pop().unwrap();
        assert_eq!((first.at_ns, first.level(), first.text()), (5, log::Level::Warn, "hpet: 1"));
        assert_eq!(drain(&mut r), ["tick: 2"]);
        assert!(r.is_empty());
    }

    #[test]
    fn a_full_ring_drops_new_lines_and_counts_them() {
        let mut r = LogRing::new();
        for n in 0..LINES + 3 {
            r.push(0, log::Level::Warn, format_args!("line {n}"));
        }
        assert!(!r.is_empty());
        assert_eq!(r.take_dropped(), 3);
        assert_eq!(r.take_dropped(), 0);
        let lines = drain(&mut r);
        assert_eq!(lines.len(), LINES);
        assert_eq!(lines[0], "line 0", "the first lines are kept");
        // Room again after draining, and the ring wraps.
        assert!(r.push(0, log::Level::Warn, format_args!("again")));
        assert_eq!(drain(&mut r), ["again"]);
    }

    #[test]
    fn a_long_line_is_cut_and_marked_at_a_character_boundary() {
        let mut r = LogRing::new();
        let long = "é".repeat(LINE_BYTES);
        r.push(0, log::Level::Info, format_args!("{long}"));
        let line = r.pop().unwrap();
        assert!(line.text().len() <= LINE_BYTES);
        assert!(line.text().starts_with("éé") && line.text().ends_with('~'));
        r.push(0, log::Level::Info, format_args!("{}", "x".repeat(LINE_BYTES + 10)));
        let line = r.pop().unwrap();
        assert_eq!(line.text().len(), LINE_BYTES);
        assert!(line.text().ends_with('~'));
    }
}
