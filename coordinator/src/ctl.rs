//! `tandemctl`: the admin API from a shell. Tables for people, `-o json` for scripts (the API's
//! answer exactly as it came).

use clap::{Args, Parser, Subcommand, ValueEnum};
use comfy_table::{presets::NOTHING, Table};
use serde_json::Value;
use std::path::PathBuf;
use std::time::Duration;

/// tandemctl's arguments.
#[derive(Parser, Debug)]
#[command(
    name = "tandemctl",
    version,
    about = "Command-line client of the Tandem coordinator's admin API"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Options for every command.
#[derive(Args, Debug)]
pub struct Global {
    /// The admin endpoint, e.g. http://127.0.0.1:7070.
    #[arg(
        long,
        env = "TANDEM_ENDPOINT",
        default_value = "http://127.0.0.1:7070",
        global = true
    )]
    pub endpoint: String,
    /// The admin bearer token.
    #[arg(long, env = "TANDEM_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// A file holding the admin bearer token (e.g. DATA_DIR/admin.token).
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
}

/// Output formats.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Output {
    /// Tables for people.
    Table,
    /// The API's JSON answer.
    Json,
}

/// Commands.
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Nodes.
    #[command(subcommand)]
    Nodes(NodesCmd),
    /// Join tokens.
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// Recent events.
    Events {
        /// Only events of this node (id or name).
        #[arg(long)]
        node: Option<String>,
        /// How many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
}

/// Node commands.
#[derive(Subcommand, Debug)]
pub enum NodesCmd {
    /// List every node.
    List,
    /// Show one node (id or name).
    Show {
        /// Node id or name.
        node: String,
    },
}

/// Token commands.
#[derive(Subcommand, Debug)]
pub enum TokensCmd {
    /// Create a join token.
    Create {
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 600)]
        ttl_s: u64,
        /// How many nodes may join with it.
        #[arg(long, default_value_t = 1)]
        uses: u32,
    },
}

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
}

struct Client {
    agent: ureq::Agent,
    base: String,
    token: String,
}

impl Client {
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, CtlError> {
        let url = format!("{}{}", self.base.trim_end_matches('/'), path);
        let auth = format!("Bearer {}", self.token);
        let res = match (method, body) {
            ("POST", Some(b)) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_json(&b),
            _ => self.agent.get(&url).header("Authorization", &auth).call(),
        };
        let mut res = res.map_err(|e| CtlError::Unreachable {
            endpoint: self.base.clone(),
            reason: e.to_string(),
        })?;
        let status = res.status();
        let text = res.body_mut().read_to_string().unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status.is_success() {
            Ok(v)
        } else {
            Err(CtlError::Api {
                code: v["error"]["code"].as_str().unwrap_or("unknown").to_string(),
                message: v["error"]["message"]
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("HTTP {status}")),
            })
        }
    }
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn gib(v: &Value) -> String {
    v.as_u64()
        .map(|b| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64))
        .unwrap_or_else(|| "-".into())
}

