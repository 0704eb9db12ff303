//! The `usher` binary (and, under the name `kubectl-usher`, the kubectl plugin): everything is in
//! the library; this only runs [`usher::cli::main`].

use std::process::ExitCode;

/// jemalloc rather than the C library's allocator: with a thread per SQLite connection and the
/// runtime's workers, glibc keeps an arena per thread and returns little of it; usher's caches of
/// many small objects take less memory under jemalloc (BENCHMARKS.md, peak RSS).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    usher::cli::main()
}
