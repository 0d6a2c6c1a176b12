//! The `kmsecrets` command line: argument definitions and dispatch. One file
//! per command; shared helpers (key references, KMS construction, output)
//! live here.
//!
//! Errors surface as one line on stderr (what is wrong, and what to do) and
//! exit code 1; usage errors exit 2 (clap). Never a backtrace.

pub mod controller;
mod decrypt;
#[cfg(feature = "dev")]
pub mod dev;
mod edit;
mod encrypt;
mod fleet;
mod guard;
mod history;
mod init;
mod input;
mod key_report;
mod keys;
mod merge;
mod pubkey;
mod review;
mod rotate;
mod rules;
mod trust;
mod verify;

use std::path::PathBuf;

use std::time::Duration;

use clap::{Args, CommandFactory, Parser, Subcommand};

use crate::api::EncryptedSecret;
use crate::kms::layer::LayerConfig;
use crate::kms::local::LocalKey;
use crate::manifest::{self, Format};
use crate::resource::ResourceError;
pub use keys::{KeyArg, KmsSetup, build_kms, build_kms_with, parse_key_arg};

/// A CLI failure: one line for the user.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Msg(String),
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
    #[error(transparent)]
    Resource(#[from] ResourceError),
    #[error(transparent)]
    Kms(#[from] crate::kms::KmsError),
    #[error(transparent)]
    KeyFile(#[from] crate::kms::local::KeyFileError),
    /// Stopped by a signal after cleaning up; exits 128 + the signal number,
    /// as a shell reports a process killed by it.
    #[error("{1}")]
    Signalled(i32, String),
    /// Whoever read stdout stopped reading (`| head`): end quietly.
    #[error("stdout closed by its reader")]
    ReaderGone,
    /// `diff` found differences, or `guard` findings: exit 1, as diff(1),
    /// with nothing more on stderr.
    #[error("the files differ")]
    Differ,
    /// `diff` could not compare: exit 2, as diff(1).
    #[error("{0}")]
    Trouble(String),
}

impl CliError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Signalled(signo, _) => 128 + signo,
            // `kmsecrets decrypt | head` is a success, as for `cat | head`
            CliError::ReaderGone => 0,
            CliError::Trouble(_) => 2,
            _ => 1,
        }
    }
}

pub type CliResult<T = ()> = Result<T, CliError>;

pub fn msg(s: impl Into<String>) -> CliError {
    CliError::Msg(s.into())
}

#[derive(Parser)]
#[command(
    name = "kmsecrets",
    version,
    about = "Secrets in git as ciphertext, native Secrets in the cluster: AWS KMS envelope encryption for Kubernetes",
    propagate_version = true,
    // A later flag overrides an earlier one (lets users and tests append to
    // the args a manifest renders).
    args_override_self = true,
    max_term_width = 100
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone, Default)]
pub struct GlobalArgs {
    /// AWS region for key ids that are not ARNs (default: AWS_REGION / profile)
    #[arg(long, global = true, value_name = "REGION")]
    pub region: Option<String>,
    /// KMS endpoint URL (VPC endpoint, tests); default: AWS_ENDPOINT_URL_KMS / AWS_ENDPOINT_URL
    #[arg(
        long,
        global = true,
        value_name = "URL",
        env = "KMSECRETS_KMS_ENDPOINT"
    )]
    pub kms_endpoint: Option<String>,
    /// Local key file offered for unwrapping (repeatable; matched by key id)
    #[arg(
        long = "local-key",
        global = true,
        value_name = "PATH",
        env = "KMSECRETS_LOCAL_KEYS",
        value_delimiter = ','
    )]
    pub local_keys: Vec<PathBuf>,
}

