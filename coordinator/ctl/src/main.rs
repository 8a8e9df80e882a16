//! `tandemctl`: thin binary over the `tandemctl` library.

use clap::Parser;

fn main() {
    // Output piped into `head` or `less` that stops reading ends us quietly, as it does `ls`
    // or `cat`: Rust ignores SIGPIPE, so each `println!` after the reader left would panic
    // ("failed printing to stdout: Broken pipe") with a backtrace.
    // SAFETY: setting a signal's disposition to its default, before any thread is started.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let cli = tandemctl::Cli::parse();
    if let Err(e) = tandemctl::run(cli) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}
