//! Inputs from fuzzing (`fuzz/`, see fuzz/README.md), kept as a stable test.
//!
//! Every file under `tests/fuzz_regressions/<target>/` goes through the same checks as the fuzz
//! target of that name: the checks are `fuzz/src/lib.rs` itself, compiled in here, so this test
//! and the fuzzer cannot drift apart. A check panics when a decoder panics, when what decodes
//! does not round-trip, or when an outcome does not match the bytes (see that file).
//!
//! The files are the crashes the fuzzer found (`crash-*`) and hand-made nasty inputs: 4 GiB
//! frame headers, truncated frames, bincode length prefixes claiming 2^60 elements, invalid enum
//! tags, non-UTF-8 strings, malformed tokens and CSRs. A new crash goes in as a new file.
//!
//! A counting allocator also checks that no input makes a decoder allocate more than the frame
//! limit at once, whatever lengths it claims.

#[allow(dead_code)]
#[path = "../../fuzz/src/lib.rs"]
mod checks;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use tandem_common::codec::{self, CodecError, DEFAULT_MAX_FRAME};
use tandem_common::hardware::{memory_class_gib, HardwareReport};

/// The system allocator, noting the largest single allocation made on each thread.
struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns the largest single allocation it made on this thread.
fn largest_allocation(f: impl FnOnce()) -> usize {
    LARGEST.with(|l| l.set(0));
    f();
    LARGEST.with(|l| l.get())
}

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions")
}

fn check_for(target: &str) -> fn(&[u8]) {
    match target {
        "frame_decoder" => checks::frames,
        "agent_msg" => checks::agent_msg,
        "coord_msg" => checks::coord_msg,
        "datagrams" => checks::datagrams,
        "join_request" => checks::join_input,
        other => panic!("tests/fuzz_regressions/{other}: no fuzz target of that name"),
    }
}

#[test]
fn every_regression_input_passes_its_targets_checks() {
    let mut failed = Vec::new();
    let mut count = 0;
    let mut dirs: Vec<_> = std::fs::read_dir(corpus())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    for dir in dirs {
        let target = dir.file_name().unwrap().to_str().unwrap().to_string();
        let check = check_for(&target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for file in files {
            let data = std::fs::read(&file).unwrap();
            let name = format!("{target}/{}", file.file_name().unwrap().to_string_lossy());
            count += 1;
            let outcome = std::panic::catch_unwind(|| largest_allocation(|| check(&data)));
            match outcome {
                Err(_) => failed.push(format!("{name}: panicked (see above)")),
                Ok(largest) if largest > DEFAULT_MAX_FRAME => failed.push(format!(
                    "{name}: allocated {largest} bytes at once, over the {DEFAULT_MAX_FRAME}-byte frame limit"
                )),
                Ok(_) => {}
            }
        }
    }
    assert!(count >= 40, "only {count} regression inputs found");
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}

/// Variant 6 (`Logs`), request 0, then a stdout list claiming 2^60 lines: refused, and without
/// reserving room for them (serde caps what it reserves from a claimed length at 1 MiB).
#[test]
fn a_claimed_2_pow_60_elements_are_not_allocated() {
    let mut body = vec![6u8, 0, 0xFD];
    body.extend_from_slice(&(1u64 << 60).to_le_bytes());
    let mut result = None;
    let largest = largest_allocation(|| {
        result = Some(codec::decode::<tandem_common::proto::AgentMsg>(&body));
    });
    assert!(matches!(result, Some(Err(CodecError::Decode(_)))));
    assert!(largest <= 1 << 20, "allocated {largest} bytes");
}

/// A header announcing a frame at the limit, then nothing: the body is not allocated at the
/// announced size before its bytes arrive.
#[test]
fn a_frame_header_alone_does_not_allocate_its_length() {
    let mut wire = (DEFAULT_MAX_FRAME as u32).to_be_bytes().to_vec();
    wire.extend_from_slice(b"abc");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let mut result = None;
    let largest = largest_allocation(|| {
        result = Some(rt.block_on(codec::read_frame(&mut &wire[..], DEFAULT_MAX_FRAME)));
    });
    assert!(matches!(result, Some(Err(CodecError::Truncated))));
    assert!(largest < DEFAULT_MAX_FRAME / 4, "allocated {largest} bytes");
}

/// The coordinator stores reports as JSON, where NaN and infinity become `null`: they must read
/// back (as NaN), or the node record, and with it the whole store, no longer loads.
#[test]
fn non_finite_readings_survive_the_json_store() {
    let mut r = HardwareReport::default();
    r.cpu.usage_percent = f32::NAN;
    r.os.load_avg.one = f64::NAN;
    r.os.load_avg.five = f64::INFINITY;
    r.os.load_avg.fifteen = 1.5;
    let json = serde_json::to_string(&r).unwrap();
    let back: HardwareReport = serde_json::from_str(&json).unwrap();
    assert!(back.cpu.usage_percent.is_nan());
    assert!(back.os.load_avg.one.is_nan());
    assert!(back.os.load_avg.five.is_nan());
    assert_eq!(back.os.load_avg.fifteen, 1.5);
    // The wire format still carries the exact values.
    let wire: HardwareReport = codec::decode(&codec::encode(&r).unwrap()).unwrap();
    assert_eq!(wire.os.load_avg.five, f64::INFINITY);
    // A number still reads as a number, and anything else is still refused.
    assert!(serde_json::from_str::<HardwareReport>(&json.replace("1.5", "\"x\"")).is_err());
}

/// The largest memory sizes an agent can report have a class instead of overflowing.
#[test]
fn memory_class_of_the_largest_sizes() {
    assert_eq!(memory_class_gib(u64::MAX), 1 << 34);
    assert_eq!(memory_class_gib(1 << 63), 1 << 33);
    assert_eq!(memory_class_gib((1 << 63) + 1), (1 << 33) + (1 << 29));
    assert_eq!(memory_class_gib(135_148_564_480), 128);
}
