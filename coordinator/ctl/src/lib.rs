//! `tandemctl`: the admin API from a shell. Tables for people, `-o json` for scripts (the API's
//! answer exactly as it came).
//!
//! A client of the HTTP/JSON API only: it does not link the coordinator. It reads the answers
//! as JSON values and keeps its own names for what it sends (e.g. the job states of
//! `jobs list --state`, [`JobState`]).
//!
//! # Layout
//! - `lib.rs`: `CtlError`, and `run`, which builds the HTTP agent and dispatches;
//! - `args`: the command line (`Cli`, the commands and their arguments);
//! - `main.rs`: the binary: parses the arguments, calls `run`, prints the error, exits 1;
//! - `client`: the HTTP calls, percent-encoding, short-id resolution;
//! - `parse`: durations, sizes, CPU amounts, labels and environment variables as people type them;
//! - `show`: table, short-id and age helpers;
//! - `clusters`: clusters, pairs and operations; `nodes`: nodes, recycle, join tokens and
//!   events; `jobs`: jobs. Each command's unit tests sit in its module.

mod args;
mod client;
mod clusters;
mod jobs;
mod nodes;
pub mod parse;
mod show;

pub use args::*;
use client::Client;
use serde_json::Value;
use std::time::Duration;

/// A failed command, with what the API said.
#[derive(Debug, thiserror::Error)]
pub enum CtlError {
    /// The endpoint could not be reached.
    #[error("cannot reach {endpoint}: {reason}")]
    Unreachable {
        /// Where.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The API refused the request.
    #[error("{code}: {message}")]
    Api {
        /// The stable code.
        code: String,
        /// The API's message.
        message: String,
    },
    /// No token was given.
    #[error("no admin token: set TANDEM_TOKEN, or pass --token or --token-file")]
    NoToken,
    /// The token file could not be read.
    #[error("cannot read the token file {0}: {1}")]
    TokenFile(String, std::io::Error),
    /// The CA file could not be read or holds no certificate.
    #[error("cannot use the CA file {0}: {1}")]
    CaFile(String, String),
    /// A short id matches more than one object.
    #[error("invalid_argument: `{given}` matches more than one id: {}", matches.join(", "))]
    Ambiguous {
        /// What was typed.
        given: String,
        /// The ids it matches.
        matches: Vec<String>,
    },
    /// The command line asks for nothing, or for something contradictory.
    #[error("invalid_argument: {0}")]
    Usage(String),
    /// An operation failed or did not finish.
    #[error("operation_failed: operation {id}: {error}")]
    Operation {
        /// The operation.
        id: String,
        /// What went wrong.
        error: String,
    },
    /// The job is placed on no node (`jobs node`).
    #[error("not_placed: job {job} is on no node: {state}")]
    NotPlaced {
        /// The job.
        job: String,
        /// Its state and the reason.
        state: String,
    },
    /// A stopped job's last copy did not end within the wait (`jobs stop`).
    #[error("still_stopping: job {job}: {detail}")]
    StillStopping {
        /// The job.
        job: String,
        /// Where its copy is and how long was waited.
        detail: String,
    },
    /// The heartbeat check found the node not alive.
    #[error("not_alive: node {node}: {reason}")]
    NotAlive {
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
}

/// Prints `v` as JSON, or with `table` for people.
fn emit(out: Output, v: &Value, table: impl FnOnce(&Value)) {
    match out {
        Output::Json => println!("{}", serde_json::to_string_pretty(v).unwrap_or_default()),
        Output::Table => table(v),
    }
}

/// Runs a command, printing to stdout.
pub fn run(cli: Cli) -> Result<(), CtlError> {
    let token = match (&cli.global.token, &cli.global.token_file) {
        (Some(t), _) => t.clone(),
        (None, Some(f)) => std::fs::read_to_string(f)
            .map_err(|e| CtlError::TokenFile(f.display().to_string(), e))?
            .trim()
            .to_string(),
        (None, None) => return Err(CtlError::NoToken),
    };
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)));
    if let Some(f) = &cli.global.ca_file {
        let bad = |e: String| CtlError::CaFile(f.display().to_string(), e);
        let pem = std::fs::read(f).map_err(|e| bad(e.to_string()))?;
        let certs = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(Ok(c)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("no certificate in it".into()));
        }
        config = config.tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::new_with_certs(&certs))
                .build(),
        );
    }
    let agent: ureq::Agent = config.build().into();
    let c = Client {
        agent,
        base: cli.global.endpoint.clone(),
        token,
    };
    let out = cli.global.output;
    match cli.cmd {
        Cmd::Clusters(cmd) => clusters::clusters(&c, out, cmd),
        Cmd::Pairs(cmd) => clusters::pairs(&c, out, cmd),
        Cmd::Jobs(cmd) => jobs::jobs(&c, out, cmd),
        Cmd::Operations(OperationsCmd::Show { id }) => clusters::operation(&c, out, &id),
        Cmd::Nodes(cmd) => nodes::nodes(&c, out, cmd),
        Cmd::Recycle { down_for } => nodes::recycle(&c, out, down_for),
        Cmd::Tokens(TokensCmd::Create {
            ttl_s,
            uses,
            cluster,
        }) => nodes::create_token(&c, out, ttl_s, uses, cluster),
        Cmd::Tokens(TokensCmd::List) => nodes::list_tokens(&c, out),
        Cmd::Tokens(TokensCmd::Revoke { id }) => nodes::revoke_token(&c, out, &id),
        Cmd::Events { node, limit } => nodes::events(&c, out, node, limit),
    }
}
