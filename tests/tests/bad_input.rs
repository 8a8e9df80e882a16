//! End to end: bad input at both ports of a real coordinator with two real agents.
//!
//! After every attack the same checks run ([`Fleet::unharmed`]): the coordinator still answers
//! `/healthz`, both agents are still `ready` and beating, and neither has had a `node_state`
//! event since the attack began (they never even went suspect). Where the coordinator refuses
//! something, the refusal must say what was wrong: the `Reject` code and reason, the log line
//! (with the peer's address) or the API's error envelope.

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};
use tandem_common::codec::{self, DEFAULT_MAX_FRAME};
use tandem_common::hardware::HardwareReport;
use tandem_common::ids::NodeId;
use tandem_common::pki::{CertificateAuthority, NodeKey};
use tandem_common::proto::*;
use tandem_common::tls;
use tandem_common::token::JoinToken;
use tandem_tests::*;
use tokio::time::timeout;

const LONG: Duration = Duration::from_secs(30);
/// Bound on every single network await.
const T: Duration = Duration::from_secs(10);

/// A coordinator and two ready agents.
struct Fleet {
    coord: Coordinator,
    _agents: Vec<Proc>,
    names: Vec<String>,
    ids: Vec<String>,
    _tmp: tempfile::TempDir,
}

fn fleet(prefix: &str) -> Result<Fleet> {
    let tmp = tempfile::tempdir()?;
    let coord = Coordinator::start(&tmp.path().join("coord"), None)?;
    let token = coord.api.token(2)?;
    let names: Vec<String> = (1..=2).map(|i| format!("{prefix}-{i}")).collect();
    let mut agents = Vec::new();
    for n in &names {
        agents.push(start_agent(
            &coord.quic,
            &tmp.path().join(n),
            Some(&token),
            n,
            &[],
        )?);
    }
    wait_for(LONG, "both agents ready", || {
        names
            .iter()
            .all(|n| coord.api.state(n).as_deref() == Some("ready"))
            .then_some(())
    })?;
    let mut ids = Vec::new();
    for n in &names {
        let node = coord.api.node(n).context("node")?;
        ids.push(node["id"].as_str().context("id")?.to_string());
    }
    Ok(Fleet {
        coord,
        _agents: agents,
        names,
        ids,
        _tmp: tmp,
    })
}

impl Fleet {
    fn api(&self) -> &Api {
        &self.coord.api
    }

    fn quic(&self) -> SocketAddr {
        self.coord.quic.parse().expect("quic address")
    }

    /// The seq of the newest event: "the attack begins now".
    fn mark(&self) -> Result<u64> {
        Ok(self
            .api()
            .events()?
            .last()
            .and_then(|e| e["seq"].as_u64())
            .unwrap_or(0))
    }

