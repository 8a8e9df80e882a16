//! The QUIC transport parameters both ends use.
//!
//! Messages are small, so the flow-control windows are small limits (quinn allocates as data
//! arrives, not up front); datagrams are on for heartbeats; a few streams suffice (one control
//! stream, one heartbeat stream each way where a path has no datagrams). The idle timeout is
//! well beyond any lease, so that liveness is decided by leases, never by QUIC, and keep-alives
//! only matter on a link quieter than the heartbeats.

use crate::codec::{self, DEFAULT_MAX_FRAME};
use crate::proto::{AgentMsg, CoordMsg};
use std::time::Duration;

/// How long an agent waits for the answer to its first frame (`Hello`) once the handshake is
/// done. Longer than a connect: in a reconnect storm (thousands of agents after a coordinator
/// restart) the coordinator queues registrations, and an agent that gives up on one the
/// coordinator has already written throws that work away and queues again. The idle timeout
/// still ends the connection if the coordinator is gone.
pub const HELLO_ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

/// Sends an agent's first frame on the control stream and reads the coordinator's answer,
/// waiting at most [`HELLO_ANSWER_TIMEOUT`]. A `Reject` is an answer (`Ok`), for the caller to
/// judge; `Err` is why no answer came (write failed, stream closed, timeout).
pub async fn exchange_hello(
    conn: &quinn::Connection,
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    hello: &AgentMsg,
) -> Result<CoordMsg, String> {
    if let Err(e) = codec::write_msg(send, hello, DEFAULT_MAX_FRAME).await {
        return Err(format!("sending Hello: {e}"));
    }
    let answer = tokio::time::timeout(
        HELLO_ANSWER_TIMEOUT,
        codec::read_msg::<CoordMsg, _>(recv, DEFAULT_MAX_FRAME),
    )
    .await;
    match answer {
        Ok(Ok(Some(m))) => Ok(m),
        Ok(Ok(None)) => Err(format!(
            "the coordinator closed the stream: {}",
            conn.close_reason()
                .map(|r| r.to_string())
                .unwrap_or_default()
        )),
        Ok(Err(e)) => Err(format!("reading the answer: {e}")),
        Err(_) => Err(format!(
            "no answer to Hello within {} s",
            HELLO_ANSWER_TIMEOUT.as_secs()
        )),
    }
}

/// The transport configuration of agents and the coordinator.
pub fn transport_config() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        Duration::from_secs(15)
            .try_into()
            .expect("15 s fits a VarInt"),
    ));
    t.keep_alive_interval(Some(Duration::from_secs(3)));
    t.max_concurrent_bidi_streams(4u32.into());
    t.max_concurrent_uni_streams(4u32.into());
    t.stream_receive_window((1u32 << 20).into());
    t.receive_window((2u32 << 20).into());
    t.send_window(2 << 20);
    t.datagram_receive_buffer_size(Some(64 * 1024));
    // With segmentation offload, quinn keeps a send buffer of (GSO segments x MTU), about
    // 90 KiB, in every connection for good: 1.2 GB of a 10,000-node coordinator. Our messages
    // are one small packet at a time, so batching segments buys nothing here.
    t.enable_segmentation_offload(false);
    t
}
