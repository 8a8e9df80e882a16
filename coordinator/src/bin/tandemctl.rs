//! `tandemctl`: thin binary over `tandem_coordinator::ctl`.

use clap::Parser;

fn main() {
    let cli = tandem_coordinator::ctl::Cli::parse();
    if let Err(e) = tandem_coordinator::ctl::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
