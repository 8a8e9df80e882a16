//! Writes a starting corpus for every target into `fuzz/corpus/<target>/seed-*`: valid
//! messages of every kind, streams of frames, a real token and CSR. libFuzzer then mutates from
//! inputs that get past the first checks instead of having to discover a Hello or a signed CSR.
//!
//! Run with `cargo run --manifest-path fuzz/Cargo.toml --example seeds` (no nightly flags).

use std::collections::BTreeMap;
use std::path::Path;
use tandem_common::codec;
use tandem_common::hardware::{
    CpuInfo, DiskInfo, GpuInfo, HardwareDelta, HardwareReport, MemoryInfo,
};
use tandem_common::ids::NodeId;
use tandem_common::pki::NodeKey;
use tandem_common::proto::*;
use tandem_common::token::JoinToken;

fn report() -> HardwareReport {
    HardwareReport {
        hostname: "edge-1".into(),
        cpu: CpuInfo {
            brand: "AMD EPYC 9654".into(),
            vendor: "AuthenticAMD".into(),
            logical_cores: 192,
            physical_cores: Some(96),
            frequency_mhz: 2400,
            usage_percent: 12.5,
        },
        memory: MemoryInfo {
            total_bytes: 768 << 30,
            available_bytes: 700 << 30,
            used_bytes: 68 << 30,
            swap_total_bytes: 0,
            swap_used_bytes: 0,
        },
        disks: vec![DiskInfo::default()],
        gpus: vec![GpuInfo {
            uuid: "GPU-00000000-0000-0000-0000-000000000000".into(),
            name: Some("NVIDIA H100 80GB HBM3".into()),
            temperature_c: Some(40),
            throttle_reasons: Some(vec!["gpu_idle".into()]),
            unavailable: BTreeMap::from([("fan_speed_percent".into(), "not supported".into())]),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn main() {
    let key = NodeKey::generate().unwrap();
    let csr_pem = key.csr_pem("edge-1").unwrap();
    let ca = tandem_fuzz::test_ca();
    let token = JoinToken::generate(ca.pin());
    let node = NodeId::random();
    let issued = ca
        .sign_node_csr(&csr_pem, &node, 7, std::time::Duration::from_secs(3600))
        .unwrap();

    let hello = |join: Option<JoinRequest>| {
        AgentMsg::Hello(Box::new(Hello {
            protocol_version: PROTOCOL_VERSION,
            agent_version: "0.1.0".into(),
            name: "edge-1".into(),
            node_id: join.is_none().then(|| node.clone()),
            join,
            datagrams: true,
            jobs: vec![HeldJob {
                job_id: "j-1".into(),
                fencing_token: 3,
                state: HeldState::Running,
            }],
            exited: vec![],
            hardware: report(),
        }))
    };
    let agent = [
        hello(None),
        hello(Some(JoinRequest {
            token_id: token.id.clone(),
            token_secret: token.secret.clone(),
            csr_pem: csr_pem.clone(),
        })),
        AgentMsg::HardwareUpdate(Box::new(HardwareDelta {
            hostname: Some("edge-2".into()),
            gpus: Some(report().gpus),
            ..Default::default()
        })),
        AgentMsg::Pong { nonce: 9 },
        AgentMsg::Goodbye {
            reason: "shutting down".into(),
        },
        AgentMsg::JobStarted {
            job_id: "j-1".into(),
            fencing_token: 4,
        },
        AgentMsg::JobExited(JobExitReport {
            job_id: "j-1".into(),
            fencing_token: 4,
            code: Some(1),
            signal: None,
            cause: ExitCause::Exited,
            reason: "exited".into(),
        }),
        AgentMsg::Logs {
            request: 1,
            stdout: vec!["a".into(), "b".into()],
            stderr: vec![],
            error: Some("gone".into()),
        },
        AgentMsg::RenewCertificate {
            csr_pem: csr_pem.clone(),
        },
        AgentMsg::CheckJoin(Box::new(CheckJoin {
            protocol_version: PROTOCOL_VERSION,
            name: "edge-1".into(),
            token: Some(CheckToken {
                token_id: token.id.clone(),
                token_secret: token.secret.clone(),
            }),
            hardware: report(),
        })),
    ];
    let coord = [
        CoordMsg::Reject(Reject {
            code: RejectCode::BadToken,
            reason: "no".into(),
        }),
        CoordMsg::Welcome(Welcome {
            node_id: node.clone(),
            name: "edge-1".into(),
            session: 5,
            heartbeat_ms: 1000,
            lease_ms: 10_000,
            fence_kill_timeout_ms: 250,
        }),
        CoordMsg::Joined(Joined {
            node_id: node.clone(),
            name: "edge-1".into(),
            cert_pem: issued.cert_pem.clone(),
            ca_pem: ca.cert_pem().into(),
        }),
        CoordMsg::Ping { nonce: 2 },
        CoordMsg::StartJob(Box::new(StartJob {
            job_id: "j-1".into(),
            job_name: "train".into(),
            fencing_token: 4,
            command: vec!["python".into(), "train.py".into()],
            env: BTreeMap::from([("A".into(), "1".into())]),
            workdir: Some("/srv".into()),
            gpus: vec!["GPU-0".into()],
        })),
        CoordMsg::StopJob {
            job_id: "j-1".into(),
            fencing_token: 4,
            kill_timeout_ms: 500,
        },
        CoordMsg::TailLogs {
            request: 1,
            job_id: "j-1".into(),
            lines: 50,
        },
        CoordMsg::CertificateRenewed {
            cert_pem: issued.cert_pem.clone(),
            not_after_unix: issued.not_after_unix,
        },
        CoordMsg::RenewalRefused {
            reason: "not now".into(),
        },
        CoordMsg::JoinCheck(JoinCheck {
            token: Verdict::Ok("3 of 5 uses left".into()),
            cluster: Verdict::Failed("no such cluster".into()),
            admission: Verdict::Skipped("the cluster step failed".into()),
        }),
    ];
    let beat = AgentDatagram::Heartbeat(Heartbeat {
        seq: 300,
        last_rtt_us: 900,
        load: LoadSummary {
            cpu_centi_percent: 1250,
            memory_available_mib: 700 << 10,
            jobs_running: 1,
        },
    });
    let ack = CoordDatagram::HeartbeatAck {
        seq: 300,
        lease_ms: 10_000,
    };

    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let write = |target: &str, name: String, bytes: &[u8]| {
        let dir = root.join(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };
    let agent: Vec<Vec<u8>> = agent.iter().map(|m| codec::encode(m).unwrap()).collect();
    let coord: Vec<Vec<u8>> = coord.iter().map(|m| codec::encode(m).unwrap()).collect();
    for (i, b) in agent.iter().enumerate() {
        write("agent_msg", format!("seed-{i}"), b);
    }
    for (i, b) in coord.iter().enumerate() {
        write("coord_msg", format!("seed-{i}"), b);
    }
    write("datagrams", "seed-0".into(), &codec::encode(&beat).unwrap());
    write("datagrams", "seed-1".into(), &codec::encode(&ack).unwrap());
    // Streams: [limit selector, read size, frames...]. Limit 5 is DEFAULT_MAX_FRAME, 4 is 1 KiB.
    let stream = |limit: u8, chunk: u8, bodies: &[Vec<u8>]| {
        let mut out = vec![limit, chunk];
        for b in bodies {
            out.extend_from_slice(&(b.len() as u32).to_be_bytes());
            out.extend_from_slice(b);
        }
        out
    };
    write("frame_decoder", "seed-0".into(), &stream(5, 7, &agent));
    write("frame_decoder", "seed-1".into(), &stream(5, 0, &coord));
    write("frame_decoder", "seed-2".into(), &stream(4, 3, &agent[3..]));
    write(
        "frame_decoder",
        "seed-3".into(),
        &stream(3, 1, &coord[3..4]),
    );
    write(
        "join_request",
        "seed-0".into(),
        format!("T{token}\n{csr_pem}").as_bytes(),
    );
    let csr_der: Vec<u8> = {
        use base64::Engine;
        let b64: String = csr_pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .collect();
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap()
    };
    let mut d = vec![b'D'];
    d.extend_from_slice(&csr_der);
    write("join_request", "seed-1".into(), &d);
    println!("seeds written under {}", root.display());
}