fn table(header: &[&str]) -> Table {
    let mut t = Table::new();
    t.load_preset(NOTHING).set_header(header.to_vec());
    t
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
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let c = Client {
        agent,
        base: cli.global.endpoint.clone(),
        token,
    };
    let json = cli.global.output == Output::Json;
    let v = match &cli.cmd {
        Cmd::Nodes(NodesCmd::List) => c.call("GET", "/v1/nodes", None)?,
        Cmd::Nodes(NodesCmd::Show { node }) => c.call("GET", &format!("/v1/nodes/{node}"), None)?,
        Cmd::Tokens(TokensCmd::Create { ttl_s, uses }) => c.call(
            "POST",
            "/v1/join-tokens",
            Some(serde_json::json!({"ttl_s": ttl_s, "uses": uses})),
        )?,
        Cmd::Events { node, limit } => {
            let mut path = format!("/v1/events?limit={limit}");
            if let Some(n) = node {
                path.push_str(&format!("&node={n}"));
            }
            c.call("GET", &path, None)?
        }
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
        return Ok(());
    }
    match &cli.cmd {
        Cmd::Nodes(NodesCmd::List) => {
            let mut t = table(&[
                "NAME",
                "ID",
                "STATE",
                "SINCE",
                "LAST BEAT",
                "ADDRESS",
                "CPUS",
                "MEMORY",
                "GPUS",
            ]);
            for n in v["nodes"].as_array().into_iter().flatten() {
                t.add_row(vec![
                    s(&n["name"]),
                    s(&n["id"]),
                    s(&n["state"]),
                    s(&n["state_since"]),
                    n["last_heartbeat_age_ms"]
                        .as_u64()
                        .map(|m| format!("{m} ms ago"))
                        .unwrap_or_else(|| "-".into()),
                    s(&n["address"]),
                    s(&n["hardware"]["cpu"]["logical_cores"]),
                    gib(&n["hardware"]["memory"]["total_bytes"]),
                    n["hardware"]["gpus"]
                        .as_array()
                        .map(|g| g.len().to_string())
                        .unwrap_or_else(|| "0".into()),
                ]);
            }
            println!("{t}");
        }
        Cmd::Nodes(NodesCmd::Show { .. }) => print_node(&v),
        Cmd::Tokens(_) => {
            println!("token:      {}", s(&v["token"]));
            println!("uses:       {}", s(&v["uses"]));
            println!("expires at: {}", s(&v["expires_at"]));
        }
        Cmd::Events { .. } => {
            let mut t = table(&["SEQ", "TIME", "KIND", "NODE", "MESSAGE"]);
            for e in v["events"].as_array().into_iter().flatten() {
                t.add_row(vec![
                    s(&e["seq"]),
                    s(&e["time"]),
                    s(&e["kind"]),
                    s(&e["node"]),
                    s(&e["message"]),
                ]);
            }
            println!("{t}");
        }
    }
    Ok(())
}

fn print_node(n: &Value) {
    let h = &n["hardware"];
    let rows = [
        ("Name", s(&n["name"])),
        ("ID", s(&n["id"])),
        (
            "State",
            format!("{} ({})", s(&n["state"]), s(&n["state_reason"])),
        ),
        ("Since", s(&n["state_since"])),
        (
            "Last heartbeat",
            n["last_heartbeat_age_ms"]
                .as_u64()
                .map(|m| format!("{m} ms ago"))
                .unwrap_or_else(|| "-".into()),
        ),
        ("Connected", s(&n["connected"])),
        ("Address", s(&n["address"])),
        ("Agent version", s(&n["agent_version"])),
        ("Certificate until", s(&n["cert_not_after"])),
        ("Host name", s(&h["hostname"])),
        (
            "OS",
            format!(
                "{} {} (kernel {})",
                s(&h["os"]["name"]),
                s(&h["os"]["version"]),
                s(&h["os"]["kernel"])
            ),
        ),
        (
            "CPU",
            format!(
                "{} ({} logical, {} physical cores)",
                s(&h["cpu"]["brand"]),
                s(&h["cpu"]["logical_cores"]),
                s(&h["cpu"]["physical_cores"])
            ),
        ),
        (
            "Memory",
            format!(
                "{} total, {} available",
                gib(&h["memory"]["total_bytes"]),
                gib(&h["memory"]["available_bytes"])
            ),
        ),
    ];
    for (k, v) in rows {
        println!("{k:<18} {v}");
    }
    let gpus = h["gpus"].as_array().cloned().unwrap_or_default();
    if gpus.is_empty() {
        let nvml = &h["nvml"];
        println!(
            "{:<18} none ({})",
            "GPUs",
            nvml["reason"].as_str().unwrap_or("no NVIDIA GPU")
        );
    } else {
        println!("GPUs:");
        let mut t = table(&[
            "INDEX", "NAME", "UUID", "MEMORY", "UTIL", "TEMP", "POWER", "HEALTH",
        ]);
        for g in gpus {
            t.add_row(vec![
                s(&g["index"]),
                s(&g["name"]),
                s(&g["uuid"]),
                gib(&g["memory"]["total_bytes"]),
                g["utilization_gpu_percent"]
                    .as_u64()
                    .map(|u| format!("{u}%"))
                    .unwrap_or_else(|| "-".into()),
                g["temperature_c"]
                    .as_u64()
                    .map(|u| format!("{u} C"))
                    .unwrap_or_else(|| "-".into()),
                g["power_draw_mw"]
                    .as_u64()
                    .map(|u| format!("{:.0} W", u as f64 / 1000.0))
                    .unwrap_or_else(|| "-".into()),
                format!(
                    "{}{}",
                    s(&g["health"]["state"]),
                    g["health"]["reason"]
                        .as_str()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                ),
            ]);
        }
        println!("{t}");
    }
}
