//! The QUIC transport parameters both ends use.
//!
//! Messages are small, so the flow-control windows are small limits (quinn allocates as data
//! arrives, not up front); datagrams are on for heartbeats; a few streams suffice (one control
//! stream, one heartbeat stream each way where a path has no datagrams). The idle timeout is
//! well beyond any lease, so that liveness is decided by leases, never by QUIC, and keep-alives
//! only matter on a link quieter than the heartbeats.

use std::time::Duration;

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