/// KMS resilience-layer tuning (decrypt, controller).
#[derive(Args, Debug, Clone)]
pub struct LayerArgs {
    /// Client-side KMS request rate ceiling (requests/s), shared by all workers; adapts down on throttling
    #[arg(
        long,
        default_value_t = 100.0,
        env = "KMSECRETS_KMS_QPS",
        value_name = "QPS"
    )]
    pub kms_qps: f64,
    /// Token-bucket burst for KMS requests
    #[arg(
        long,
        default_value_t = 100,
        env = "KMSECRETS_KMS_BURST",
        value_name = "N"
    )]
    pub kms_burst: u32,
    /// How long an unwrapped data key stays cached (0 disables). The controller evicts the data keys of a KMS key it finds disabled, pending deletion or gone at its next key check (--key-check-interval); without checks a revoked key keeps working for cached data keys until this expires
    #[arg(long, default_value = "1h", value_parser = parse_duration, env = "KMSECRETS_DEK_CACHE_TTL", value_name = "DURATION")]
    pub dek_cache_ttl: Duration,
    /// Maximum cached data keys (LRU)
    #[arg(
        long,
        default_value_t = 10_000,
        env = "KMSECRETS_DEK_CACHE_SIZE",
        value_name = "N"
    )]
    pub dek_cache_size: usize,
    /// Attempts per KMS call (throttling and transient errors are retried with exponential backoff)
    #[arg(long, default_value_t = 8, env = "KMSECRETS_KMS_MAX_ATTEMPTS", value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=20))]
    pub kms_max_attempts: u32,
}

impl Default for LayerArgs {
    fn default() -> Self {
        let d = LayerConfig::default();
        LayerArgs {
            kms_qps: d.qps,
            kms_burst: d.burst,
            dek_cache_ttl: d.cache_ttl,
            dek_cache_size: d.cache_size,
            kms_max_attempts: d.max_attempts,
        }
    }
}

impl LayerArgs {
    pub fn config(&self) -> Result<LayerConfig, String> {
        if !(self.kms_qps.is_finite() && self.kms_qps > 0.0) {
            return Err(format!("--kms-qps must be > 0, got {}", self.kms_qps));
        }
        if self.kms_burst == 0 {
            return Err("--kms-burst must be >= 1".into());
        }
        Ok(LayerConfig {
            qps: self.kms_qps,
            burst: self.kms_burst,
            cache_ttl: self.dek_cache_ttl,
            cache_size: self.dek_cache_size,
            max_attempts: self.kms_max_attempts,
            ..LayerConfig::default()
        })
    }
}

/// "0" disables; otherwise humantime ("30s", "10m", "1h30m").
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.trim() == "0" {
        return Ok(Duration::ZERO);
    }
    humantime::parse_duration(s.trim())
        .map_err(|e| format!("invalid duration {s:?} ({e}); use e.g. 30s, 10m, 1h or 0"))
}

