//! The one place that knows how messages become bytes.
//!
//! Frames on a stream are a `u32` big-endian length followed by a bincode-2 body. The length is
//! checked against a limit *before* anything is allocated, and bincode itself decodes under the
//! same limit, so a peer cannot make us allocate more than `max_frame` bytes for one message,
//! whatever it claims inside the body. Datagrams are a bare bincode body (QUIC gives their
//! length).

use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The default largest frame body, 4 MiB.
pub const DEFAULT_MAX_FRAME: usize = 4 * 1024 * 1024;

/// The largest datagram body we decode.
pub const MAX_DATAGRAM: usize = 1200;

/// Everything that can go wrong turning bytes into messages and back.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// A frame announced (or a message needed) more bytes than the limit.
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    FrameTooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The body is not a valid message of the expected type.
    #[error("frame does not decode: {0}")]
    Decode(String),
    /// The message could not be encoded.
    #[error("message does not encode: {0}")]
    Encode(String),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame")]
    Truncated,
    /// Reading or writing the stream failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<DEFAULT_MAX_FRAME>,
>;

fn config() -> Config {
    bincode::config::standard().with_limit::<DEFAULT_MAX_FRAME>()
}

/// Encodes a message body (no length prefix).
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, CodecError> {
    bincode::serde::encode_to_vec(msg, config()).map_err(|e| CodecError::Encode(e.to_string()))
}

/// Decodes a message body. Trailing bytes are refused: a body is exactly one message.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    let (msg, used) = bincode::serde::decode_from_slice::<T, _>(body, config())
        .map_err(|e| CodecError::Decode(e.to_string()))?;
    if used != body.len() {
        return Err(CodecError::Decode(format!(
            "{} trailing bytes after the message",
            body.len() - used
        )));
    }
    Ok(msg)
}

/// Encodes a message as one frame: length prefix and body.
pub fn encode_frame<T: Serialize>(msg: &T, max: usize) -> Result<Vec<u8>, CodecError> {
    let body = encode(msg)?;
    if body.len() > max {
        return Err(CodecError::FrameTooLarge {
            len: body.len(),
            max,
        });
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// The variant index of `AgentMsg::CheckJoin` on the wire (a test keeps it true).
const CHECK_JOIN_VARIANT: u32 = 9;

/// What a first frame is, read without decoding the rest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstFrame {
    /// `AgentMsg::Hello` of this protocol version.
    Hello(u16),
    /// `AgentMsg::CheckJoin` of this protocol version.
    CheckJoin(u16),
}

/// Reads the kind and version of a first frame without decoding the rest, so that a peer of
/// another version can be told so (see the version rule in `proto`). `None`: neither a
/// `Hello` nor a `CheckJoin`.
pub fn peek_first_frame(body: &[u8]) -> Option<FirstFrame> {
    // Both start with the version, right after the variant index.
    let (pair, _) = bincode::serde::decode_from_slice::<(u32, u16), _>(body, config()).ok()?;
    match pair.0 {
        0 => Some(FirstFrame::Hello(pair.1)),
        CHECK_JOIN_VARIANT => Some(FirstFrame::CheckJoin(pair.1)),
        _ => None,
    }
}

/// Reads the version from the body of a first frame that is a `Hello`, without decoding the
/// rest, so that a peer of another version can be told so (see the version rule in `proto`).
pub fn peek_protocol_version(body: &[u8]) -> Option<u16> {
    match peek_first_frame(body)? {
        FirstFrame::Hello(v) => Some(v),
        FirstFrame::CheckJoin(_) => None,
    }
}

/// How much of a frame body [`read_frame`] reserves before any of it has arrived.
const INITIAL_BODY_CAPACITY: usize = 64 * 1024;

/// Reads one frame body. `Ok(None)` means the stream ended cleanly between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<Vec<u8>>, CodecError> {
    let mut len = [0u8; 4];
    let mut got = 0;
    while got < 4 {
        let n = r.read(&mut len[got..]).await?;
        if n == 0 {
            return if got == 0 {
                Ok(None)
            } else {
                Err(CodecError::Truncated)
            };
        }
        got += n;
    }
    let len = u32::from_be_bytes(len) as usize;
    if len > max {
        return Err(CodecError::FrameTooLarge { len, max });
    }
    // The body grows as its bytes arrive instead of being allocated at the announced length:
    // otherwise a 4-byte header alone (from a peer that is not even authenticated yet, for a
    // first frame) pins `max` bytes until the read times out. Found while fuzzing
    // (`fuzz/`'s `frame_decoder`, where such headers made every run allocate 4 MiB).
    let mut body = Vec::with_capacity(len.min(INITIAL_BODY_CAPACITY));
    let got = (&mut *r).take(len as u64).read_to_end(&mut body).await?;
    if got < len {
        return Err(CodecError::Truncated);
    }
    Ok(Some(body))
}

