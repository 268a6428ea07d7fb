//! The `citycredit` command line: runs the platform (`serve`), checks data files (`check`),
//! makes the keys and certificates of a split deployment (`keys generate`), imports metric
//! values from a spreadsheet (`import`) or writes a department's reporting template
//! (`template`). `src/main.rs` parses it and calls [`run`].

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
    /// Submit metric values from an .xlsx or .csv file through the gRPC API.
    ///
    /// The caller is the principal whose API key is in the environment variable
    /// CITYCREDIT_API_KEY (not a flag: it stays out of shell history), so every rule and
    /// permission applies.
    ///
    /// Columns, by header in Chinese or English (or both, "指标 metric"): 指标/metric,
    /// 地区/region, 期间/period, 部门/department, 领域/domain, 任务/task, 数值/value,
    /// 佐证链接/evidence_uri, 备注/note; a template's read-only columns (指标名称/metric_name,
    /// 单位/unit, 地区名称/region_name, 领域名称/domain_name, 当前值/current_value) are ignored.
    /// Any other column is refused by name. Rows without a value are skipped.
    ///
    /// The file is checked as a whole first: if any row is refused, nothing is stored and
    /// every refused row is listed (row, column, reason); exit status 1. A clean file is stored
    /// as one batch; values already current are reported unchanged and not sent again (nor
    /// is a new note or evidence link beside them).
    ///
    /// Limits: 16 MiB per file (an .xlsx may unpack to at most 128 MiB), 10,000 rows,
    /// 64 columns, 2,048 characters per cell. Only the first worksheet of an .xlsx is read;
    /// a .csv must be UTF-8.
    ///
    /// Exit status: 0 stored (or checked, or nothing to store), 1 refused, 2 could not run.
    Import {
        /// The file: .xlsx or .csv.
        file: PathBuf,
        /// Check every row and report what would be stored; store nothing.
        #[arg(long)]
        dry_run: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Write a department's reporting template (.xlsx) from a running platform.
    ///
    /// One row per metric the department is expected to report, per region (and per domain
    /// for domain flags), with Chinese names, units, the current value and validation in the
    /// value cells. Filled in, it imports as it is (`citycredit import`). The API key is read
    /// from the environment variable CITYCREDIT_API_KEY.
    Template {
        /// The department's code, e.g. samr.
        #[arg(long)]
        department: String,
        /// The period: YYYY, YYYY-Qn or YYYY-MM.
        #[arg(long)]
        period: String,
        /// The .xlsx file to write.
        #[arg(long)]
        out: PathBuf,
        /// Replace the file if it exists.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

/// Where the platform is (the API key is not a flag: it comes from CITYCREDIT_API_KEY).
#[derive(clap::Args)]
struct RemoteArgs {
    /// The platform's gRPC address.
    #[arg(long, default_value = crate::remote::DEFAULT_ADDR)]
    addr: String,
    /// A PEM file of the CA that signed the server's certificate (https:// addresses).
    #[arg(long)]
    ca_cert: Option<PathBuf>,
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
        // Clients of a running platform: no configuration either.
        Command::Import {
            file,
            dry_run,
            remote,
        } => {
            return crate::import::run(&crate::import::ImportOptions {
                file: file.clone(),
                addr: remote.addr.clone(),
                ca_cert: remote.ca_cert.clone(),
                dry_run: *dry_run,
            });
        }
        Command::Template {
            department,
            period,
            out,
            force,
            remote,
        } => {
            return crate::template::run(&crate::template::TemplateOptions {
                department: department.clone(),
                period: period.clone(),
                out: out.clone(),
                addr: remote.addr.clone(),
                ca_cert: remote.ca_cert.clone(),
                force: *force,
            });
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
        Command::Keys { .. } | Command::Import { .. } | Command::Template { .. } => {
            ExitCode::FAILURE
        }
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
                match server::load_rule_versions(&config, std::sync::Arc::new(catalog)) {
                    Ok(versions) => {
                        for extra in versions.catalogs().into_iter().skip(1) {
                            println!(
                                "rule version {} ({}): {} indicators, guiding max {}",
                                extra.version,
                                extra.source,
                                extra.indicators.len(),
                                extra.guiding_max_total().rounded(Precision::Score)
                            );
                        }
                    }
                    Err(e) => {
                        eprintln!("citycredit: {e}");
                        return ExitCode::FAILURE;
                    }
                }
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
            let runtime = match runtime(config.worker_threads) {
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

/// The runtime `serve` runs on: `worker_threads` threads, or one per core when unset.
fn runtime(worker_threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = worker_threads {
        builder.worker_threads(n);
    }
    builder.build()
}

#[cfg(test)]
mod tests {
    use super::runtime;

    #[test]
    fn the_runtime_has_the_threads_asked_for_or_one_per_core() {
        let one = runtime(Some(1)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(one.metrics().num_workers(), 1);
        let three = runtime(Some(3)).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(three.metrics().num_workers(), 3);
        // tokio's default: TOKIO_WORKER_THREADS when set, else the cores this process may use.
        let cores = std::env::var("TOKIO_WORKER_THREADS")
            .ok()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| {
                std::thread::available_parallelism().map_or(1, std::num::NonZero::get)
            });
        let default = runtime(None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(default.metrics().num_workers(), cores);
    }
}
