//! What the fuzz targets check. Each target in `fuzz_targets/` is one call into this file, so
//! the properties live in one place (and `examples/seeds.rs` can use the same types).
//!
//! Every check mirrors what the real code does with bytes from the network:
//! - the coordinator reads frames with `codec::read_frame`, peeks the protocol version of the
//!   first one, and decodes `AgentMsg`s; it applies `HardwareUpdate`s to the stored report,
//!   derives the hardware model from reports, and stores reports as JSON; it signs the CSR of
//!   a certificate renewal;
//! - the agent decodes `CoordMsg`s;
//! - both decode heartbeat datagrams with `codec::decode_datagram`;
//! - at join, the coordinator checks a token secret against its hash and signs the CSR's key;
//!   the agent parses the `tdm1.<id>.<secret>.<pin>` token it was given.
//!
//! Decoding must never panic or allocate without bound (libFuzzer's `-rss_limit_mb` catches the
//! latter), and whatever decodes must round-trip.
//!
//! `common/tests/fuzz_regressions.rs` compiles this file in (`#[path]`) to replay the inputs
//! kept in `common/tests/fuzz_regressions/`, so it may only use crates that `tandem-common`
//! depends on (or has as dev-dependencies).

use std::fmt::Debug;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{de::DeserializeOwned, Serialize};
use tandem_common::codec::{self, CodecError, DEFAULT_MAX_FRAME, MAX_DATAGRAM};
use tandem_common::hardware::HardwareReport;
use tandem_common::ids::NodeId;
use tandem_common::pki::{self, CertificateAuthority};
use tandem_common::proto::{AgentDatagram, AgentMsg, CoordDatagram, CoordMsg, JoinRequest};
use tandem_common::token::{self, JoinToken};
use tokio::io::{AsyncRead, ReadBuf};

/// The frame limits `frame_decoder` picks from (the first input byte chooses).
pub const FRAME_LIMITS: [usize; 6] = [0, 1, 9, 64, 1024, DEFAULT_MAX_FRAME];

/// Asserts that `value`, decoded from `input_len` bytes, encodes again to no more bytes than it
/// came from, decodes back to itself, and encodes the same way twice.
pub fn assert_round_trip<T>(value: &T, input_len: usize, decode: fn(&[u8]) -> Result<T, CodecError>)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let bytes = codec::encode(value).expect("a decoded message must encode again");
    assert!(
        bytes.len() <= input_len,
        "re-encoding grew the message from {input_len} to {} bytes",
        bytes.len()
    );
    let back = decode(&bytes).unwrap_or_else(|e| panic!("a re-encoded message must decode: {e}"));
    if back != *value {
        // NaN != NaN: compare the printed forms (the bytes below are compared exactly).
        assert_eq!(format!("{back:?}"), format!("{value:?}"));
    }
    assert_eq!(
        codec::encode(&back).unwrap(),
        bytes,
        "encoding is not stable"
    );
}

/// One control-stream body, as the coordinator reads it.
pub fn agent_msg(body: &[u8]) {
    let peeked = codec::peek_protocol_version(body);
    let first = codec::peek_first_frame(body);
    let Ok(msg) = codec::decode::<AgentMsg>(body) else {
        return;
    };
    assert_round_trip(&msg, body.len(), codec::decode::<AgentMsg>);
    match msg {
        AgentMsg::Hello(hello) => {
            // The version rule: the version of any Hello can be read without the rest.
            assert_eq!(peeked, Some(hello.protocol_version));
            coordinator_keeps(hello.hardware);
            if let Some(join) = &hello.join {
                coordinator_joins(join);
            }
        }
        AgentMsg::HardwareUpdate(delta) => {
            // The coordinator applies a delta to the report it holds.
            let mut report = HardwareReport::default();
            report.apply(*delta);
            coordinator_keeps(report);
        }
        AgentMsg::RenewCertificate { csr_pem } => {
            assert_eq!(peeked, None, "only a Hello has a version");
            // The coordinator signs a renewal's CSR as it signs a join's.
            sign_csr(&csr_pem);
        }
        AgentMsg::CheckJoin(check) => {
            // A check is told from a Hello by its first bytes, and its version read alike.
            assert_eq!(peeked, None, "only a Hello has a Hello's version");
            assert_eq!(
                first,
                Some(codec::FirstFrame::CheckJoin(check.protocol_version))
            );
            coordinator_keeps(check.hardware);
        }
        _ => assert_eq!(peeked, None, "only a Hello has a version"),
    }
}

