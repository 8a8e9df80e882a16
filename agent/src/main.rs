//! `tandem-agent`: thin binary over the `tandem_agent` library.

use clap::{Parser, Subcommand};
use tandem_agent::cli::RunArgs;

#[derive(Parser)]
#[command(
    name = "tandem-agent",
    version,
    about = "Tandem node agent: hardware inventory, heartbeats, leases"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Join (once) and stay registered with a coordinator.
    Run(RunArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Run(args) => {
            tandem_agent::init_tracing("info");
            let cfg = args.to_raw()?.validate()?;
            tandem_agent::run(cfg, tandem_agent::shutdown_signal()).await?;
        }
    }
    Ok(())
}
