//! `tandem-coordinator`: thin binary over the `tandem_coordinator` library.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use tandem_coordinator::config::RawConfig;

#[derive(Parser)]
#[command(
    name = "tandem-coordinator",
    version,
    about = "Tandem coordinator: fleet membership, failure detection, admin API"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Make a data directory: CA, admin token, coordinator.toml.
    Init {
        /// The data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// Admin HTTP address (default 127.0.0.1:7070).
        #[arg(long)]
        admin_addr: Option<String>,
        /// QUIC address for agents (default 127.0.0.1:7443).
        #[arg(long)]
        quic_addr: Option<String>,
    },
    /// Serve from an initialised data directory.
    Serve {
        /// The data directory.
        #[arg(long)]
        data_dir: PathBuf,
        /// The config file (default DATA_DIR/coordinator.toml).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Overrides `admin_addr` in the config.
        #[arg(long)]
        admin_addr: Option<String>,
        /// Overrides `quic_addr` in the config.
        #[arg(long)]
        quic_addr: Option<String>,
    },
    /// A coordinator and N agents on loopback, for trying Tandem out. The agents are
    /// `tandem-agent` processes: the binary beside this one, else the one on PATH.
    Dev {
        /// How many agents.
        #[arg(long, default_value_t = 3)]
        agents: u32,
        /// Keep state here instead of a temporary directory.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Admin HTTP address (default 127.0.0.1:7070 if free).
        #[arg(long)]
        admin_addr: Option<String>,
        /// Testing aid: a GPU fixture for every agent.
        #[arg(long)]
        gpu_fixture: Option<PathBuf>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if matches!(cli.cmd, Cmd::Serve { .. } | Cmd::Dev { .. }) {
        tandem_coordinator::limit_malloc_arenas();
    }
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Init {
            data_dir,
            admin_addr,
            quic_addr,
        } => {
            tandem_coordinator::init::init(&data_dir, admin_addr.as_deref(), quic_addr.as_deref())?;
            println!("initialised {}", data_dir.display());
            println!(
                "  config      {}",
                data_dir.join("coordinator.toml").display()
            );
            println!("  admin token {}", data_dir.join("admin.token").display());
            println!(
                "next: tandem-coordinator serve --data-dir {}",
                data_dir.display()
            );
        }
        Cmd::Serve {
            data_dir,
            config,
            admin_addr,
            quic_addr,
        } => {
            tandem_common::logging::init_tracing("info");
            let mut raw =
                RawConfig::load(&config.unwrap_or_else(|| data_dir.join("coordinator.toml")))?;
            if let Some(a) = admin_addr {
                raw.set_admin_addr(a);
            }
            if let Some(q) = quic_addr {
                raw.set_quic_addr(q);
            }
            let cfg = raw.validate(&data_dir)?;
            tandem_coordinator::run(cfg, tandem_coordinator::shutdown_signal()).await?;
        }
        Cmd::Dev {
            agents,
            dir,
            admin_addr,
            gpu_fixture,
        } => {
            tandem_common::logging::init_tracing("warn");
            let opts = tandem_coordinator::dev::DevOptions {
                agents,
                dir,
                admin_addr,
                gpu_fixture,
            };
            tandem_coordinator::dev::run(opts, tandem_coordinator::shutdown_signal()).await?;
        }
    }
    Ok(())
}
