//! The `usher` binary: everything is in the library; this only runs [`usher::cli`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    usher::cli::Cli::parse().run()
}
