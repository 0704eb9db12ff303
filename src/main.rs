//! The `usher` binary (and, under the name `kubectl-usher`, the kubectl plugin): everything is in
//! the library; this only runs [`usher::cli::main`].

use std::process::ExitCode;

fn main() -> ExitCode {
    usher::cli::main()
}