/// Reads and decodes one message. `Ok(None)` means the stream ended cleanly.
pub async fn read_msg<T: DeserializeOwned, R: AsyncRead + Unpin>(
    r: &mut R,
    max: usize,
) -> Result<Option<T>, CodecError> {
    match read_frame(r, max).await? {
        Some(body) => decode(&body).map(Some),
        None => Ok(None),
    }
}

/// Encodes and writes one message as a frame.
pub async fn write_msg<T: Serialize, W: AsyncWrite + Unpin>(
    w: &mut W,
    msg: &T,
    max: usize,
) -> Result<(), CodecError> {
    let frame = encode_frame(msg, max)?;
    w.write_all(&frame).await?;
    Ok(())
}

/// Reads messages from `r` on a task of its own and hands them over a channel.
///
/// Reading a frame takes several reads, so `read_msg` must never be a branch of a `select!`
/// that can drop it half-way (the stream would lose its framing). Loops that wait on several
/// things at once receive from this channel instead, which is cancel-safe. The channel closes
/// after the stream ends cleanly, or after one `Err` when it fails.
pub fn spawn_reader<T, R>(
    mut r: R,
    max: usize,
) -> tokio::sync::mpsc::Receiver<Result<T, CodecError>>
where
    T: DeserializeOwned + Send + 'static,
    R: AsyncRead + Unpin + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            match read_msg::<T, R>(&mut r, max).await {
                Ok(Some(m)) => {
                    if tx.send(Ok(m)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    });
    rx
}

