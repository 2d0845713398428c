//! `--trace FILE`: the kernel's `TRACE` lines (kernel/src/arch/x86_64/trace.rs) turned into a
//! Chrome / Perfetto trace-event file (`{"traceEvents":[...]}`, opens in ui.perfetto.dev): one
//! track per CPU, named "CPU n"; interrupts, callbacks and idle as slices, the rest as instants.
//! Timestamps are in µs of the kernel's clock from the start of recording.

use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::fmt;

/// The kernel option that turns recording on (kernel/src/cmdline.rs).
pub const KERNEL_OPTION: &str = "trace";

/// Whether a serial line belongs to the trace (kept out of the echoed log).
pub fn is_trace_line(line: &str) -> bool {
    line.starts_with("TRACE ") || line.starts_with("TRACE-")
}

/// Why a log holds no usable trace.
#[derive(Debug, PartialEq, Eq)]
pub enum TraceError {
    /// The kernel was built without the cargo feature `trace` (it said so).
    KernelWithoutTrace,
    /// No `TRACE-BEGIN`: the kernel did not reach its exit, or was not asked to trace.
    NoTrace,
    /// `TRACE-BEGIN` without `TRACE-END`: the run ended while the trace was printed.
    Truncated,
    /// A line that does not read as the kernel writes it.
    BadLine(String),
    /// The kernel printed `printed` event lines (`TRACE-END`), the log holds `read`.
    LostLines { printed: u64, read: u64 },
}

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TraceError::KernelWithoutTrace => write!(
                f,
                "the kernel was built without its trace points: run `scripts/run --trace FILE` \
                 (or `cargo run --features trace -- --trace FILE`)"
            ),
            TraceError::NoTrace => {
                write!(f, "the serial log has no TRACE-BEGIN line (the kernel did not reach its exit?)")
            }
            TraceError::Truncated => write!(f, "the trace ends without TRACE-END (the run was cut short)"),
            TraceError::BadLine(l) => write!(f, "unreadable trace line: {l}"),
            TraceError::LostLines { printed, read } => {
                write!(f, "the kernel printed {printed} trace lines, the serial log holds {read}")
            }
        }
    }
}

/// What a converted trace holds, for the runner's one-line summary.
#[derive(Debug, PartialEq, Eq)]
pub struct Summary {
    /// Events kept per CPU (what the file shows) and overwritten per CPU (lost, oldest first).
    pub kept: Vec<u64>,
    pub overwritten: Vec<u64>,
    /// Ends of slices whose beginning was overwritten (dropped); slices left open inside one
    /// that ended (closed with it: a lost end, which a sound kernel never gives); slices still
    /// open when recording stopped (closed at the CPU's last event).
    pub unmatched_ends: u64,
    pub closed_inside: u64,
    pub closed_at_end: u64,
    pub ns_per_event: u64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let per_cpu: Vec<String> = self
            .kept
            .iter()
            .zip(&self.overwritten)
            .enumerate()
            .map(|(c, (k, o))| format!("CPU {c}: {k} ({o} overwritten)"))
            .collect();
        write!(
            f,
            "{} events, {}; {} ns per event",
            self.kept.iter().sum::<u64>(),
            per_cpu.join(", "),
            self.ns_per_event
        )
    }
}

// The kernel's event kinds (`trace::Kind`).
const ARM: u64 = 1;
const PROGRAM: u64 = 2;
const IRQ_ENTER: u64 = 3;
const IRQ_EXIT: u64 = 4;
const CALLBACK_BEGIN: u64 = 5;
const CALLBACK_END: u64 = 6;
const WAKE_IPI: u64 = 7;
const IDLE_BEGIN: u64 = 8;
const IDLE_END: u64 = 9;
const DEEP_IDLE_BEGIN: u64 = 10;
const DEEP_IDLE_END: u64 = 11;
const TICK_DEVICE: u64 = 12;
const TAKE_OUT: u64 = 13;
const BROADCAST_DEVICE: u64 = 14;
/// `trace::NONE` and `trace::BROADCAST_FLAG`.
const NONE: u64 = (1 << 56) - 1;
const BROADCAST_FLAG: u64 = 1 << 48;

