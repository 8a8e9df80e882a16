//! `tandem-agent`: thin binary over the `tandem_agent` library.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use tandem_agent::cli::RunArgs;
use tandem_agent::inventory;
use tandem_agent::probe::{fixture, ProbeOptions, Prober};

#[derive(Parser)]
#[command(
    name = "tandem-agent",
    version,
    about = "Tandem node agent: hardware inventory, heartbeats, leases"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Join (once) and stay registered with a coordinator.
    Run(RunArgs),
    /// Print this node's hardware report (no coordinator needed) and exit.
    Inventory(InventoryArgs),
    /// Check, without joining or spending anything, that this node could join (or reconnect):
    /// address, UDP, CA pin, token, cluster, admission. Exit 0, 10+step of the first failed
    /// step (11-16), or 2 for bad input.
    Check {
        #[command(flatten)]
        args: tandem_agent::cli::CheckArgs,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: Output,
    },
    /// How the running agent stands: link, lease, fence, jobs, containment, last errors. Read
    /// from the agent's socket in its state dir; works while the agent is disconnected.
    Status {
        /// The running agent's state dir.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// The agent's config file (for its `state_dir`).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Output format.
        #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
        output: Output,
    },
    /// Internal: the per-job supervisor process, started by the agent.
    #[command(hide = true)]
    Shim {
        /// The job's directory (holding `spec.json`).
        #[arg(long)]
        job_dir: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum Output {
    /// A summary for people.
    Table,
    /// The report as JSON, as the admin API shows it.
    Json,
}

#[derive(clap::Args)]
struct InventoryArgs {
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    output: Output,
    /// Testing aid: read the GPUs from this JSON file (a list of GPUs in the report's format)
    /// instead of NVML.
    #[arg(long, value_name = "FILE")]
    gpu_fixture: Option<PathBuf>,
    /// How long to wait for NVML before reporting it unresponsive, in milliseconds.
    #[arg(long, value_name = "MS", default_value_t = 1500)]
    nvml_timeout_ms: u64,
}

fn inventory_cmd(args: InventoryArgs) -> ExitCode {
    tandem_common::logging::init_tracing("warn");
    if let Some(path) = &args.gpu_fixture {
        // A broken fixture is a broken test: say so instead of printing no GPUs.
        if let Err(e) = fixture::load(path) {
            eprintln!("tandem-agent: {e}");
            return ExitCode::from(2);
        }
    }
    let Some(runtime) = small_runtime() else {
        return ExitCode::FAILURE;
    };
    let options = ProbeOptions {
        gpu_fixture: args.gpu_fixture,
        nvml_timeout: Duration::from_millis(args.nvml_timeout_ms),
    };
    let report = runtime.block_on(async move { Prober::new(options).report().await });
    // How jobs would be contained here (nothing is made: the agent decides at its start).
    let (mode, note) = tandem_agent::containment::Containment::probe();
    match args.output {
        Output::Table => {
            print!("{}", inventory::render_table(&report));
            println!("containment: {} ({note})", mode.name());
        }
        Output::Json => println!(
            "{}",
            inventory::with_containment(&inventory::render_json(&report), mode.name(), &note)
        ),
    }
    // A hung NVML thread must not keep the process alive: exit without waiting for it.
    runtime.shutdown_background();
    ExitCode::SUCCESS
}

fn check_cmd(args: tandem_agent::cli::CheckArgs, output: Output) -> ExitCode {
    use tandem_agent::check;
    tandem_common::logging::init_tracing("warn");
    let raw = match args.to_raw() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tandem-agent: {e}");
            return ExitCode::from(check::EXIT_BAD_INPUT);
        }
    };
    let Some(runtime) = small_runtime() else {
        return ExitCode::FAILURE;
    };
    let deadline = Duration::from_millis(args.timeout_ms.max(1));
    let result = runtime.block_on(check::run(raw, deadline));
    runtime.shutdown_background();
    match result {
        Ok(report) => {
            match output {
                Output::Table => print!("{}", report.render_table()),
                Output::Json => println!("{}", report.render_json()),
            }
            ExitCode::from(report.exit_code())
        }
        Err(e) => {
            eprintln!("tandem-agent: {e}");
            ExitCode::from(check::EXIT_BAD_INPUT)
        }
    }
}

fn status_cmd(state_dir: Option<PathBuf>, config: Option<PathBuf>, output: Output) -> ExitCode {
    let dir = match (state_dir, config) {
        (Some(d), _) => d,
        (None, Some(c)) => match tandem_agent::config::RawConfig::load(&c) {
            Ok(raw) => match raw.state_dir {
                Some(d) => d,
                None => {
                    eprintln!(
                        "tandem-agent: {} has no state_dir; pass --state-dir",
                        c.display()
                    );
                    return ExitCode::from(2);
                }
            },
            Err(e) => {
                eprintln!("tandem-agent: {e}");
                return ExitCode::from(2);
            }
        },
        (None, None) => {
            eprintln!("tandem-agent: pass --state-dir (or --config) of the running agent");
            return ExitCode::from(2);
        }
    };
    match tandem_agent::status::ask(&dir) {
        Ok(doc) => {
            match output {
                Output::Table => print!("{}", tandem_agent::status::render_table(&doc)),
                Output::Json => {
                    println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default())
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tandem-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_cmd(args: RunArgs) -> ExitCode {
    tandem_common::logging::init_tracing("info");
    let cfg = match args.to_raw().and_then(|raw| raw.validate()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tandem-agent: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tandem-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(tandem_agent::run(cfg, tandem_agent::shutdown_signal()));
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "tandem-agent stopped");
            eprintln!("tandem-agent: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Run(args) => run_cmd(args),
        Command::Inventory(args) => inventory_cmd(args),
        Command::Check { args, output } => check_cmd(args, output),
        Command::Status {
            state_dir,
            config,
            output,
        } => status_cmd(state_dir, config, output),
        Command::Shim { job_dir } => tandem_agent::supervisor::shim::main(&job_dir),
    }
}

/// The one-thread runtime of the short commands (`inventory`, `check`); `None`
/// (said on stderr) if it cannot be built.
fn small_runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("tandem-agent: cannot start the runtime: {e}");
            None
        }
    }
}
