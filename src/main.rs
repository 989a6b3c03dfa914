//! The `switchyard` binary: parse the command line, hand it to the library.

use clap::Parser;

/// mimalloc instead of glibc malloc: pingora allocates per request (boxed futures, header maps),
/// and the load comparison measured about 15 % less CPU per request with it (benches/RESULTS.md).
/// Cargo.toml says why it is mimalloc 2.x.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    return_freed_memory_at_once();
    switchyard::cli::run(switchyard::cli::Cli::parse())
}

/// Makes mimalloc give freed pages back to the OS as soon as they are free, rather than after a
/// delay (10 ms) that only passes when the thread that freed them allocates again: an idle
/// worker thread never does, so after 2 000 keep-alive clients left, their ~50 MB stayed resident
/// for good. `MIMALLOC_PURGE_DELAY` in the environment still wins.
///
/// This is the binary's only `unsafe` (the library forbids it): mimalloc exposes its options
/// through C functions only.
fn return_freed_memory_at_once() {
    /// `mi_option_purge_delay` in mimalloc 2.x's `include/mimalloc.h` (Cargo.toml pins 2.x).
    const MI_OPTION_PURGE_DELAY: std::ffi::c_int = 15;
    extern "C" {
        fn mi_option_set(option: std::ffi::c_int, value: std::ffi::c_long);
    }
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: `mi_option_set` stores an integer in mimalloc's option table, which mimalloc
        // reads with atomic loads; any thread may call it at any time, and 0 is a valid value
        // ("purge immediately").
        unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, 0) };
    }
}