/// The header's linear map from TSC to the kernel's clock, and the device names.
struct Header {
    cpus: usize,
    start: (u64, u64),
    end: (u64, u64),
    recorded: Vec<u64>,
    overwritten: Vec<u64>,
    devices: BTreeMap<u64, String>,
    ns_per_event: u64,
}

impl Header {
    fn parse(json: &str) -> Result<Header, TraceError> {
        let bad = || TraceError::BadLine(format!("TRACE-BEGIN {json}"));
        let v: Value = serde_json::from_str(json).map_err(|_| bad())?;
        let pair = |key: &str| -> Option<(u64, u64)> {
            let a = v.get(key)?.as_array()?;
            Some((a.first()?.as_u64()?, a.get(1)?.as_u64()?))
        };
        let list =
            |key: &str| -> Option<Vec<u64>> { v.get(key)?.as_array()?.iter().map(Value::as_u64).collect() };
        let devices = v
            .get("devices")
            .and_then(Value::as_object)
            .map(|m| {
                m.iter()
                    .filter_map(|(id, name)| Some((id.parse().ok()?, name.as_str()?.to_string())))
                    .collect()
            })
            .unwrap_or_default();
        Ok(Header {
            cpus: v.get("cpus").and_then(Value::as_u64).ok_or_else(bad)? as usize,
            start: pair("start").ok_or_else(bad)?,
            end: pair("end").ok_or_else(bad)?,
            recorded: list("recorded").ok_or_else(bad)?,
            overwritten: list("overwritten").ok_or_else(bad)?,
            devices,
            ns_per_event: v.get("ns_per_event").and_then(Value::as_u64).unwrap_or(0),
        })
    }

    /// The kernel's clock (ns) at TSC `tsc`.
    fn ns(&self, tsc: u64) -> i128 {
        let (t0, n0) = (i128::from(self.start.0), i128::from(self.start.1));
        let (t1, n1) = (i128::from(self.end.0), i128::from(self.end.1));
        if t1 <= t0 {
            return n0;
        }
        n0 + (i128::from(tsc) - t0) * (n1 - n0) / (t1 - t0)
    }

    /// Microseconds since recording started, at TSC `tsc`.
    fn us(&self, tsc: u64) -> f64 {
        (self.ns(tsc) - i128::from(self.start.1)) as f64 / 1000.0
    }

    /// A device id's name; `NONE` is a device not registered yet (an HPET comparator's
    /// self-test programs it before the registry gives it an id).
    fn device(&self, id: u64) -> String {
        match self.devices.get(&id) {
            Some(name) => name.clone(),
            None if id == NONE => "unregistered device".into(),
            None => format!("device {id}"),
        }
    }
}

/// One event as the kernel printed it.
#[derive(Debug, Clone, Copy)]
struct Event {
    cpu: usize,
    kind: u64,
    tsc: u64,
    small: u64,
    arg: u64,
}

fn parse_event(line: &str) -> Result<Event, TraceError> {
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| u64::from_str_radix(f, 16))
        .collect::<Result<_, _>>()
        .map_err(|_| TraceError::BadLine(line.to_string()))?;
    match fields[..] {
        [cpu, kind, tsc, small, arg] => Ok(Event { cpu: cpu as usize, kind, tsc, small, arg }),
        _ => Err(TraceError::BadLine(line.to_string())),
    }
}

/// Which slice an event begins or ends (ends match the innermost open slice of their kind).
#[derive(Debug, Clone, PartialEq)]
enum SliceKind {
    Irq(u64),
    Callback,
    Idle,
    DeepIdle,
}

/// One CPU's open slices while its events are read.
#[derive(Default)]
struct Track {
    open: Vec<(SliceKind, String)>,
    last_us: f64,
}

