//! `tandemctl`: thin binary over the `tandemctl` library.

use clap::Parser;

fn main() {
    let cli = tandemctl::Cli::parse();
    if let Err(e) = tandemctl::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