/// Decodes a datagram body, refusing anything over [`MAX_DATAGRAM`].
pub fn decode_datagram<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    if body.len() > MAX_DATAGRAM {
        return Err(CodecError::FrameTooLarge {
            len: body.len(),
            max: MAX_DATAGRAM,
        });
    }
    decode(body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::HardwareReport;
    use crate::ids::NodeId;
    use crate::proto::*;
    use proptest::prelude::*;

    fn hello(version: u16) -> AgentMsg {
        AgentMsg::Hello(Box::new(Hello {
            protocol_version: version,
            agent_version: "0.1.0".into(),
            name: "edge-1".into(),
            node_id: Some(NodeId::random()),
            join: None,
            datagrams: true,
            jobs: vec![],
            exited: vec![],
            hardware: HardwareReport::default(),
        }))
    }

    fn arb_cause() -> impl Strategy<Value = ExitCause> {
        prop_oneof![
            Just(ExitCause::Exited),
            Just(ExitCause::Stopped),
            Just(ExitCause::Fenced),
            Just(ExitCause::ShimSignalled),
            Just(ExitCause::Lost),
            Just(ExitCause::Refused),
        ]
    }

    fn arb_exit() -> impl Strategy<Value = JobExitReport> {
        (
            "[a-z0-9-]{0,20}",
            any::<u64>(),
            any::<Option<i32>>(),
            any::<Option<i32>>(),
            arb_cause(),
            ".{0,60}",
        )
            .prop_map(|(job_id, fencing_token, code, signal, cause, reason)| {
                JobExitReport {
                    job_id,
                    fencing_token,
                    code,
                    signal,
                    cause,
                    reason,
                }
            })
    }

    fn arb_held() -> impl Strategy<Value = HeldJob> {
        ("[a-z0-9-]{0,20}", any::<u64>(), any::<bool>()).prop_map(
            |(job_id, fencing_token, starting)| HeldJob {
                job_id,
                fencing_token,
                state: if starting {
                    HeldState::Starting
                } else {
                    HeldState::Running
                },
            },
        )
    }

    #[test]
    fn version_is_readable_without_the_rest() {
        let body = encode(&hello(7)).unwrap();
        assert_eq!(peek_protocol_version(&body), Some(7));
        let body = encode(&AgentMsg::Pong { nonce: 1 }).unwrap();
        assert_eq!(peek_protocol_version(&body), None);
        assert_eq!(peek_protocol_version(&[]), None);
    }

    #[test]
    fn a_check_join_is_told_from_a_hello_by_its_first_bytes() {
        let check = AgentMsg::CheckJoin(Box::new(CheckJoin {
            protocol_version: 5,
            name: "n".into(),
            token: None,
            hardware: HardwareReport::default(),
        }));
        let body = encode(&check).unwrap();
        assert_eq!(peek_first_frame(&body), Some(FirstFrame::CheckJoin(5)));
        assert_eq!(peek_protocol_version(&body), None);
        let body = encode(&hello(3)).unwrap();
        assert_eq!(peek_first_frame(&body), Some(FirstFrame::Hello(3)));
        let body = encode(&AgentMsg::Pong { nonce: 1 }).unwrap();
        assert_eq!(peek_first_frame(&body), None);
    }

    #[test]
    fn oversized_frames_are_refused_before_allocation() {
        let mut wire = Vec::new();
        wire.extend_from_slice(&u32::MAX.to_be_bytes());
        wire.extend_from_slice(&[0u8; 16]);
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let err = rt
            .block_on(read_frame(&mut &wire[..], DEFAULT_MAX_FRAME))
            .unwrap_err();
        assert!(matches!(err, CodecError::FrameTooLarge { .. }), "{err}");
        let big = AgentMsg::Goodbye {
            reason: "x".repeat(2000),
        };
        assert!(matches!(
            encode_frame(&big, 100),
            Err(CodecError::FrameTooLarge { .. })
        ));
    }

    #[test]
    fn truncated_and_clean_ends_differ() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let frame = encode_frame(&hello(1), DEFAULT_MAX_FRAME).unwrap();
        let cut = &frame[..frame.len() - 1];
        let err = rt
            .block_on(read_frame(&mut &cut[..], DEFAULT_MAX_FRAME))
            .unwrap_err();
        assert!(matches!(err, CodecError::Truncated));
        let empty: &[u8] = &[];
        assert!(rt
            .block_on(read_frame(&mut &empty[..], 10))
            .unwrap()
            .is_none());
        let two = [1u8, 0];
        let err = rt.block_on(read_frame(&mut &two[..], 10)).unwrap_err();
        assert!(matches!(err, CodecError::Truncated));
    }

    #[test]
    fn trailing_bytes_are_refused() {
        let mut body = encode(&AgentMsg::Pong { nonce: 3 }).unwrap();
        body.push(0);
        assert!(decode::<AgentMsg>(&body).is_err());
    }

    #[test]
    fn a_huge_claimed_string_length_inside_a_body_is_refused() {
        // Variant 3 (Goodbye), then a string length of u64::MAX as a varint.
        let body = [3u8, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        assert!(decode::<AgentMsg>(&body).is_err());
    }

    fn arb_load() -> impl Strategy<Value = LoadSummary> {
        (any::<u16>(), any::<u32>(), any::<u16>()).prop_map(|(c, m, j)| LoadSummary {
            cpu_centi_percent: c,
            memory_available_mib: m,
            jobs_running: j,
        })
    }

    fn arb_agent_msg() -> impl Strategy<Value = AgentMsg> {
        prop_oneof![
            (
                any::<u16>(),
                ".{0,40}",
                ".{0,40}",
                any::<bool>(),
                proptest::option::of((".{0,20}", ".{0,60}", ".{0,200}")),
                proptest::collection::vec(arb_held(), 0..4),
                proptest::collection::vec(arb_exit(), 0..4),
            )
                .prop_map(|(v, agent_version, name, datagrams, join, jobs, exited)| {
                    AgentMsg::Hello(Box::new(Hello {
                        protocol_version: v,
                        agent_version,
                        name,
                        node_id: Some(NodeId::random()),
                        join: join.map(|(token_id, token_secret, csr_pem)| JoinRequest {
                            token_id,
                            token_secret,
                            csr_pem,
                        }),
                        datagrams,
                        jobs,
                        exited,
                        hardware: HardwareReport::default(),
                    }))
                }),
            arb_exit().prop_map(AgentMsg::JobExited),
            (
                any::<u64>(),
                proptest::collection::vec(arb_held(), 0..4),
                proptest::collection::vec(arb_exit(), 0..4)
            )
                .prop_map(|(request, jobs, exited)| AgentMsg::JobsHeld {
                    request,
                    jobs,
                    exited
                }),
            any::<u64>().prop_map(|nonce| AgentMsg::Pong { nonce }),
            ".{0,100}".prop_map(|reason| AgentMsg::Goodbye { reason }),
            (
                any::<u16>(),
                ".{0,40}",
                proptest::option::of((".{0,20}", ".{0,60}")),
            )
                .prop_map(|(v, name, token)| AgentMsg::CheckJoin(Box::new(
                    CheckJoin {
                        protocol_version: v,
                        name,
                        token: token.map(|(token_id, token_secret)| CheckToken {
                            token_id,
                            token_secret,
                        }),
                        hardware: HardwareReport::default(),
                    }
                ))),
        ]
    }

    fn arb_verdict() -> impl Strategy<Value = Verdict> {
        (0u8..3, ".{0,80}").prop_map(|(k, w)| match k {
            0 => Verdict::Ok(w),
            1 => Verdict::Failed(w),
            _ => Verdict::Skipped(w),
        })
    }

    fn arb_coord_msg() -> impl Strategy<Value = CoordMsg> {
        prop_oneof![
            ".{0,100}".prop_map(|reason| CoordMsg::Reject(Reject {
                code: RejectCode::BadToken,
                reason
            })),
            (any::<u64>(), any::<u32>(), any::<u32>(), ".{0,30}").prop_map(
                |(session, heartbeat_ms, lease_ms, name)| CoordMsg::Welcome(Welcome {
                    node_id: NodeId::random(),
                    name,
                    session,
                    heartbeat_ms,
                    lease_ms,
                    fence_kill_timeout_ms: 250,
                })
            ),
            (".{0,300}", ".{0,300}").prop_map(|(cert_pem, ca_pem)| CoordMsg::Joined(Joined {
                node_id: NodeId::random(),
                name: "n".into(),
                cert_pem,
                ca_pem
            })),
            any::<u64>().prop_map(|nonce| CoordMsg::Ping { nonce }),
            ("[a-z0-9-]{0,20}", any::<u64>()).prop_map(|(job_id, fencing_token)| {
                CoordMsg::ExitAck {
                    job_id,
                    fencing_token,
                }
            }),
            any::<u64>().prop_map(|request| CoordMsg::ReportJobs { request }),
            (arb_verdict(), arb_verdict(), arb_verdict()).prop_map(
                |(token, cluster, admission)| {
                    CoordMsg::JoinCheck(JoinCheck {
                        token,
                        cluster,
                        admission,
                    })
                }
            ),
        ]
    }

    proptest! {
        #[test]
        fn agent_messages_round_trip(msg in arb_agent_msg()) {
            let frame = encode_frame(&msg, DEFAULT_MAX_FRAME).unwrap();
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let back: AgentMsg =
                rt.block_on(read_msg(&mut &frame[..], DEFAULT_MAX_FRAME)).unwrap().unwrap();
            prop_assert_eq!(back, msg);
        }

        #[test]
        fn coordinator_messages_round_trip(msg in arb_coord_msg()) {
            let body = encode(&msg).unwrap();
            prop_assert_eq!(decode::<CoordMsg>(&body).unwrap(), msg);
        }

        #[test]
        fn datagrams_round_trip(seq in any::<u64>(), rtt in any::<u32>(), load in arb_load(), lease in any::<u32>()) {
            let beat = AgentDatagram::Heartbeat(Heartbeat { seq, last_rtt_us: rtt, load });
            let body = encode(&beat).unwrap();
            prop_assert!(body.len() <= MAX_DATAGRAM);
            prop_assert_eq!(decode_datagram::<AgentDatagram>(&body).unwrap(), beat);
            let ack = CoordDatagram::HeartbeatAck { seq, lease_ms: lease };
            prop_assert_eq!(decode_datagram::<CoordDatagram>(&encode(&ack).unwrap()).unwrap(), ack);
        }

        #[test]
        fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode::<AgentMsg>(&bytes);
            let _ = decode::<CoordMsg>(&bytes);
            let _ = decode_datagram::<AgentDatagram>(&bytes);
            let _ = peek_protocol_version(&bytes);
        }
    }
}