#[derive(Subcommand)]
pub enum Command {
    /// Encrypt a Secret (manifest or literals) into an EncryptedSecret
    Encrypt(encrypt::EncryptArgs),
    /// Decrypt an EncryptedSecret stream into a Secret stream
    Decrypt(decrypt::DecryptArgs),
    /// Decrypt FILE into $EDITOR, then re-encrypt it with the same data key
    Edit(edit::EditArgs),
    /// Re-encrypt FILE under a new data key, or re-wrap its data key (--rewrap)
    Rotate(rotate::RotateArgs),
    /// Print an empty EncryptedSecret whose data key never left KMS in plaintext
    Init(init::InitArgs),
    /// Check EncryptedSecret files offline (--decrypt also proves they decrypt)
    Verify(verify::VerifyArgs),
    /// Print a redacted, canonical view of EncryptedSecrets (a git diff driver: no KMS call, no plaintext)
    Textconv(review::TextconvArgs),
    /// Say what changed between two EncryptedSecret files, without decrypting (exit 0 same, 1 different, 2 trouble)
    Diff(review::DiffArgs),
    /// Check files before they are committed: plaintext Secrets, last-applied data, EncryptedSecrets breaking .kmsecrets.yaml, reverted values (exit 1 on findings)
    Guard(guard::GuardArgs),
    /// List the KMS keys files depend on, their state, and the resources at risk (exit 1 if any)
    Keys(key_report::KeysArgs),
    /// Write the SealingKey file of an asymmetric KMS key, for offline sealing (encrypt --key pub:FILE)
    Pubkey(pubkey::PubkeyArgs),
    /// Write a new local key-encryption key to PATH (mode 0600)
    Keygen {
        /// Where to write the key (refuses to overwrite)
        path: PathBuf,
    },
    /// Print the EncryptedSecret CustomResourceDefinition
    Crd,
    /// Run the operator (watches EncryptedSecrets, materialises Secrets)
    Controller(controller::ControllerArgs),
    /// Run an in-memory API server + CRD + local key + controller: the product on a laptop
    #[cfg(feature = "dev")]
    Dev(dev::DevArgs),
    /// Print shell completions
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

/// Entry point used by `main`: parse argv (honouring the kubectl plugin
/// name), run, print errors as one line. Returns the process exit code.
pub fn main_with_args(args: Vec<std::ffi::OsString>) -> i32 {
    // A bug must still end in one line, never a backtrace (whose frames and
    // payload may show data); KMSECRETS_DEBUG_PANICS=1 keeps Rust's report.
    if std::env::var_os("KMSECRETS_DEBUG_PANICS").is_none() {
        std::panic::set_hook(Box::new(|info| {
            let at = info
                .location()
                .map(|l| format!(" at {}:{}", l.file(), l.line()))
                .unwrap_or_default();
            eprintln!(
                "error: internal error{at}; this is a bug, please report it (KMSECRETS_DEBUG_PANICS=1 shows details)"
            );
        }));
    }
    let invoked_as = args
        .first()
        .and_then(|a| {
            std::path::Path::new(a)
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
        })
        .unwrap_or_default();
    let mut cmd = Cli::command();
    if invoked_as.starts_with("kubectl-kmsecrets") {
        cmd = cmd.bin_name("kubectl kmsecrets");
    }
    let matches = match cmd.try_get_matches_from(args) {
        Ok(m) => m,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return e.exit_code();
        }
    };
    // The controller's work is waiting on KMS and the API server: one
    // thread (a current-thread runtime) does it with the least CPU; more on
    // request. The CLI commands keep the multi-threaded default.
    let mut builder = match &cli.command {
        Command::Controller(a) if a.worker_threads <= 1 => {
            tokio::runtime::Builder::new_current_thread()
        }
        Command::Controller(a) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(usize::from(a.worker_threads));
            b
        }
        // git runs textconv once per file per revision: no worker threads
        // to start for commands that wait on nothing
        Command::Textconv(_) | Command::Diff(_) | Command::Guard(_) => {
            tokio::runtime::Builder::new_current_thread()
        }
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return 1;
        }
    };
    let result = rt.block_on(run(cli));
    // Tasks still running (a DNS lookup, a KMS call past the shutdown
    // timeout) must not hold the process.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    match result {
        Ok(()) => 0,
        Err(CliError::ReaderGone) => 0,
        Err(CliError::Differ) => 1,
        Err(e) => {
            let text = e.to_string().replace('\n', " ");
            eprintln!("error: {text}");
            e.exit_code()
        }
    }
}

pub async fn run(cli: Cli) -> CliResult {
    let g = cli.global;
    match cli.command {
        Command::Encrypt(a) => encrypt::run(&g, a).await,
        Command::Decrypt(a) => decrypt::run(&g, a).await,
        Command::Edit(a) => edit::run(&g, a).await,
        Command::Rotate(a) => rotate::run(&g, a).await,
        Command::Init(a) => init::run(&g, a).await,
        Command::Verify(a) => verify::run(&g, a).await,
        Command::Keys(a) => key_report::run(&g, a).await,
        Command::Textconv(a) => review::textconv(a),
        Command::Diff(a) => review::diff(&g, a).await.map_err(|e| match e {
            CliError::Differ | CliError::ReaderGone => e,
            other => CliError::Trouble(other.to_string()),
        }),
        Command::Guard(a) => guard::run(a).map_err(|e| match e {
            CliError::Differ | CliError::ReaderGone => e,
            other => CliError::Trouble(other.to_string()),
        }),
        Command::Pubkey(a) => pubkey::run(&g, a).await,
        Command::Keygen { path } => {
            let key = LocalKey::write_new(&path)?;
            out(format!("{}\n", key.id()))?;
            eprintln!(
                "wrote local key {} to {} (mode 0600); keep it out of git",
                key.id(),
                path.display()
            );
            Ok(())
        }
        Command::Controller(a) => controller::run(&g, a).await,
        #[cfg(feature = "dev")]
        Command::Dev(a) => dev::run(&g, a).await,
        Command::Crd => out(crate::api::crd_yaml()),
        Command::Completion { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "kmsecrets", &mut buf);
            out(String::from_utf8_lossy(&buf))
        }
    }
}

