//! The `usher` command line: `crds` (and, as the issues land, `run` and `validate`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::crd;

/// usher reconciles Tenants, LocationGroups, SystemUsers and RoleBindings kept in git into a
/// product's user store, and invites the people by mail.
#[derive(Parser, Debug)]
#[command(name = "usher", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Print the CustomResourceDefinitions as multi-document YAML (or write one file per kind).
    Crds {
        /// Write `<group>_<plural>.yaml` files into this folder instead of printing.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

impl Cli {
    /// Run the chosen command; errors are printed as one line on stderr.
    pub fn run(self) -> ExitCode {
        let result = match self.command {
            Command::Crds { dir } => crds(dir.as_deref()),
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("usher: {err}");
                ExitCode::FAILURE
            }
        }
    }
}

/// What the command line can fail at, each with a message a person understands.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A CRD could not be rendered as YAML (a bug in the types).
    #[error("cannot render the CRDs as YAML: {0}")]
    Render(#[from] serde_yaml_ng::Error),
    /// A file or stdout could not be written.
    #[error("cannot write {path}: {source}")]
    Write {
        /// Where we tried to write.
        path: String,
        /// Why it failed.
        source: std::io::Error,
    },
}

fn crds(dir: Option<&Path>) -> Result<(), CliError> {
    let write_err = |path: &Path| {
        let path = path.display().to_string();
        move |source| CliError::Write { path, source }
    };
    match dir {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(write_err(dir))?;
            for crd in crd::all() {
                let path = dir.join(crd::file_name(&crd));
                std::fs::write(&path, crd::to_yaml(&crd)?).map_err(write_err(&path))?;
            }
        }
        None => {
            let mut out = String::new();
            for crd in crd::all() {
                out.push_str("---\n");
                out.push_str(&crd::to_yaml(&crd)?);
            }
            std::io::stdout()
                .lock()
                .write_all(out.as_bytes())
                .map_err(write_err(Path::new("stdout")))?;
        }
    }
    Ok(())
}