/// What the coordinator does with a report it received: derives the model (admission, admin
/// API) and stores it as JSON, which must load again (else the store is "corrupt" at the next
/// start) as the same report. Floats are left out of the comparison: serde_json's default float
/// parser may be one ulp off on extreme values, which is harmless for a load average.
pub fn coordinator_keeps(report: HardwareReport) {
    let _ = report.model();
    let json = serde_json::to_vec(&report).expect("a report must serialise to JSON");
    let back: HardwareReport = serde_json::from_slice(&json).unwrap_or_else(|e| {
        panic!(
            "a stored report must load again: {e}\n{}",
            String::from_utf8_lossy(&json)
        )
    });
    assert_eq!(without_floats(back), without_floats(report));
}

fn without_floats(mut r: HardwareReport) -> HardwareReport {
    r.os.load_avg = Default::default();
    r.cpu.usage_percent = 0.0;
    r
}

/// One control-stream body, as the agent reads it.
pub fn coord_msg(body: &[u8]) {
    if let Ok(msg) = codec::decode::<CoordMsg>(body) {
        assert_round_trip(&msg, body.len(), codec::decode::<CoordMsg>);
    }
}

/// One datagram, both ways; and the same bytes as a frame body (the stream fallback for paths
/// without datagram support carries the same messages in frames).
pub fn datagrams(body: &[u8]) {
    let up = codec::decode_datagram::<AgentDatagram>(body);
    let down = codec::decode_datagram::<CoordDatagram>(body);
    if body.len() > MAX_DATAGRAM {
        assert!(matches!(up, Err(CodecError::FrameTooLarge { .. })));
        assert!(matches!(down, Err(CodecError::FrameTooLarge { .. })));
    }
    if let Ok(m) = up {
        assert_round_trip(&m, body.len(), codec::decode_datagram::<AgentDatagram>);
    }
    if let Ok(m) = down {
        assert_round_trip(&m, body.len(), codec::decode_datagram::<CoordDatagram>);
    }
    if let Ok(m) = codec::decode::<AgentDatagram>(body) {
        assert_round_trip(&m, body.len(), codec::decode::<AgentDatagram>);
    }
    if let Ok(m) = codec::decode::<CoordDatagram>(body) {
        assert_round_trip(&m, body.len(), codec::decode::<CoordDatagram>);
    }
}

/// An `AsyncRead` over a slice that hands out at most `chunk` bytes per read, so that frame
/// headers and bodies arrive split across reads as they do from a QUIC stream.
struct Chunked<'a> {
    data: &'a [u8],
    pos: usize,
    chunk: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self
            .chunk
            .min(self.data.len() - self.pos)
            .min(buf.remaining());
        let start = self.pos;
        buf.put_slice(&self.data[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// Runs a future that never waits (our reader is always ready) to completion.
fn now<F: std::future::Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    match f.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("read_frame waited on a reader that is always ready"),
    }
}

/// A stream of frames: byte 0 picks the frame limit, byte 1 the read size, the rest is the
/// stream. Reads frames until the stream ends or fails, and checks that each outcome matches
/// what the bytes say.
pub fn frames(data: &[u8]) {
    let [limit, chunk, stream @ ..] = data else {
        return;
    };
    let max = FRAME_LIMITS[*limit as usize % FRAME_LIMITS.len()];
    let mut r = Chunked {
        data: stream,
        pos: 0,
        chunk: (*chunk as usize % 8) + 1,
    };
    loop {
        let start = r.pos;
        let left = &stream[start..];
        let announced = left
            .get(..4)
            .map(|h| u32::from_be_bytes(h.try_into().unwrap()) as usize);
        match now(codec::read_frame(&mut r, max)) {
            Ok(Some(body)) => {
                let len = announced.expect("a frame has a header");
                assert_eq!(body.len(), len);
                assert!(len <= max, "a frame over the limit was read");
                assert_eq!(
                    &left[4..4 + len],
                    &body[..],
                    "the body is not what was sent"
                );
                assert_eq!(r.pos, start + 4 + len, "read past the frame");
                frame_body(&body, max);
            }
            Ok(None) => {
                assert!(
                    left.is_empty(),
                    "a clean end with {} bytes left",
                    left.len()
                );
                return;
            }
            Err(CodecError::Truncated) => {
                match announced {
                    None => assert!(!left.is_empty() && left.len() < 4),
                    Some(len) => assert!(len <= max && left.len() < 4 + len),
                }
                return;
            }
            Err(CodecError::FrameTooLarge { len, max: m }) => {
                assert_eq!((Some(len), m), (announced, max));
                assert!(len > max);
                // Refused on the header alone: nothing of the body was read.
                assert_eq!(r.pos, start + 4);
                return;
            }
            Err(e) => panic!("read_frame on an in-memory stream failed with {e}"),
        }
    }
}

