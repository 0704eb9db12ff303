//! The `usher` command line: `run`, `validate`, `find`, `review`, `import`, `resend`, `release`,
//! `status`, `crds`, `version` and `completions`. A thin layer: it parses arguments and hands
//! them to [`crate::run`], [`crate::validate`], [`crate::find`], [`crate::review`],
//! [`crate::import`], [`crate::admin`], [`crate::crd`] or [`crate::version`].
//!
//! Installed (or linked) as `kubectl-usher`, the same binary is a kubectl plugin:
//! `kubectl usher resend NAME`, `kubectl usher status`, … ([`main`] names itself after how it
//! was called).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

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
    /// Run the operator: watch the kinds, reconcile the store, send mail, serve HTTP.
    Run(Box<RunArgs>),
    /// Check manifest files or folders offline, as admission and the controllers would: schema,
    /// references, cycles, duplicate emails, exclusivity. Exit 0 when clean (warnings alone
    /// included), 1 with one `file: Kind/name: problem` line per problem.
    Validate {
        /// Files or folders of YAML manifests (folders are searched for *.yaml and *.yml); `-`
        /// reads stdin (`kustomize build overlays/prod | usher validate -`).
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        /// Output: text (one line per problem), json (for scripts) or sarif (SARIF 2.1.0, for
        /// code-scanning annotations on the offending lines).
        #[arg(short = 'o', long, value_enum, default_value = "text")]
        output: crate::validate::report::Format,
    },
    /// Find people the way admin pages search: a case-insensitive word in their first or last
    /// name, email, company, street, city, region, postal code, country or phone (phone numbers
    /// match on their digits). Prints a table as kubectl does.
    Find {
        /// The word, e.g. a surname, a city, a ZIP code or part of a phone number.
        word: String,
        /// The namespace to search (default: the kubeconfig's).
        #[arg(short = 'n', long, conflicts_with = "all_namespaces")]
        namespace: Option<String>,
        /// Search every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// The periodic access review of each tenant, to sign off: who holds which role where (and
    /// what it reaches and permits), invitations waiting more than N days, suspended people,
    /// access ending within N days.
    Review {
        /// The namespace to review (default: the kubeconfig's).
        #[arg(short = 'n', long, conflicts_with = "all_namespaces")]
        namespace: Option<String>,
        /// Review every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Output: table (to read), csv (for a spreadsheet) or json.
        #[arg(short = 'o', long, value_enum, default_value = "table")]
        output: crate::review::Format,
        /// How long an invitation may wait, and how far ahead ending access is listed, in days.
        #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(i64).range(1..=3650))]
        days: i64,
    },
    /// Turn a list of people (a CSV export: `,` `;` or tab separated, a BOM and quotes welcome)
    /// into the manifests to commit: one file per person in DIR, a SystemUser and, with
    /// --role, its RoleBinding. Bad rows are refused with their line and the reason `usher
    /// validate` gives; people already declared under DIR are skipped. Exit 1 if a row was refused.
    Import {
        /// The CSV file; its header line names the columns (email, first name, last name, phone,
        /// company, street, city, region, zip, country, …).
        file: PathBuf,
        /// The Tenant the people belong to.
        #[arg(long)]
        tenant: String,
        /// Their namespace.
        #[arg(short = 'n', long)]
        namespace: String,
        /// A role to bind each person to.
        #[arg(long)]
        role: Option<String>,
        /// The LocationGroup the role applies on (default: tenant-wide).
        #[arg(long, requires = "role")]
        group: Option<String>,
        /// The folder to write to; also searched for the Tenant and for people already declared.
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Ask for a new invitation for a person (sets usher.dev/resend-invitation to the time now):
    /// after expiry, a lost mail, or a leaked link. The previous link stops working.
    Resend {
        /// The SystemUser's name.
        name: String,
        /// Its namespace (default: the kubeconfig's).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// Let the offboardings the mass-offboarding guard holds for a tenant proceed (sets
    /// usher.dev/allow-mass-offboarding to the time now). Do it only when the deletions are meant.
    Release {
        /// The Tenant's name.
        tenant: String,
        /// Its namespace (default: the kubeconfig's).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
    },
    /// A tenant's people at a glance: how many are Active, Pending, Expired, Suspended or Failed,
    /// and who is not Active yet, and why.
    Status {
        /// Only this Tenant (default: every Tenant in the namespace).
        tenant: Option<String>,
        /// The namespace (default: the kubeconfig's).
        #[arg(short = 'n', long, conflicts_with = "all_namespaces")]
        namespace: Option<String>,
        /// Every namespace.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
    },
    /// Print the version, the git revision and the API versions served.
    Version {
        /// Output: text, or json for scripts.
        #[arg(short = 'o', long, default_value = "text", value_parser = ["text", "json"])]
        output: String,
    },
    /// Print a shell completion script: `source <(usher completions bash)`, or write it where
    /// your shell loads completions from.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the CustomResourceDefinitions as multi-document YAML (or write one file per kind).
    Crds {
        /// Write `<group>_<plural>.yaml` files into this folder instead of printing.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// The name the binary answers to when kubectl runs it as a plugin.
const PLUGIN: &str = "kubectl-usher";

/// Parse the command line and run it, naming itself `kubectl usher` in help and errors when
/// called as `kubectl-usher` (a kubectl plugin), `usher` otherwise.
pub fn main() -> ExitCode {
    let called = std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()));
    let mut command = Cli::command();
    if called.as_deref() == Some(PLUGIN) {
        command = command
            .bin_name("kubectl usher")
            .display_name("kubectl usher");
    }
    let matches = command.get_matches();
    match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli.run(),
        Err(e) => e.exit(),
    }
}

impl Cli {
    /// Run the chosen command; errors are printed as one line on stderr.
    pub fn run(self) -> ExitCode {
        let result = match self.command {
            Command::Crds { dir } => crds(dir.as_deref()),
            Command::Resend { name, namespace } => {
                block_on(crate::admin::resend(&name, namespace)).and_then(|line| print(&line))
            }
            Command::Release { tenant, namespace } => {
                block_on(crate::admin::release(&tenant, namespace)).and_then(|line| print(&line))
            }
            Command::Status {
                tenant,
                namespace,
                all_namespaces,
            } => block_on(crate::admin::status(
                tenant.as_deref(),
                &scope(namespace, all_namespaces),
            ))
            .and_then(|page| print(&page)),
            Command::Version { output } => print(&if output == "json" {
                crate::version::json()
            } else {
                crate::version::line()
            }),
            Command::Completions { shell } => {
                let mut command = Cli::command();
                let mut script = Vec::new();
                clap_complete::generate(shell, &mut command, "usher", &mut script);
                print(&String::from_utf8_lossy(&script))
            }
            Command::Find {
                word,
                namespace,
                all_namespaces,
            } => find(&word, namespace, all_namespaces),
            Command::Review {
                namespace,
                all_namespaces,
                output,
                days,
            } => review(namespace, all_namespaces, output, days),
            Command::Import {
                file,
                tenant,
                namespace,
                role,
                group,
                out,
            } => {
                let opts = crate::import::ImportOptions {
                    tenant,
                    namespace,
                    role,
                    group,
                    out,
                };
                return match import(&file, &opts) {
                    Ok(true) => ExitCode::SUCCESS,
                    Ok(false) => ExitCode::FAILURE,
                    Err(err) => {
                        eprintln!("usher: {err}");
                        ExitCode::FAILURE
                    }
                };
            }
            Command::Run(args) => run(*args),
            Command::Validate { paths, output } => {
                let (sources, mut problems) =
                    crate::validate::read_sources(&paths, std::io::stdin().lock());
                problems.extend(crate::validate::validate_sources(&sources));
                problems.sort_by(|a, b| a.file.cmp(&b.file));
                let report = crate::validate::report::render(&problems, &sources, output);
                if let Err(err) = print(&report) {
                    eprintln!("usher: {err}");
                    return ExitCode::FAILURE;
                }
                return if problems.iter().all(|p| p.warning) {
                    ExitCode::SUCCESS
                } else {
                    ExitCode::FAILURE
                };
            }
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

/// Options of `usher run`; each also an environment variable.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// The user store: sqlite://PATH (embedded, created if missing), postgres://USER@HOST/DB,
    /// or scim+https://HOST/BASE (bearer token from USHER_STORE_TOKEN).
    #[arg(long, env = "USHER_STORE", default_value = "sqlite://usher.db")]
    store: String,
    /// With a SCIM store: where invitations (token hashes) and what SCIM has no place for are
    /// kept, sqlite://PATH or postgres://….
    #[arg(
        long,
        env = "USHER_LOCAL_STORE",
        default_value = "sqlite://usher-local.db"
    )]
    local_store: String,
    /// Where mail goes: file://DIR (one .eml per message), smtp://host:port, smtps://host:port.
    #[arg(long, env = "USHER_MAIL", default_value = "file://outbox")]
    mail: String,
    /// Invitation mails in flight at once, over pooled connections to the relay. A crash can
    /// send again each mail the relay accepted but usher had not yet marked sent; the copy
    /// carries the same working link.
    #[arg(long, env = "USHER_MAIL_CONCURRENCY", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    mail_concurrency: u16,
    /// The From header when a tenant sets none.
    #[arg(
        long,
        env = "USHER_MAIL_FROM",
        default_value = "usher <no-reply@localhost>"
    )]
    mail_from: String,
    /// Address of the acceptance page and the redemption API: what people reach, usually
    /// through an ingress.
    #[arg(long, env = "USHER_LISTEN", default_value = "127.0.0.1:8080")]
    listen: std::net::SocketAddr,
    /// Address of /healthz, /readyz and /metrics, for the kubelet and Prometheus, kept apart from
    /// the public one. The same address as --listen serves everything on one port.
    #[arg(long, env = "USHER_PROBE_LISTEN", default_value = "127.0.0.1:9090")]
    probe_listen: std::net::SocketAddr,
    /// Proxies in front of usher (an ingress, a load balancer), as addresses or CIDR ranges,
    /// comma-separated: for a connection from one of them, the client is the address it
    /// forwarded for (X-Forwarded-For, read from the right), and the redemption rate limits
    /// count that client. Default: none; every connection is its own peer.
    #[arg(long, env = "USHER_TRUSTED_PROXIES", default_value = "", value_parser = parse_proxies)]
    trusted_proxies: crate::server::TrustedProxies,
    /// Base of the links in invitation mails.
    #[arg(
        long,
        env = "USHER_PUBLIC_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    public_url: String,
    /// Watch only this namespace (default: all).
    #[arg(long, env = "USHER_NAMESPACE")]
    namespace: Option<String>,
    /// Watch only the objects this label selector matches, to split the tenants between
    /// instances, as Flux shards its controllers: `sharding.fluxcd.io/key=shard1` on one,
    /// `sharding.fluxcd.io/key=shard2` on another, and `!sharding.fluxcd.io/key` on the one
    /// that takes the unlabelled rest. Label every object of a tenant alike.
    #[arg(long, env = "USHER_SHARD_SELECTOR", value_parser = parse_selector)]
    shard_selector: Option<String>,
    /// How often every object is reconciled again without a change, e.g. 10m: one object at a
    /// time, spread evenly over the period, so drift is repaired within about two periods.
    #[arg(long, env = "USHER_RESYNC", default_value = "10m", value_parser = parse_duration)]
    resync: std::time::Duration,
    /// Reconcile only while holding a Lease, so that of several replicas one works at a time.
    #[arg(long, env = "USHER_LEADER_ELECTION")]
    leader_election: bool,
    /// The namespace of that Lease (default: the pod's own, from POD_NAMESPACE).
    #[arg(long, env = "POD_NAMESPACE", default_value = "usher-system")]
    lease_namespace: String,
    /// How long a Lease holds without renewal, e.g. 15s.
    #[arg(long, env = "USHER_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    lease_duration: std::time::Duration,
    /// The Secret holding the key invitation tokens are derived from; usher reads it by name
    /// and creates it, with a random key, if it does not exist.
    #[arg(long, env = "USHER_TOKEN_KEY_SECRET", default_value = crate::token_key::DEFAULT_NAME)]
    token_key_secret: String,
    /// That Secret's namespace (default: the pod's own, from POD_NAMESPACE; outside a cluster,
    /// the kubeconfig's namespace).
    #[arg(long, env = "USHER_TOKEN_KEY_NAMESPACE")]
    token_key_namespace: Option<String>,
    /// Log lines as text or JSON.
    #[arg(long, env = "USHER_LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
}