    /// The checks after every attack (see the module docs).
    fn unharmed(&self, since: u64, what: &str) -> Result<()> {
        let (status, body) = self
            .api()
            .request("GET", "/healthz", None, None)
            .with_context(|| format!("after {what}: /healthz"))?;
        ensure!(
            status == 200 && body["status"] == "ok",
            "after {what}: /healthz answered {status} {body}"
        );
        for n in &self.names {
            let node = self
                .api()
                .node(n)
                .with_context(|| format!("after {what}: node {n}"))?;
            ensure!(
                node["state"] == "ready",
                "after {what}: {n} is not ready: {node}"
            );
            let age = node["last_heartbeat_age_ms"].as_u64().unwrap_or(u64::MAX);
            ensure!(age < 1000, "after {what}: {n} has not beaten for {age} ms");
        }
        let path = format!("/v1/events?after={since}&limit=1000");
        let disturbed: Vec<Value> = self.api().get(&path)?["events"]
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|e| {
                e["kind"] == "node_state"
                    && self
                        .ids
                        .iter()
                        .any(|id| e["node"].as_str() == Some(id.as_str()))
            })
            .collect();
        ensure!(
            disturbed.is_empty(),
            "after {what}: the agents changed state: {disturbed:?}"
        );
        Ok(())
    }

    /// Waits until the coordinator's log has a line naming `peer` and containing `needle`.
    fn logged(&self, peer: SocketAddr, needle: &str) -> Result<()> {
        let p = format!("peer={peer}");
        wait_for(
            Duration::from_secs(5),
            &format!("a log line for {peer} with {needle:?}"),
            || {
                self.coord
                    .proc
                    .log_text()
                    .lines()
                    .any(|l| l.contains(&p) && l.contains(needle))
                    .then_some(())
            },
        )
        .with_context(|| format!("log:\n{}", self.coord.proc.log_text()))
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

/// A QUIC client endpoint of its own, so that its address names it in the coordinator's log.
fn client() -> Result<quinn::Endpoint> {
    Ok(quinn::Endpoint::client("127.0.0.1:0".parse()?)?)
}

async fn connect(
    ep: &quinn::Endpoint,
    cfg: quinn::ClientConfig,
    addr: SocketAddr,
) -> Result<quinn::Connection> {
    let connecting = ep.connect_with(cfg, addr, tls::SERVER_NAME)?;
    Ok(timeout(T, connecting)
        .await
        .context("handshake timed out")??)
}

/// Opens the control stream, writes `bytes` and reads the coordinator's one answer.
async fn exchange(conn: &quinn::Connection, bytes: &[u8]) -> Result<CoordMsg> {
    let (mut send, mut recv) = timeout(T, conn.open_bi()).await.context("open_bi")??;
    timeout(T, send.write_all(bytes)).await.context("write")??;
    let msg = timeout(
        T,
        codec::read_msg::<CoordMsg, _>(&mut recv, DEFAULT_MAX_FRAME),
    )
    .await
    .context("no answer within 10 s")??;
    msg.context("the control stream ended without an answer")
}

/// Expects a `Reject` with `code` whose reason contains every one of `words`, then the close.
async fn expect_reject(
    conn: &quinn::Connection,
    answer: CoordMsg,
    code: RejectCode,
    words: &[&str],
) -> Result<String> {
    let CoordMsg::Reject(r) = answer else {
        bail!("expected a Reject({code:?}), got {answer:?}");
    };
    ensure!(r.code == code, "expected {code:?}, got {r:?}");
    for w in words {
        ensure!(
            r.reason.contains(w),
            "the reason {:?} lacks {w:?}",
            r.reason
        );
    }
    let closed = timeout(T, conn.closed())
        .await
        .context("the refused connection stays open")?;
    ensure!(
        matches!(&closed, quinn::ConnectionError::ApplicationClosed(c) if &c.reason[..] == b"refused"),
        "closed how? {closed:?}"
    );
    Ok(r.reason)
}

fn hello(version: u16, node_id: Option<NodeId>, join: Option<JoinRequest>) -> AgentMsg {
    AgentMsg::Hello(Box::new(Hello {
        protocol_version: version,
        agent_version: "0.0.0-test".into(),
        name: "intruder".into(),
        node_id,
        join,
        datagrams: true,
        jobs: vec![],
        exited: vec![],
        hardware: HardwareReport::default(),
    }))
}

/// The CA pin of a join token.
fn pin_of(token: &str) -> Result<tandem_common::pki::CaPin> {
    Ok(token.parse::<JoinToken>()?.ca_pin)
}

fn frame(msg: &AgentMsg) -> Vec<u8> {
    codec::encode_frame(msg, DEFAULT_MAX_FRAME).expect("encodes")
}

/// A small deterministic generator (xorshift64*), seeded per run and printed.
struct Rng(u64);

impl Rng {
    fn new() -> Rng {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            | 1;
        println!("random seed {seed:#x}");
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for b in buf {
            *b = self.next() as u8;
        }
    }
}

#[test]
fn junk_datagrams_and_half_open_connections_disturb_nobody() -> Result<()> {
    let f = fleet("junk")?;
    let rt = runtime();
    let addr = f.quic();

    // 2,000 random datagrams of 1..=1500 bytes, then hand-made non-QUIC and broken-QUIC junk.
    let since = f.mark()?;
    let sock = UdpSocket::bind("127.0.0.1:0")?;
    let mut rng = Rng::new();
    let mut buf = vec![0u8; 1500];
    for i in 0..2000 {
        let len = 1 + (rng.next() % 1500) as usize;
        rng.fill(&mut buf[..len]);
        sock.send_to(&buf[..len], addr)?;
        if i % 200 == 199 {
            // Pace a little: this is junk, not a bandwidth test.
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    let mut crafted: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"GET / HTTP/1.1\r\nHost: tandem\r\n\r\n".to_vec(),
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(),
        vec![0u8; 1200],
        vec![0xFF; 1500],
    ];
    // A long header with an unknown version (asks for version negotiation).
    let mut p = vec![0xC0, 0x0A, 0x1A, 0x2A, 0x3A, 8];
    p.extend([1u8; 8]);
    p.push(8);
    p.extend([2u8; 8]);
    p.resize(1200, 0);
    crafted.push(p);
    // A QUIC v1 Initial header followed by garbage where the protected payload should be.
    let mut p = vec![0xC3, 0, 0, 0, 1, 8];
    let mut cid = [0u8; 8];
    rng.fill(&mut cid);
    p.extend(cid);
    p.extend([0u8, 0, 0x44, 0xD0]);
    let mut junk = vec![0u8; 1200 - p.len()];
    rng.fill(&mut junk);
    p.extend(junk);
    crafted.push(p);
    // Short-header packets for connections that do not exist.
    for _ in 0..50 {
        let mut p = vec![0u8; 64];
        rng.fill(&mut p);
        p[0] = 0x40 | (p[0] & 0x3F);
        crafted.push(p);
    }
    for p in &crafted {
        sock.send_to(p, addr)?;
    }
    // The endpoint still does real handshakes.
    rt.block_on(async {
        let ep = client()?;
        let pin = pin_of(&f.api().token(1)?)?;
        let conn = connect(&ep, tls::join_client_config(pin)?, addr).await?;
        conn.close(0u32.into(), b"done");
        anyhow::Ok(())
    })
    .context("a real handshake after the junk")?;
    f.unharmed(since, "2,000 random datagrams and non-QUIC junk")?;

    // 200 concurrent connections that complete the handshake and never open a stream. The
    // handshakes go in waves of 20 (all 200 connections stay open together): 200 handshakes
    // at once on a loaded 2-core machine can outlast the coordinator's 5 s handshake limit,
    // which is a refusal by design, not what this case is about.
    let since = f.mark()?;
    let pin = pin_of(&f.api().token(1)?)?;
    let cfg = tls::join_client_config(pin)?;
    let ep = rt.block_on(async { client() })?;
    let peer = ep.local_addr()?;
    let started = Instant::now();
    let watchers = rt
        .block_on(async {
            let mut watchers = Vec::new();
            for _ in 0..10 {
                let mut wave = tokio::task::JoinSet::new();
                for _ in 0..20 {
                    let connecting = ep.connect_with(cfg.clone(), addr, tls::SERVER_NAME)?;
                    wave.spawn(async move { timeout(T, connecting).await });
                }
                while let Some(r) = wave.join_next().await {
                    let conn = r?.context("a handshake timed out")??;
                    let open_at = Instant::now();
                    // Watch for the coordinator's close from now on, whatever the test does.
                    watchers.push(tokio::spawn(async move {
                        let why = timeout(Duration::from_secs(15), conn.closed()).await;
                        (open_at, why, Instant::now())
                    }));
                }
            }
            anyhow::Ok(watchers)
        })
        .with_context(|| {
            let p = format!("peer={peer}");
            let log = f.coord.proc.log_text();
            let lines: Vec<&str> = log.lines().filter(|l| l.contains(&p)).collect();
            format!(
                "200 handshakes; the coordinator said:\n{}",
                lines.join("\n")
            )
        })?;
    let handshaken = started.elapsed();
    f.unharmed(since, "200 half-open connections (while open)")?;
    // The coordinator closes each of them within its Hello timeout (5 s).
    let closes = rt.block_on(async {
        let mut out = Vec::new();
        for w in watchers {
            out.push(w.await?);
        }
        anyhow::Ok(out)
    })?;
    let mut longest = Duration::ZERO;
    for (open_at, why, closed_at) in closes {
        let why = why.context("a half-open connection was not closed within 15 s")?;
        ensure!(
            matches!(&why, quinn::ConnectionError::ApplicationClosed(c) if &c.reason[..] == b"no control stream"),
            "closed how? {why:?}"
        );
        longest = longest.max(closed_at - open_at);
    }
    println!(
        "200 half-open connections: handshakes done after {handshaken:?}; the longest one stayed open {longest:?}"
    );
    ensure!(
        longest < Duration::from_secs(8),
        "a half-open connection stayed open {longest:?}"
    );
    f.logged(
        ep.local_addr()?,
        "refused a connection: no control stream within 5 s",
    )?;
    f.unharmed(since, "200 half-open connections (after)")?;
    Ok(())
}

#[test]
fn bad_frames_versions_certificates_and_impersonation_are_refused_with_reasons() -> Result<()> {
    let f = fleet("proto")?;
    let rt = runtime();
    let addr = f.quic();
    let tok: JoinToken = f.api().token(5)?.parse()?;

    // One client endpoint per case: its address finds the case's line in the log.
    struct Case {
        what: &'static str,
        bytes: Vec<u8>,
        code: RejectCode,
        words: Vec<String>,
        finish: bool,
    }
    let mut undecodable = codec::encode(&hello(PROTOCOL_VERSION, None, None))?;
    undecodable.push(0);
    let mut undecodable_frame = (undecodable.len() as u32).to_be_bytes().to_vec();
    undecodable_frame.extend(&undecodable);
    let mut garbage_frame = 64u32.to_be_bytes().to_vec();
    garbage_frame.extend([0xFFu8; 64]);
    let mut truncated = 100u32.to_be_bytes().to_vec();
    truncated.extend([0u8; 10]);
    let mut huge = u32::MAX.to_be_bytes().to_vec();
    huge.extend([0u8; 16]);
    let bad_secret = JoinRequest {
        token_id: tok.id.clone(),
        token_secret: "A".repeat(43),
        csr_pem: NodeKey::generate()?.csr_pem("x")?,
    };
    let s = |v: &[&str]| v.iter().map(|w| w.to_string()).collect::<Vec<_>>();
    let cases = vec![
        Case {
            what: "Hello with protocol version 99",
            bytes: frame(&hello(99, None, None)),
            code: RejectCode::UnsupportedVersion,
            words: s(&["version 99", "speaks 2"]),
            finish: false,
        },
        Case {
            what: "a frame header claiming 4 GiB",
            bytes: huge,
            code: RejectCode::ProtocolViolation,
            words: s(&["4294967295", "4194304-byte limit"]),
            finish: false,
        },
        Case {
            what: "a Hello with a trailing byte",
            bytes: undecodable_frame,
            code: RejectCode::ProtocolViolation,
            words: s(&["does not decode", "trailing"]),
            finish: false,
        },
        Case {
            what: "a frame of 0xFF bytes",
            bytes: garbage_frame,
            code: RejectCode::ProtocolViolation,
            words: s(&["not a Hello"]),
            finish: false,
        },
        Case {
            what: "a frame cut short",
            bytes: truncated,
            code: RejectCode::ProtocolViolation,
            words: s(&["ended inside a frame"]),
            finish: true,
        },
        Case {
            what: "a Pong as the first frame",
            bytes: frame(&AgentMsg::Pong { nonce: 7 }),
            code: RejectCode::ProtocolViolation,
            words: s(&["not a Hello"]),
            finish: false,
        },
        Case {
            what: "a Hello with neither a certificate nor a join request",
            bytes: frame(&hello(PROTOCOL_VERSION, None, None)),
            code: RejectCode::ProtocolViolation,
            words: s(&["join with a token"]),
            finish: false,
        },
        Case {
            what: "a join with a wrong token secret",
            bytes: frame(&hello(PROTOCOL_VERSION, None, Some(bad_secret))),
            code: RejectCode::BadToken,
            words: s(&["join token is not valid"]),
            finish: false,
        },
    ];
    for case in cases {
        let since = f.mark()?;
        let (peer, reason) = rt
            .block_on(async {
                let ep = client()?;
                let conn = connect(&ep, tls::join_client_config(tok.ca_pin)?, addr).await?;
                let answer = if case.finish {
                    let (mut send, mut recv) = timeout(T, conn.open_bi()).await??;
                    timeout(T, send.write_all(&case.bytes)).await??;
                    send.finish()?;
                    timeout(
                        T,
                        codec::read_msg::<CoordMsg, _>(&mut recv, DEFAULT_MAX_FRAME),
                    )
                    .await??
                    .context("no answer")?
                } else {
                    exchange(&conn, &case.bytes).await?
                };
                let words: Vec<&str> = case.words.iter().map(String::as_str).collect();
                let reason = expect_reject(&conn, answer, case.code, &words).await?;
                anyhow::Ok((ep.local_addr()?, reason))
            })
            .with_context(|| case.what)?;
        println!("{}: refused: {reason}", case.what);
        f.logged(peer, &reason)?;
        f.unharmed(since, case.what)?;
    }

    // An expired token gets its own reason.
    let since = f.mark()?;
    let short = f.api().post(
        "/v1/join-tokens",
        &serde_json::json!({"ttl_s": 1, "uses": 1}),
    )?;
    let short: JoinToken = short["token"].as_str().context("token")?.parse()?;
    let created = Instant::now();
    wait_for(Duration::from_secs(5), "the token to expire", || {
        (created.elapsed() > Duration::from_millis(1100)).then_some(())
    })?;
    let join = JoinRequest {
        token_id: short.id.clone(),
        token_secret: short.secret.clone(),
        csr_pem: NodeKey::generate()?.csr_pem("late")?,
    };
    rt.block_on(async {
        let ep = client()?;
        let conn = connect(&ep, tls::join_client_config(short.ca_pin)?, addr).await?;
        let answer = exchange(&conn, &frame(&hello(PROTOCOL_VERSION, None, Some(join)))).await?;
        expect_reject(&conn, answer, RejectCode::BadToken, &["expired"]).await
    })
    .context("expired token")?;
    f.unharmed(since, "an expired join token")?;
    ensure!(f.api().nodes()?.len() == 2, "a refused join made a node");

    // A certificate from another CA, naming agent 1: the handshake (or the first exchange)
    // fails and no node appears. The rogue client trusts the real CA for the server.
    let since = f.mark()?;
    let ca_pem = std::fs::read_to_string(f.coord.dir.join("ca.pem"))?;
    let rogue_ca = CertificateAuthority::generate("rogue CA")?;
    let rogue_key = NodeKey::generate()?;
    let victim = NodeId::parse(&f.ids[0]).context("node id")?;
    let rogue_cert = rogue_ca.sign_node_csr(
        &rogue_key.csr_pem("rogue")?,
        &victim,
        9,
        Duration::from_secs(3600),
    )?;
    let rogue_cfg = tls::node_client_config(&ca_pem, &rogue_cert.cert_pem, &rogue_key.key_pem())?;
    let (peer, outcome) = rt.block_on(async {
        let ep = client()?;
        let outcome = match connect(&ep, rogue_cfg, addr).await {
            Err(e) => Err(e),
            Ok(conn) => {
                exchange(
                    &conn,
                    &frame(&hello(PROTOCOL_VERSION, Some(victim.clone()), None)),
                )
                .await
            }
        };
        anyhow::Ok((ep.local_addr()?, outcome))
    })?;
    match outcome {
        Ok(m) => bail!("a certificate from another CA got an answer: {m:?}"),
        Err(e) => {
            println!("certificate from another CA: refused: {e:#}");
            ensure!(
                format!("{e:#}").contains("certificate"),
                "refused how? {e:#}"
            );
        }
    }
    f.logged(peer, "refused a connection at the QUIC/TLS handshake")?;
    f.logged(peer, "UnknownIssuer")?;
    f.unharmed(since, "a certificate from another CA")?;
    ensure!(f.api().nodes()?.len() == 2, "a rogue node appeared");

    // Join a third node by hand, then present its certificate with a Hello claiming agent 1.
    let since = f.mark()?;
    let key = NodeKey::generate()?;
    let join = JoinRequest {
        token_id: tok.id.clone(),
        token_secret: tok.secret.clone(),
        csr_pem: key.csr_pem("intruder")?,
    };
    let joined = rt.block_on(async {
        let ep = client()?;
        let conn = connect(&ep, tls::join_client_config(tok.ca_pin)?, addr).await?;
        let answer = exchange(&conn, &frame(&hello(PROTOCOL_VERSION, None, Some(join)))).await?;
        conn.close(0u32.into(), b"joined");
        match answer {
            CoordMsg::Joined(j) => anyhow::Ok(j),
            other => bail!("join by hand failed: {other:?}"),
        }
    })?;
    let x = joined.node_id.clone();
    let x_cfg = || tls::node_client_config(&joined.ca_pem, &joined.cert_pem, &key.key_pem());
    let (peer, reason) = rt.block_on(async {
        let ep = client()?;
        let conn = connect(&ep, x_cfg()?, addr).await?;
        let answer = exchange(
            &conn,
            &frame(&hello(PROTOCOL_VERSION, Some(victim.clone()), None)),
        )
        .await?;
        let reason = expect_reject(
            &conn,
            answer,
            RejectCode::ProtocolViolation,
            &[victim.as_str(), x.as_str()],
        )
        .await?;
        anyhow::Ok((ep.local_addr()?, reason))
    })?;
    println!("impersonation: refused: {reason}");
    f.logged(peer, &reason)?;
    f.unharmed(since, "a Hello claiming another node's id")?;
    ensure!(
        f.api().node(&f.ids[0]).context("agent 1")?["name"] == f.names[0],
        "agent 1's record changed"
    );
    // Control: the same certificate with its own id is welcome, so the refusal above was about
    // the claim, not a broken hand-made client.
    rt.block_on(async {
        let ep = client()?;
        let conn = connect(&ep, x_cfg()?, addr).await?;
        let answer = exchange(
            &conn,
            &frame(&hello(PROTOCOL_VERSION, Some(x.clone()), None)),
        )
        .await?;
        conn.close(0u32.into(), b"bye");
        match answer {
            CoordMsg::Welcome(w) if w.node_id == x => anyhow::Ok(()),
            other => bail!("the hand-joined node was not welcome: {other:?}"),
        }
    })?;
    Ok(())
}

/// Checks the error envelope: status, code, and words of the message.
fn refused(
    (status, body): (u16, Value),
    want_status: u16,
    want_code: &str,
    words: &[&str],
) -> Result<()> {
    ensure!(
        status == want_status,
        "expected {want_status}, got {status} {body}"
    );
    let obj = body.as_object().context("an object")?;
    ensure!(obj.len() == 1, "only `error` at the top: {body}");
    let err = body["error"].as_object().context("an `error` object")?;
    ensure!(err.len() == 2, "only code and message: {body}");
    ensure!(body["error"]["code"] == want_code, "code: {body}");
    let msg = body["error"]["message"].as_str().context("message")?;
    for w in words {
        ensure!(msg.contains(w), "message {msg:?} lacks {w:?}");
    }
    Ok(())
}

/// POSTs `body` over a raw connection, reading the answer while the body is still being
/// written (a server may answer early and close).
fn raw_post(admin: SocketAddr, path: &str, token: &str, body: Vec<u8>) -> Result<(u16, Value)> {
    let mut s = TcpStream::connect_timeout(&admin, T)?;
    s.set_read_timeout(Some(T))?;
    s.set_write_timeout(Some(T))?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {admin}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    let mut w = s.try_clone()?;
    let writer = std::thread::spawn(move || {
        let _ = w.write_all(&body);
    });
    let mut answer = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
            // A reset after the answer (the server closed with our body unread).
            Err(_) if !answer.is_empty() => break,
            Err(e) => return Err(e.into()),
        }
    }
    let _ = s.shutdown(std::net::Shutdown::Both);
    let _ = writer.join();
    let text = String::from_utf8_lossy(&answer);
    let (head, body) = text.split_once("\r\n\r\n").context("an HTTP answer")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("status in {head:?}"))?;
    Ok((
        status,
        serde_json::from_str(body).unwrap_or(Value::String(body.into())),
    ))
}