/// Reads the trace out of a serial log: the Chrome / Perfetto JSON and its summary.
pub fn convert(log: &str) -> Result<(Value, Summary), TraceError> {
    let mut header = None;
    let mut ended = None;
    let mut events = Vec::new();
    for line in log.lines() {
        if line.starts_with("TRACE-UNAVAILABLE") {
            return Err(TraceError::KernelWithoutTrace);
        } else if let Some(json) = line.strip_prefix("TRACE-BEGIN ") {
            header = Some(Header::parse(json)?);
        } else if let Some(count) = line.strip_prefix("TRACE-END") {
            ended = Some(count.trim().parse::<u64>().map_err(|_| TraceError::BadLine(line.to_string()))?);
        } else if line.starts_with("TRACE ") {
            events.push(parse_event(line)?);
        }
    }
    let header = header.ok_or(TraceError::NoTrace)?;
    match ended {
        None => return Err(TraceError::Truncated),
        Some(printed) if printed != events.len() as u64 => {
            return Err(TraceError::LostLines { printed, read: events.len() as u64 });
        }
        Some(_) => {}
    }
    let mut out =
        vec![json!({"ph": "M", "name": "process_name", "pid": 0, "args": {"name": "timer kernel"}})];
    for cpu in 0..header.cpus {
        out.push(json!({"ph": "M", "name": "thread_name", "pid": 0, "tid": cpu, "args": {"name": format!("CPU {cpu}")}}));
        out.push(json!({"ph": "M", "name": "thread_sort_index", "pid": 0, "tid": cpu, "args": {"sort_index": cpu}}));
    }
    let mut tracks: BTreeMap<usize, Track> = BTreeMap::new();
    let mut kept = vec![0u64; header.cpus];
    let (mut unmatched_ends, mut closed_inside, mut closed_at_end) = (0, 0, 0);
    for e in &events {
        if let Some(k) = kept.get_mut(e.cpu) {
            *k += 1;
        }
        let ts = header.us(e.tsc);
        let track = tracks.entry(e.cpu).or_default();
        track.last_us = ts;
        let instant = |name: String, args: Value| json!({"ph": "i", "s": "t", "name": name, "pid": 0, "tid": e.cpu, "ts": ts, "args": args});
        let begin = |track: &mut Track, kind: SliceKind, name: String, args: Value| {
            track.open.push((kind, name.clone()));
            json!({"ph": "B", "name": name, "pid": 0, "tid": e.cpu, "ts": ts, "args": args})
        };
        match e.kind {
            ARM if e.small == NONE => {
                out.push(instant("timer armed".into(), json!({"deadline_ns": e.arg})));
            }
            ARM => out.push(instant(
                format!("timer posted to CPU {}", e.small),
                json!({"deadline_ns": e.arg, "target_cpu": e.small}),
            )),
            PROGRAM => out.push(instant(
                format!("program {}", header.device(e.small)),
                json!({"device": header.device(e.small), "delta_ns": e.arg}),
            )),
            IRQ_ENTER => {
                let name = format!("irq {:#04x}", e.small);
                out.push(begin(track, SliceKind::Irq(e.small), name, json!({"vector": e.small})));
            }
            CALLBACK_BEGIN => {
                let lateness = header.ns(e.tsc) - i128::from(e.arg);
                let args = json!({"deadline_ns": e.arg, "lateness_ns": lateness as i64});
                out.push(begin(track, SliceKind::Callback, "callback".into(), args));
            }
            IDLE_BEGIN => out.push(begin(track, SliceKind::Idle, "idle".into(), json!({}))),
            DEEP_IDLE_BEGIN => out.push(begin(track, SliceKind::DeepIdle, "deep idle".into(), json!({}))),
            IRQ_EXIT | CALLBACK_END | IDLE_END | DEEP_IDLE_END => {
                let kind = match e.kind {
                    IRQ_EXIT => SliceKind::Irq(e.small),
                    CALLBACK_END => SliceKind::Callback,
                    IDLE_END => SliceKind::Idle,
                    _ => SliceKind::DeepIdle,
                };
                // Slices nest: close the innermost of this kind (and any left open inside it);
                // an end whose beginning was overwritten is dropped.
                match track.open.iter().rposition(|(k, _)| *k == kind) {
                    Some(at) => {
                        closed_inside += (track.open.len() - at - 1) as u64;
                        for (_, name) in track.open.drain(at..).rev() {
                            out.push(json!({"ph": "E", "name": name, "pid": 0, "tid": e.cpu, "ts": ts}));
                        }
                    }
                    None => unmatched_ends += 1,
                }
            }
            WAKE_IPI => {
                out.push(instant(format!("wake-up IPI to CPU {}", e.small), json!({"to_cpu": e.small})))
            }
            TICK_DEVICE => {
                let device = match e.arg {
                    NONE => "none".to_string(),
                    a if a & BROADCAST_FLAG != 0 => {
                        format!("broadcast {}", header.device(a & !BROADCAST_FLAG))
                    }
                    a => header.device(a),
                };
                out.push(instant(
                    format!("tick device {device} for CPU {}", e.small),
                    json!({"cpu": e.small, "device": device}),
                ));
            }
            TAKE_OUT => out.push(instant(
                format!("take-out {}", header.device(e.small)),
                json!({"device": header.device(e.small)}),
            )),
            BROADCAST_DEVICE => {
                let device = if e.small == NONE { "none".to_string() } else { header.device(e.small) };
                out.push(instant(format!("broadcast device {device}"), json!({"device": device})));
            }
            _ => return Err(TraceError::BadLine(format!("{e:?}: unknown kind"))),
        }
    }
    for (cpu, track) in &mut tracks {
        for (_, name) in track.open.drain(..).rev() {
            closed_at_end += 1;
            out.push(json!({"ph": "E", "name": name, "pid": 0, "tid": cpu, "ts": track.last_us}));
        }
    }
    let summary = Summary {
        kept,
        overwritten: header.overwritten.clone(),
        unmatched_ends,
        closed_inside,
        closed_at_end,
        ns_per_event: header.ns_per_event,
    };
    let file = json!({
        "traceEvents": out,
        "displayTimeUnit": "ns",
        "otherData": {
            "source": "timer kernel TRACE lines",
            "recorded": header.recorded,
            "overwritten": header.overwritten,
            "ns_per_event": header.ns_per_event,
            "unmatched_ends": unmatched_ends,
            "closed_inside": closed_inside,
            "closed_at_end": closed_at_end,
        },
    });
    Ok((file, summary))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two CPUs, TSC at 1 GHz from 1000 (clock ns 5000): CPU 0 idles, takes a timer interrupt
    /// and runs a callback 2.1 us late; CPU 1's ring starts inside an interrupt (its entry
    /// overwritten) and stops inside idle.
    const LOG: &str = "\
[0.1] INFO main: ordinary log line
TRACE-BEGIN {\"version\":1,\"cpus\":2,\"events_per_cpu\":16384,\"tsc_hz\":1000000000,\"start\":[1000,5000],\"end\":[101000,105000],\"ns_per_event\":30,\"recorded\":[10,20],\"overwritten\":[0,17],\"devices\":{\"0\":\"lapic0\",\"3\":\"hpet1\"}}
TRACE 0 c 3e8 0 3
TRACE 0 1 7d0 ffffffffffffff 1388
TRACE 0 2 7d0 3 bb8
TRACE 0 2 7d0 ffffffffffffff bb8
TRACE 0 8 bb8 0 0
TRACE 0 3 1194 31 0
TRACE 0 5 12c0 0 1a2c
TRACE 0 6 1324 0 0
TRACE 0 4 1388 31 0
TRACE 0 9 13ec 0 0
TRACE 1 4 1388 f1 0
TRACE 1 7 1400 0 0
TRACE 1 8 1500 0 0
TRACE-END 13
TIMER-REPORT {\"verdict\":\"ok\"}
";

    fn events_of(v: &Value, tid: u64) -> Vec<&Value> {
        v["traceEvents"].as_array().unwrap().iter().filter(|e| e["tid"] == tid && e["ph"] != "M").collect()
    }

    #[test]
    fn trace_lines_become_balanced_slices_per_cpu_in_microseconds() {
        let (v, summary) = convert(LOG).unwrap();
        let cpu0 = events_of(&v, 0);
        let phases: Vec<&str> = cpu0.iter().map(|e| e["ph"].as_str().unwrap()).collect();
        assert_eq!(phases, ["i", "i", "i", "i", "B", "B", "B", "E", "E", "E"]);
        let names: Vec<&str> = cpu0.iter().map(|e| e["name"].as_str().unwrap()).collect();
        assert_eq!(
            names,
            [
                "tick device hpet1 for CPU 0",
                "timer armed",
                "program hpet1",
                "program unregistered device",
                "idle",
                "irq 0x31",
                "callback",
                "callback",
                "irq 0x31",
                "idle"
            ]
        );
        // TSC 0x7d0 = 2000: 1 us after the start at TSC 1000.
        assert_eq!(cpu0[1]["ts"], 1.0);
        assert_eq!(cpu0[1]["args"]["deadline_ns"], 5000);
        assert_eq!(cpu0[2]["args"], json!({"device": "hpet1", "delta_ns": 3000}));
        // The callback at TSC 0x12c0 = 4800 is clock ns 8800; its deadline 0x1a2c = 6700.
        assert_eq!(cpu0[6]["args"]["lateness_ns"], 2100);
        assert_eq!(cpu0[5]["args"]["vector"], 0x31);
        // CPU 1: the exit whose entry was overwritten is dropped, the open idle closed.
        let cpu1 = events_of(&v, 1);
        let shape: Vec<(&str, &str)> =
            cpu1.iter().map(|e| (e["ph"].as_str().unwrap(), e["name"].as_str().unwrap())).collect();
        assert_eq!(shape, [("i", "wake-up IPI to CPU 0"), ("B", "idle"), ("E", "idle")]);
        assert_eq!(cpu1[2]["ts"], cpu1[1]["ts"]);
        let threads: Vec<&Value> =
            v["traceEvents"].as_array().unwrap().iter().filter(|e| e["name"] == "thread_name").collect();
        assert_eq!(threads.len(), 2);
        assert_eq!(threads[1]["args"]["name"], "CPU 1");
        assert_eq!(summary.kept, [10, 3]);
        assert_eq!(summary.overwritten, [0, 17]);
        assert_eq!((summary.unmatched_ends, summary.closed_inside, summary.closed_at_end), (1, 0, 1));
        assert_eq!(v["otherData"]["closed_at_end"], 1);
        // A lost interrupt exit: its slice is closed with the idle slice around it, and counted.
        let lost_exit = LOG.replace("TRACE 0 4 1388 31 0\n", "").replace("TRACE-END 13", "TRACE-END 12");
        assert_eq!(convert(&lost_exit).unwrap().1.closed_inside, 1);
        assert!(summary.to_string().contains("CPU 1: 3 (17 overwritten)"), "{summary}");
    }

    #[test]
    fn a_missing_or_unavailable_or_cut_trace_is_an_error() {
        assert_eq!(convert("TIMER-REPORT {}").unwrap_err(), TraceError::NoTrace);
        let without = "TRACE-UNAVAILABLE built without the cargo feature trace\n";
        assert_eq!(convert(without).unwrap_err(), TraceError::KernelWithoutTrace);
        assert!(TraceError::KernelWithoutTrace.to_string().contains("scripts/run --trace FILE"));
        let cut = LOG.replace("TRACE-END 13\n", "");
        assert_eq!(convert(&cut).unwrap_err(), TraceError::Truncated);
        let lost = LOG.replace("TRACE 1 8 1500 0 0\n", "");
        assert_eq!(convert(&lost).unwrap_err(), TraceError::LostLines { printed: 13, read: 12 });
        let bad = LOG.replace("TRACE 1 8 1500 0 0", "TRACE 1 8 zz");
        assert!(matches!(convert(&bad), Err(TraceError::BadLine(_))));
    }

    #[test]
    fn only_trace_lines_are_kept_out_of_the_echo() {
        assert!(is_trace_line("TRACE 0 1 2 3 4"));
        assert!(is_trace_line("TRACE-BEGIN {}"));
        assert!(!is_trace_line("TIMER-REPORT {}"));
        assert!(!is_trace_line("[0.1] INFO trace: recording"));
    }
}