/// A label selector, not empty (the API server checks its syntax when usher starts: a bad one
/// stops `usher run` with the server's words).
fn parse_selector(text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(
            "an empty selector matches everything; leave --shard-selector out instead".into(),
        );
    }
    Ok(text.to_string())
}

fn parse_proxies(text: &str) -> Result<crate::server::TrustedProxies, String> {
    crate::server::TrustedProxies::parse(text).map_err(|e| e.to_string())
}

fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    crate::plan::system_user::parse_duration(text)
        .and_then(|d| d.try_into().ok())
        .ok_or_else(|| format!("{text:?} is not a duration such as 10m, 1h or 90s"))
}

/// What the command line can fail at, each with a message a person understands.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A CRD could not be rendered as YAML (a bug in the types).
    #[error("cannot render the CRDs as YAML: {0}")]
    Render(#[from] serde_yaml_ng::Error),
    /// `usher import` could not read its CSV or write a manifest.
    #[error(transparent)]
    Import(#[from] crate::import::ImportError),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// `usher find` could not read the cluster.
    #[error(transparent)]
    Find(#[from] crate::find::FindError),
    /// `usher resend`, `release` or `status` could not do it.
    #[error(transparent)]
    Admin(#[from] crate::admin::AdminError),
    /// `usher run` failed (the store, the mail transport, the Kubernetes API, the listener).
    #[error(transparent)]
    Run(#[from] crate::run::RunError),
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

/// Run an import and print what it did; false when a row was refused.
fn import(file: &Path, opts: &crate::import::ImportOptions) -> Result<bool, CliError> {
    let shown = file.display().to_string();
    let bytes = std::fs::read(file).map_err(|source| CliError::Read {
        path: shown.clone(),
        source,
    })?;
    let report = crate::import::import(&shown, &bytes, opts)?;
    let mut out = std::io::stdout().lock();
    for note in &report.notes {
        let _ = writeln!(out, "note: {note}");
    }
    for (line, path) in &report.written {
        let _ = writeln!(out, "{shown}:{line}: written {path}");
    }
    for (line, why) in &report.skipped {
        let _ = writeln!(out, "{shown}:{line}: skipped: {why}");
    }
    for (line, why) in &report.refused {
        let _ = writeln!(out, "{shown}:{line}: refused: {why}");
    }
    let _ = writeln!(
        out,
        "{} written, {} already declared, {} refused",
        report.written.len(),
        report.skipped.len(),
        report.refused.len()
    );
    Ok(report.refused.is_empty())
}

fn review(
    namespace: Option<String>,
    all: bool,
    format: crate::review::Format,
    days: i64,
) -> Result<(), CliError> {
    let reviews = block_on(crate::review::reviews(&scope(namespace, all), days))?;
    print(&crate::review::render(&reviews, format, days))
}

/// Where `-n NS` / `-A` point: one namespace (None: the kubeconfig's) or all of them.
fn scope(namespace: Option<String>, all: bool) -> crate::find::Scope {
    if all {
        crate::find::Scope::All
    } else {
        crate::find::Scope::Namespace(namespace)
    }
}

/// Run one future of a short command (`find`, `review`) to its end.
fn block_on<T, E>(work: impl std::future::Future<Output = Result<T, E>>) -> Result<T, CliError>
where
    CliError: From<E>,
{
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| crate::run::RunError::Io(format!("starting the runtime: {e}")))?;
    Ok(runtime.block_on(work)?)
}

/// Print to stdout; a closed pipe or a full disk is an error that says so.
fn print(text: &str) -> Result<(), CliError> {
    std::io::stdout()
        .lock()
        .write_all(text.as_bytes())
        .map_err(|source| CliError::Write {
            path: "stdout".into(),
            source,
        })
}

fn find(word: &str, namespace: Option<String>, all: bool) -> Result<(), CliError> {
    let found = block_on(crate::find::find(word, &scope(namespace, all)))?;
    if found.is_empty() {
        // As kubectl says it: on stderr, and not an error.
        eprintln!("No SystemUsers match {word:?}.");
        return Ok(());
    }
    print(&crate::find::table(&found, all))
}

fn run(args: RunArgs) -> Result<(), CliError> {
    init_tracing(&args.log_format);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| crate::run::RunError::Io(format!("starting the runtime: {e}")))?;
    runtime.block_on(crate::run::run(crate::run::Options {
        store: args.store,
        local_store: args.local_store,
        mail: args.mail,
        mail_from: args.mail_from,
        mail_concurrency: args.mail_concurrency.into(),
        listen: args.listen,
        probe_listen: args.probe_listen,
        trusted_proxies: args.trusted_proxies,
        shard_selector: args.shard_selector,
        public_url: args.public_url,
        namespace: args.namespace,
        resync: args.resync,
        token_key_secret: (
            args.token_key_namespace
                .or_else(|| std::env::var("POD_NAMESPACE").ok()),
            args.token_key_secret,
        ),
        leader_election: args.leader_election.then_some(crate::run::Election {
            namespace: args.lease_namespace,
            duration: args.lease_duration,
        }),
    }))?;
    Ok(())
}

fn init_tracing(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}