/// An error from unwrapping an existing resource's data key, for a
/// resource with offline-sealed copies: say plainly that changing values
/// needs `kms:Decrypt` (a SealingKey only seals new resources).
pub fn needs_data_key(es: &EncryptedSecret, e: CliError) -> CliError {
    let offline = es
        .spec
        .data_keys
        .iter()
        .any(|d| d.algorithm().is_asymmetric());
    match e {
        CliError::Resource(ResourceError::Kms(k)) if offline => CliError::Msg(format!(
            "{k}; changing values keeps the resource's data key, which only kms:Decrypt on one of its dataKeys keys returns (a SealingKey, --key pub:, seals new resources only: re-create this one with `kmsecrets encrypt --key pub:FILE` from all its values, or have someone with kms:Decrypt run this)"
        )),
        other => other,
    }
}

/// Parse `k=v` pairs (`--context`, `--from-literal`).
pub fn split_kv<'a>(s: &'a str, flag: &str) -> CliResult<(&'a str, &'a str)> {
    // Never echo the argument: for --from-literal it is the secret itself.
    s.split_once('=')
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| {
            msg(format!(
                "{flag} expects KEY=VALUE (a non-empty key, then '=')"
            ))
        })
}

/// Read exactly one EncryptedSecret from FILE (for edit/rotate/merge).
pub fn read_one_encrypted(path: &std::path::Path) -> CliResult<EncryptedSecret> {
    let name = path.display().to_string();
    let bytes = manifest::read_source(&name)?;
    let docs = manifest::parse_stream(&bytes, &name)?;
    if docs.len() != 1 {
        return Err(msg(format!(
            "{name} holds {} documents; edit, rotate and --merge-into take exactly one EncryptedSecret",
            docs.len()
        )));
    }
    to_encrypted(&docs[0], &name)
}

pub fn to_encrypted(doc: &manifest::Doc, source: &str) -> CliResult<EncryptedSecret> {
    if doc.kind() != crate::api::KIND || doc.api_version() != crate::api::API_VERSION {
        return Err(msg(format!(
            "{source}: {} is not an EncryptedSecret (apiVersion {}, kind EncryptedSecret expected)",
            doc.describe(),
            crate::api::API_VERSION
        )));
    }
    serde_json::from_value::<EncryptedSecret>(doc.value.clone()).map_err(|e| {
        msg(format!(
            "{source}: {} is not a valid EncryptedSecret: {}",
            doc.describe(),
            first_line(&e.to_string())
        ))
    })
}

/// `1 value`, `3 values`.
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

pub fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

pub fn write_output<T: serde::Serialize>(docs: &[T], format: Format) -> CliResult {
    out(manifest::render(docs, format))
}

/// Write to stdout. A reader that stopped reading (EPIPE, as with `| head`)
/// ends the command quietly with exit 0 ([`CliError::ReaderGone`]); never
/// a panic.
pub fn out(text: impl AsRef<str>) -> CliResult {
    use std::io::Write;
    let mut o = std::io::stdout().lock();
    match o
        .write_all(text.as_ref().as_bytes())
        .and_then(|()| o.flush())
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(CliError::ReaderGone),
        Err(e) => Err(msg(format!("cannot write to stdout: {e}"))),
    }
}

/// Rewrites keep the file's format: JSON for `.json`, YAML otherwise.
pub fn file_format(path: &std::path::Path) -> Format {
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"))
    {
        Format::Json
    } else {
        Format::Yaml
    }
}

/// Prefix KMS and decryption errors with the file they concern (parse and
/// I/O errors already name it).
pub fn name_file(path: &std::path::Path, e: CliError) -> CliError {
    match e {
        CliError::Resource(_) | CliError::Kms(_) => msg(format!("{}: {e}", path.display())),
        other => other,
    }
}
