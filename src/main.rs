//! The `callrelay` binary: `serve` (the default), `token` and `audit verify`. The load generator
//! is a binary of its own, `callrelay-load` (crate `loadgen/`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use callrelay::auth::JwtAuth;
use callrelay::config::Config;
use callrelay::db::{AuditCheck, Db};
use callrelay::{secret_file, server};

#[derive(Parser)]
#[command(
    name = "callrelay",
    version,
    about = "Signaling server and SFU for browser calls"
)]
struct Cli {
    /// A TOML file whose keys override config/default.toml
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default)
    Serve,
    /// Print one signed JWT, signed with auth.jwt_secret, or when it is empty with the secret
    /// the server keeps in server.data_dir
    Token {
        #[arg(long)]
        sub: String,
        #[arg(long)]
        name: String,
        /// patient, doctor, staff or admin
        #[arg(long)]
        role: String,
        /// Lifetime in seconds (default: auth.token_ttl_secs)
        #[arg(long)]
        ttl_secs: Option<u64>,
    },
    /// Moved to its own binary, `callrelay-load`: says so
    #[command(hide = true, disable_help_flag = true)]
    Load {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The audit trail in the configured database
    #[command(subcommand)]
    Audit(AuditCommand),
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Recompute the whole hash chain; exit status 1 when a record was edited or deleted
    Verify,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Load { .. }) = cli.command {
        eprintln!(
            "callrelay: the load generator is its own binary now: callrelay-load \
             (cargo run --release -p callrelay-load -- --help)"
        );
        return ExitCode::from(2);
    }
    let config = match Config::load(cli.config.as_deref()) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("callrelay: configuration error: {err}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => run_server(config),
        Command::Token {
            sub,
            name,
            role,
            ttl_secs,
        } => print_token(&config, &sub, &name, &role, ttl_secs),
        Command::Load { .. } => unreachable!("answered before the configuration is loaded"),
        Command::Audit(AuditCommand::Verify) => verify_audit(&config),
    }
}

fn verify_audit(config: &Config) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("callrelay: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let check = runtime.block_on(async {
        let db = Db::connect(&config.database.url, 1).await?;
        let check = db.verify_audit().await;
        db.close().await;
        check
    });
    match check {
        Ok(AuditCheck {
            records,
            head,
            broken: None,
        }) => {
            println!(
                "audit trail intact: {records} records, latest hash {}",
                head.as_deref().unwrap_or("(none)")
            );
            ExitCode::SUCCESS
        }
        Ok(AuditCheck {
            records,
            broken: Some(broken),
            ..
        }) => {
            println!(
                "audit trail BROKEN at record {}: {} ({records} records before it are intact)",
                broken.seq, broken.reason
            );
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("callrelay audit verify: {err}");
            ExitCode::from(2)
        }
    }
}

fn run_server(config: Config) -> ExitCode {
    server::init_logging(config.server.log_format);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("callrelay: cannot start the runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(server::serve(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %anyhow::Error::from(err), "callrelay stopped with an error");
            ExitCode::FAILURE
        }
    }
}

fn print_token(config: &Config, sub: &str, name: &str, role: &str, ttl: Option<u64>) -> ExitCode {
    // The server's secret: the configured one, else the one it keeps in its data directory
    // (never made here: a secret no server has would sign tokens that never verify).
    let secret = if config.auth.jwt_secret.is_empty() {
        match secret_file::load(&config.server.data_dir) {
            Ok(secret) => secret,
            Err(err) => {
                eprintln!("callrelay: auth.jwt_secret is empty and {err}");
                return ExitCode::from(2);
            }
        }
    } else {
        config.auth.jwt_secret.as_bytes().to_vec()
    };
    let failures = prometheus::IntCounterVec::new(
        prometheus::Opts::new("unused", "token command has no metrics"),
        &["reason"],
    )
    .expect("static metric definition is valid");
    let auth = JwtAuth::new(&secret, failures);
    match auth.issue(sub, name, role, ttl.unwrap_or(config.auth.token_ttl_secs)) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("callrelay: {err}");
            ExitCode::from(2)
        }
    }
}
