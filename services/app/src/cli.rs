//! The `citycredit` command line: runs the platform (`serve`), checks data files (`check`), or
//! makes the keys and certificates of a split deployment (`keys generate`). `src/main.rs`
//! parses it and calls [`run`].

use std::path::PathBuf;
use std::process::ExitCode;

use citycredit_core::numbers::Precision;
use clap::{Parser, Subcommand};
use figment::Figment;
use figment::providers::Serialized;

use crate::{Config, server, telemetry};

#[derive(Parser)]
#[command(
    name = "citycredit",
    version,
    about = "Social credit demonstration-city indicator platform"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct Common {
    /// A TOML configuration file (see deploy/config/citycredit.example.toml).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// A catalog file instead of the built-in national criteria.
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// A city file instead of the built-in Quzhou seed.
    #[arg(long)]
    city: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the platform: every service in one process, SQLite in the data directory by default.
    Serve {
        #[command(flatten)]
        common: Common,
        /// Address to listen on (default 127.0.0.1:50051).
        #[arg(long)]
        listen: Option<String>,
        /// Directory for the embedded database.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Run one part of the platform alone (default: everything in one process).
        #[arg(long, value_enum)]
        service: Option<crate::config::ServiceMode>,
    },
    /// Load and validate the catalog and city files, print a summary, and exit.
    Check {
        #[command(flatten)]
        common: Common,
    },
    /// Keys and certificates for running the services apart.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Make a private CA, a server certificate per service, client certificates for the gateway
    /// and scoring (mTLS), and the Ed25519 identity keys: one directory per part holding only
    /// what that part needs (see deploy/k8s/create-secrets.sh).
    Generate {
        /// The directory to create (must not exist or be empty; nothing is overwritten).
        #[arg(long)]
        out: PathBuf,
        /// An extra name (DNS name or IP address) for every server certificate; repeat it.
        /// `--san 127.0.0.1` when the parts run on one host.
        #[arg(long = "san")]
        extra_names: Vec<String>,
        /// The Kubernetes namespace, for the services' in-cluster names.
        #[arg(long)]
        namespace: Option<String>,
        /// How long the certificates are valid.
        #[arg(long, default_value_t = 365)]
        days: u32,
    },
}

fn overrides(
    common: &Common,
    listen: Option<&String>,
    data_dir: Option<&PathBuf>,
    service: Option<crate::config::ServiceMode>,
) -> Figment {
    let mut fig = Figment::new();
    if let Some(v) = &common.catalog {
        fig = fig.merge(Serialized::default("catalog", v));
    }
    if let Some(v) = &common.city {
        fig = fig.merge(Serialized::default("city", v));
    }
    if let Some(v) = listen {
        fig = fig.merge(Serialized::default("listen", v));
    }
    if let Some(v) = data_dir {
        fig = fig.merge(Serialized::default("data_dir", v));
    }
    if let Some(v) = service {
        fig = fig.merge(Serialized::default("service", v));
    }
    fig
}

fn keys(command: KeysCommand) -> ExitCode {
    let KeysCommand::Generate {
        out,
        extra_names,
        namespace,
        days,
    } = command;
    let opts = crate::keys::KeyOptions {
        out,
        extra_names,
        namespace,
        days,
    };
    match crate::keys::generate(&opts) {
        Ok(written) => {
            for path in written {
                println!("{}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("citycredit: {e}");
            ExitCode::from(1)
        }
    }
}

/// Does what the command line asks: loads the configuration, starts telemetry, then serves
/// until SIGTERM or Ctrl-C (draining calls in flight), checks the data files, or makes keys.
pub fn run(cli: Cli) -> ExitCode {
    let (common, flags) = match &cli.command {
        Command::Serve {
            common,
            listen,
            data_dir,
            service,
        } => (
            common,
            overrides(common, listen.as_ref(), data_dir.as_ref(), *service),
        ),
        Command::Check { common } => (common, overrides(common, None, None, None)),
        // Needs no configuration.
        Command::Keys { .. } => {
            let Command::Keys { command } = cli.command else {
                return ExitCode::FAILURE;
            };
            return keys(command);
        }
    };
    let config = match Config::load(common.config.as_deref(), flags) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("citycredit: {e}");
            return ExitCode::from(2);
        }
    };
    let telemetry = telemetry::init(
        config.log_format,
        &config.log_filter,
        config.otlp_endpoint.as_deref(),
        config.service.as_str(),
    );

    match cli.command {
        Command::Keys { .. } => ExitCode::FAILURE,
        Command::Check { .. } => match server::load_data(&config) {
            Ok((catalog, city)) => {
                println!(
                    "catalog {} (version {}, rulebook {}): {} metrics, {} indicators, {} evaluation items, guiding max {}",
                    catalog.source,
                    catalog.version,
                    catalog.rulebook_version,
                    catalog.metrics.len(),
                    catalog.indicators.len(),
                    catalog.items.len(),
                    catalog.guiding_max_total().rounded(Precision::Score)
                );
                println!(
                    "city {} {} ({}): {} regions, {} departments, {} groups, {} responsibilities",
                    city.code,
                    city.name,
                    city.source,
                    city.regions.len(),
                    city.departments.len(),
                    city.groups.len(),
                    city.responsibilities.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("citycredit: {e}");
                ExitCode::from(1)
            }
        },
        Command::Serve { .. } => {
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("citycredit: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = runtime.block_on(async {
                let listener = server::bind(&config).await?;
                let result = server::serve(config, listener, server::shutdown_signal()).await;
                telemetry.shutdown().await;
                result
            });
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "citycredit stopped");
                    eprintln!("citycredit: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