/// A frame body read under `max`: both message types, and re-framing under the same limit.
fn frame_body(body: &[u8], max: usize) {
    agent_msg(body);
    coord_msg(body);
    if let Ok(msg) = codec::decode::<AgentMsg>(body) {
        let frame = codec::encode_frame(&msg, max).expect("a message read under a limit fits it");
        let back: AgentMsg = now(codec::read_msg(&mut &frame[..], max))
            .expect("a re-framed message reads")
            .expect("a re-framed message is there");
        assert_eq!(codec::encode(&back).unwrap(), codec::encode(&msg).unwrap());
    }
}

/// The CA the join checks sign with: made once, as a coordinator makes its CA once.
pub fn test_ca() -> &'static CertificateAuthority {
    static CA: OnceLock<CertificateAuthority> = OnceLock::new();
    CA.get_or_init(|| CertificateAuthority::generate("tandem fuzz CA").expect("CA"))
}

/// The node id the join checks issue certificates for.
pub fn test_node() -> NodeId {
    NodeId("n-0123456789abcdef".into())
}

/// What the coordinator does with a Hello's join request: checks the secret against a stored
/// hash (of some other secret here, as an unknown token would be) and signs the CSR's key.
pub fn coordinator_joins(req: &JoinRequest) {
    let stored = token::hash_secret("not the secret");
    let _ = token::verify_secret(&req.token_secret, &stored);
    assert!(token::verify_secret(
        &req.token_secret,
        &token::hash_secret(&req.token_secret)
    ));
    sign_csr(&req.csr_pem);
}

/// Signs `csr_pem` as the coordinator does at join; a certificate it issues must name exactly
/// the node and serial the coordinator chose.
pub fn sign_csr(csr_pem: &str) {
    let node = test_node();
    let Ok(issued) = test_ca().sign_node_csr(csr_pem, &node, 42, Duration::from_secs(3600)) else {
        return;
    };
    let der = pem_der(&issued.cert_pem);
    assert_eq!(pki::node_id_from_cert(&der).expect("node id"), node);
    assert_eq!(pki::cert_serial(&der).expect("serial"), 42);
    assert_eq!(issued.serial, 42);
}

/// The DER inside a one-block PEM that we made ourselves.
fn pem_der(pem: &str) -> Vec<u8> {
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(b64).expect("our own PEM is base64")
}

/// Wraps DER in a PEM block with the given label, 64 columns wide.
pub fn to_pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A token string as the agent parses it. What parses must format back to the same id and
/// secret (the secret is hashed as text, so a different spelling would be a different token),
/// parse again to the same token, and verify against its own hash.
pub fn token_text(s: &str) {
    let Ok(t) = s.parse::<JoinToken>() else {
        return;
    };
    let fields: Vec<&str> = s.trim().split('.').collect();
    assert_eq!(fields.len(), 4);
    assert_eq!(fields[1], t.id);
    assert_eq!(fields[2], t.secret);
    assert_eq!(fields[3].to_ascii_lowercase(), t.ca_pin.to_hex());
    let text = t.to_string();
    assert_eq!(
        text.parse::<JoinToken>().expect("a formatted token parses"),
        t
    );
    assert!(token::verify_secret(&t.secret, &t.secret_hash()));
}

/// The `join_request` input: byte 0 picks the form of the rest.
/// - `D`: the rest is the DER of a CSR, which is wrapped in PEM and signed;
/// - anything else: the rest is text, a token line then a CSR in PEM. The token is parsed (as
///   the agent does), then its id and secret and the PEM go through the coordinator's checks
///   as a `JoinRequest`.
pub fn join_input(data: &[u8]) {
    let Some((&form, rest)) = data.split_first() else {
        return;
    };
    if form == b'D' {
        sign_csr(&to_pem("CERTIFICATE REQUEST", rest));
        return;
    }
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let (line, csr_pem) = text.split_once('\n').unwrap_or((text, ""));
    token_text(line);
    token_text(text);
    let mut fields = line.trim().split('.').skip(1);
    coordinator_joins(&JoinRequest {
        token_id: fields.next().unwrap_or_default().to_string(),
        token_secret: fields.next().unwrap_or_default().to_string(),
        csr_pem: csr_pem.to_string(),
    });
}
