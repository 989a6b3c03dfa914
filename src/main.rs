//! The `switchyard` binary: parse the command line, hand it to the library.

use clap::Parser;

/// mimalloc instead of glibc malloc: pingora allocates per request (boxed futures, header maps),
/// and the load comparison measured about 15 % less CPU per request with it (benches/RESULTS.md).
/// Cargo.toml says why it is mimalloc 2.x.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    // Return a worker's freed pages once the clients it served have gone (src/memory.rs).
    switchyard::memory::install(|| unsafe { libmimalloc_sys::mi_collect(true) });
    switchyard::cli::run(switchyard::cli::Cli::parse())
}