#[test]
fn admin_api_refuses_bad_requests_in_one_envelope() -> Result<()> {
    let f = fleet("admin")?;
    let api = f.api();
    let tok = api.token.clone();
    let since = f.mark()?;
    let good = br#"{"ttl_s":600,"uses":1}"#;

    refused(
        api.request("GET", "/v1/nodes", None, None)?,
        401,
        "unauthenticated",
        &["Authorization"],
    )?;
    refused(
        api.request("GET", "/v1/nodes", Some("not-the-token"), None)?,
        401,
        "unauthenticated",
        &["token is wrong"],
    )?;
    refused(
        api.request("POST", "/v1/join-tokens", Some(""), Some(good))?,
        401,
        "unauthenticated",
        &[],
    )?;
    // Over raw TCP: the server answers 413 after 64 KiB and closes, so a client that only
    // reads once its whole body is written (ureq) sees a broken pipe instead of the answer.
    let admin: SocketAddr = api.base.trim_start_matches("http://").parse()?;
    let mut big = br#"{"ttl_s":600,"uses":1,"pad":""#.to_vec();
    big.resize((1 << 20) - 2, b'x');
    big.extend(br#""}"#);
    refused(
        raw_post(admin, "/v1/join-tokens", &tok, big)?,
        413,
        "invalid_argument",
        &["65536-byte limit"],
    )?;
    refused(
        api.request("POST", "/v1/join-tokens", Some(&tok), Some(b"{\"ttl_s\":"))?,
        400,
        "invalid_argument",
        &["request body refused"],
    )?;
    refused(
        api.request(
            "POST",
            "/v1/join-tokens",
            Some(&tok),
            Some(b"\xff\xfe junk"),
        )?,
        400,
        "invalid_argument",
        &[],
    )?;
    refused(
        api.request(
            "POST",
            "/v1/join-tokens",
            Some(&tok),
            Some(br#"{"ttl_s":600,"uses":1,"colour":"red"}"#),
        )?,
        400,
        "invalid_argument",
        &["colour"],
    )?;
    refused(
        api.request(
            "POST",
            "/v1/join-tokens",
            Some(&tok),
            Some(br#"{"ttl_s":0}"#),
        )?,
        400,
        "invalid_argument",
        &["ttl_s"],
    )?;
    refused(
        api.request(
            "POST",
            "/v1/join-tokens",
            Some(&tok),
            Some(br#"{"uses":0}"#),
        )?,
        400,
        "invalid_argument",
        &["uses"],
    )?;
    refused(
        api.request("GET", "/v1/no-such-thing", Some(&tok), None)?,
        404,
        "not_found",
        &[],
    )?;
    refused(
        api.request("GET", "/v1/nodes/no-such-node", Some(&tok), None)?,
        404,
        "not_found",
        &["no-such-node"],
    )?;
    refused(
        api.request("GET", "/v1/events?limit=abc", Some(&tok), None)?,
        400,
        "invalid_argument",
        &["limit"],
    )?;
    // A refusal sent before the body has arrived keeps the connection usable: the server
    // reads the body first. Before, it answered 401 and closed without `Connection: close`,
    // so a keep-alive client's next request on that connection met a dead peer.
    for (token, want) in [(None, "401"), (Some(tok.as_str()), "200")] {
        let answers = late_body_then_get(admin, &format!("/v1/nodes/{}/undrain", f.ids[0]), token)?;
        ensure!(
            answers.len() == 2
                && answers[0].starts_with(&format!("HTTP/1.1 {want}"))
                && answers[1].starts_with("HTTP/1.1 200"),
            "a late body with token {token:?}, then GET /healthz on one connection: {answers:?}"
        );
    }
    f.unharmed(since, "bad admin requests")?;

    // Raw junk at the admin port: answered or dropped, never fatal.
    let since = f.mark()?;
    let mut rng = Rng::new();
    let mut junk = vec![0u8; 4096];
    rng.fill(&mut junk);
    let long_header = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Long: {}\r\n\r\n",
        "a".repeat(1 << 20)
    );
    for payload in [
        junk,
        b"\r\n\r\n\r\n".to_vec(),
        b"BREW /coffee HTCPCP/1.0\r\n\r\n".to_vec(),
        long_header.into_bytes(),
    ] {
        let mut s = TcpStream::connect_timeout(&admin, T)?;
        s.set_read_timeout(Some(T))?;
        s.set_write_timeout(Some(T))?;
        let _ = s.write_all(&payload);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut answer = Vec::new();
        // Read whatever comes until the server closes (or the timeout ends the wait).
        let _ = s.take(64 * 1024).read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        ensure!(
            answer.is_empty() || text.starts_with("HTTP/1.1 4"),
            "junk got {text:?}"
        );
    }
    f.unharmed(since, "raw junk at the admin port")?;
    Ok(())
}

/// On one keep-alive connection: a POST to `path` (a route that ignores the body) whose 2-byte
/// body comes 300 ms after its head, then `GET /healthz`. Returns each answer's head.
fn late_body_then_get(admin: SocketAddr, path: &str, token: Option<&str>) -> Result<Vec<String>> {
    let mut s = TcpStream::connect_timeout(&admin, T)?;
    s.set_read_timeout(Some(T))?;
    s.set_write_timeout(Some(T))?;
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    s.write_all(
        format!(
            "POST {path} HTTP/1.1\r\nHost: {admin}\r\n{auth}\
             Content-Type: application/json\r\nContent-Length: 2\r\n\r\n"
        )
        .as_bytes(),
    )?;
    std::thread::sleep(Duration::from_millis(300));
    let mut heads = Vec::new();
    // Written blind: the server may have closed already (the bug this guards against).
    if s.write_all(b"{}").is_ok() {
        heads.extend(read_http_answer(&mut s).map(|(head, _)| head));
    }
    if s.write_all(format!("GET /healthz HTTP/1.1\r\nHost: {admin}\r\n\r\n").as_bytes())
        .is_ok()
    {
        heads.extend(read_http_answer(&mut s).map(|(head, _)| head));
    }
    Ok(heads)
}

/// The `tandem_quic_connections` gauge from `/metrics`.
fn quic_connections(api: &Api) -> Option<u64> {
    let (_, body) = api.request("GET", "/metrics", None, None).ok()?;
    body.as_str()?
        .lines()
        .find_map(|l| l.strip_prefix("tandem_quic_connections "))?
        .trim()
        .parse()
        .ok()
}

/// 1,000 handshakes started at once that never finish (the QUIC analogue of a SYN flood): the
/// client's Initial packets reach the coordinator through a relay that drops everything coming
/// back, so each handshake stays half-open on the coordinator's side. The coordinator holds at
/// most its bound of handshakes in progress (512) and refuses the rest at once; the agents never
/// notice; every half-open handshake is dropped after the handshake limit (5 s), each refusal
/// logged (within the log budget).
#[test]
fn a_thousand_half_open_handshakes_disturb_nobody() -> Result<()> {
    let f = fleet("flood")?;
    let rt = runtime();
    let relay = relay::Relay::start(&f.coord.quic)?;
    relay.drop_down(true);
    let relay_addr: SocketAddr = relay.addr().parse()?;
    let since = f.mark()?;
    let before = quic_connections(f.api()).context("the connection gauge")?;
    let pin = pin_of(&f.api().token(1)?)?;
    let cfg = tls::join_client_config(pin)?;
    let _guard = rt.enter();
    let ep = client()?;
    // Paced at about 1,000 a second so that the burst of 1,200-byte Initial packets does not
    // overflow the relay's socket buffer: every handshake must start inside the coordinator's
    // 5 s handshake limit for all of them to be held at once.
    let pending = rt.block_on(async {
        let mut pending = Vec::new();
        for i in 0..1000 {
            pending.push(ep.connect_with(cfg.clone(), relay_addr, tls::SERVER_NAME)?);
            if i % 10 == 9 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        anyhow::Ok(pending)
    })?;
    // As many as the bound allows are held at once on the coordinator's side, the rest refused.
    let peak = wait_for(LONG, "the handshake bound reached", || {
        let n = quic_connections(f.api())?;
        (n >= before + 512).then_some(n)
    })?;
    wait_for(LONG, "the handshakes beyond the bound refused", || {
        f.coord
            .proc
            .log_text()
            .contains("512 handshakes are in progress; try again later")
            .then_some(())
    })?;
    f.unharmed(since, "1,000 half-open handshakes (while held)")?;
    // ... and every one is dropped after the handshake limit.
    let started = Instant::now();
    wait_for(LONG, "the half-open handshakes to be dropped", || {
        (quic_connections(f.api())? <= before).then_some(())
    })?;
    println!(
        "1,000 half-open handshakes: peak gauge {peak} (bound 512 + {before} agents), all dropped {:?} after the peak",
        started.elapsed()
    );
    ensure!(
        peak <= before + 512 + 8,
        "the coordinator held {peak} connections, beyond its handshake bound"
    );
    f.unharmed(since, "1,000 half-open handshakes (after)")?;
    ensure!(
        f.coord
            .proc
            .log_text()
            .contains("refused a connection: the handshake took longer than 5 s"),
        "no refusal logged"
    );
    // The endpoint still does real handshakes.
    rt.block_on(async {
        let conn = connect(&ep, cfg.clone(), f.quic()).await?;
        conn.close(0u32.into(), b"done");
        anyhow::Ok(())
    })?;
    drop(pending);
    Ok(())
}

/// A join whose answer is lost is asked again with the same token and key: the node gets its
/// id back with a new certificate, and no token use is spent (the token here has one use, spent
/// by the first try). Both certificates let it register (the first answer may have arrived after
/// all). Another key asking for the same name is refused, and so is the same key once the node
/// has registered.
#[test]
fn a_join_asked_again_after_a_lost_answer_gets_the_same_node() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let coord = Coordinator::start(&tmp.path().join("coord"), None)?;
    let token: JoinToken = coord.api.token(1)?.parse()?;
    let addr: SocketAddr = coord.quic.parse()?;
    let ca_pem = std::fs::read_to_string(coord.dir.join("ca.pem"))?;
    let key = NodeKey::generate()?;
    let join_hello = |key: &NodeKey| join_frame(&token, key, "retried");
    let rt = runtime();
    let ask = |bytes: Vec<u8>| {
        rt.block_on(async {
            let ep = client()?;
            let conn = connect(&ep, tls::join_client_config(token.ca_pin)?, addr).await?;
            let answer = exchange(&conn, &bytes).await?;
            anyhow::Ok((conn, answer))
        })
    };
    let joined = |answer: CoordMsg| -> Result<Joined> {
        match answer {
            CoordMsg::Joined(j) => Ok(j),
            other => bail!("expected Joined, got {other:?}"),
        }
    };
    // The first answer is "lost": the test never uses it until the end.
    let (_c1, a1) = ask(join_hello(&key)?)?;
    let first = joined(a1)?;
    let (_c2, a2) = ask(join_hello(&key)?)?;
    let second = joined(a2)?;
    ensure!(
        second.node_id == first.node_id,
        "the retry made another node: {} then {}",
        first.node_id,
        second.node_id
    );
    let serial = |pem: &str| tandem_common::pki::node_cert_facts(pem).map(|f| f.serial);
    ensure!(serial(&first.cert_pem)? != serial(&second.cert_pem)?);
    println!(
        "retried join: same node {}, serial {} then {}",
        first.node_id,
        serial(&first.cert_pem)?,
        serial(&second.cert_pem)?
    );
    let nodes = coord.api.nodes()?;
    ensure!(
        nodes.len() == 1,
        "{} nodes after a retried join",
        nodes.len()
    );
    // The retry needed no use (the token's one use was spent by the first try), and spent
    // none: the token admits nobody else.
    let other = join_frame(&token, &NodeKey::generate()?, "other")?;
    let (c0, a0) = ask(other)?;
    let reason = rt.block_on(expect_reject(&c0, a0, RejectCode::BadToken, &["use"]))?;
    println!("another node with the spent token: refused: {reason}");

    // Someone else asking for the name, with the token but another key: refused.
    let (c3, a3) = ask(join_hello(&NodeKey::generate()?)?)?;
    let reason = rt.block_on(expect_reject(
        &c3,
        a3,
        RejectCode::NotAdmitted,
        &["already used"],
    ))?;
    println!("another key for the name: refused: {reason}");

    // The first answer arrived after all: its certificate registers the node.
    let node = first.node_id.clone();
    let cfg = tls::node_client_config(&ca_pem, &first.cert_pem, &key.key_pem())?;
    let welcome = rt.block_on(async {
        let ep = client()?;
        let conn = connect(&ep, cfg, addr).await?;
        let m = exchange(
            &conn,
            &frame(&hello(PROTOCOL_VERSION, Some(node.clone()), None)),
        )
        .await;
        conn.close(0u32.into(), b"done");
        m
    })?;
    ensure!(
        matches!(welcome, CoordMsg::Welcome(_)),
        "the first certificate did not register: {welcome:?}"
    );
    // Registered: the same key asking to join again is now just another claim on the name.
    let (c4, a4) = ask(join_hello(&key)?)?;
    let reason = rt.block_on(expect_reject(
        &c4,
        a4,
        RejectCode::NotAdmitted,
        &["already used"],
    ))?;
    println!("same key after registering: refused: {reason}");
    ensure!(coord.api.nodes()?.len() == 1);
    Ok(())
}

/// A join `Hello` for `name` with `token` and a CSR for `key`, framed.
fn join_frame(token: &JoinToken, key: &NodeKey, name: &str) -> Result<Vec<u8>> {
    let AgentMsg::Hello(mut h) = hello(
        PROTOCOL_VERSION,
        None,
        Some(JoinRequest {
            token_id: token.id.clone(),
            token_secret: token.secret.clone(),
            csr_pem: key.csr_pem(name)?,
        }),
    ) else {
        unreachable!("hello() makes a Hello")
    };
    h.name = name.into();
    Ok(frame(&AgentMsg::Hello(h)))
}

/// Defect 9 of the engine issue: one authenticated node could stall the coordinator by
/// spamming reports about jobs it does not hold (each cost a decision, an event and a disk
/// flush under the fleet lock) or certificate renewals. Now its control stream is read at a
/// bounded rate (the rest waits in QUIC's flow control, nothing is dropped), reports about
/// jobs it does not hold cost no flush, and renewals are served once per interval. The two
/// real agents stay ready and beating; the admin API keeps answering.
#[test]
fn one_node_spamming_job_reports_and_renewals_stalls_nobody() -> Result<()> {
    let f = fleet("spam")?;
    let token: JoinToken = f.api().token(1)?.parse()?;
    let addr = f.quic();
    let ca_pem = std::fs::read_to_string(f.coord.dir.join("ca.pem"))?;
    let key = NodeKey::generate()?;
    let rt = runtime();
    let since = f.mark()?;
    let (sent, stalled, renewals_refused, api_worst) = rt.block_on(async {
        let ep = client()?;
        let conn = connect(&ep, tls::join_client_config(token.ca_pin)?, addr).await?;
        let CoordMsg::Joined(joined) =
            exchange(&conn, &join_frame(&token, &key, "spammer")?).await?
        else {
            bail!("the spammer could not join");
        };
        conn.close(0u32.into(), b"joined");
        let cfg = tls::node_client_config(&ca_pem, &joined.cert_pem, &key.key_pem())?;
        let conn = connect(&ep, cfg, addr).await?;
        let (mut send, mut recv) = timeout(T, conn.open_bi()).await??;
        send.write_all(&frame(&hello(
            PROTOCOL_VERSION,
            Some(joined.node_id.clone()),
            None,
        )))
        .await?;
        let welcome = timeout(
            T,
            codec::read_msg::<CoordMsg, _>(&mut recv, DEFAULT_MAX_FRAME),
        )
        .await??;
        ensure!(
            matches!(welcome, Some(CoordMsg::Welcome(_))),
            "not welcomed: {welcome:?}"
        );
        // Answers (kills of stale copies, refused renewals) are read on the side.
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let r2 = refused.clone();
        let reader = tokio::spawn(async move {
            while let Ok(Ok(Some(m))) = timeout(
                Duration::from_secs(30),
                codec::read_msg::<CoordMsg, _>(&mut recv, DEFAULT_MAX_FRAME),
            )
            .await
            {
                if matches!(m, CoordMsg::RenewalRefused { .. }) {
                    r2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        });
        // 8 s of spam, as fast as the coordinator takes it, while the API is timed.
        let csr = key.csr_pem("spammer")?;
        let start = Instant::now();
        let mut n = 0u64;
        let mut api_worst = Duration::ZERO;
        let mut next_probe = Instant::now();
        let (mut next_beat, mut seq, mut stalled) = (Instant::now(), 0u64, 0u64);
        while start.elapsed() < Duration::from_secs(8) {
            let msg = match n % 50 {
                0 => AgentMsg::RenewCertificate {
                    csr_pem: csr.clone(),
                },
                k if k % 2 == 0 => AgentMsg::JobStarted {
                    job_id: format!("j-{:012x}", n),
                    fencing_token: n,
                },
                _ => AgentMsg::JobExited(JobExitReport {
                    job_id: format!("j-{:012x}", n),
                    fencing_token: n,
                    code: Some(0),
                    signal: None,
                    cause: ExitCause::Exited,
                    reason: "exited".into(),
                }),
            };
            // A write waits when the coordinator stops reading (its rate limit): bounded.
            match timeout(Duration::from_millis(200), send.write_all(&frame(&msg))).await {
                Ok(Ok(())) => n += 1,
                Ok(Err(e)) => bail!("the spammer's stream failed after {n} messages: {e}"),
                Err(_) => stalled += 1,
            }
            if Instant::now() >= next_beat {
                next_beat = Instant::now() + Duration::from_millis(200);
                seq += 1;
                let beat = AgentDatagram::Heartbeat(Heartbeat {
                    seq,
                    last_rtt_us: 0,
                    load: LoadSummary::default(),
                });
                conn.send_datagram(codec::encode(&beat)?.into())?;
            }
            if Instant::now() >= next_probe {
                next_probe = Instant::now() + Duration::from_millis(500);
                let api = f.api().clone();
                let t = Instant::now();
                tokio::task::spawn_blocking(move || api.get("/v1/nodes")).await??;
                api_worst = api_worst.max(t.elapsed());
            }
        }
        conn.close(0u32.into(), b"done");
        let _ = timeout(T, reader).await;
        anyhow::Ok((
            n,
            stalled,
            refused.load(std::sync::atomic::Ordering::Relaxed),
            api_worst,
        ))
    })?;
    println!(
        "spam: {sent} messages written in 8 s, {stalled} writes held back, {renewals_refused} renewals refused, slowest admin call {} ms",
        api_worst.as_millis()
    );
    f.unharmed(since, "a node spamming job reports and renewals")?;
    let metrics = f.api().request("GET", "/metrics", None, None)?.1;
    let metrics = metrics.as_str().unwrap_or_default().to_string();
    let counter = |name: &str| -> u64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    ensure!(
        counter("tandem_agent_messages_throttled_total ") > 0,
        "the spammer was never throttled ({sent} messages): {metrics}"
    );
    ensure!(
        renewals_refused > 0 && counter("tandem_renewals_throttled_total ") > 0,
        "renewals were not limited ({renewals_refused} refused)"
    );
    // Past its burst and QUIC's windows, the spammer's writes wait: it is slowed down, and
    // what it wrote is read later, never dropped.
    ensure!(
        stalled > 0,
        "{sent} messages written in 8 s and none ever waited: no backpressure"
    );
    ensure!(
        api_worst < Duration::from_secs(2),
        "the admin API took {api_worst:?} during the spam"
    );
    Ok(())
}
