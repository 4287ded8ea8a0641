//! Packets a tick produced, in one reusable buffer.

use std::net::SocketAddr;

use crate::leg::{Leg, LegId};

/// One RTP packet waiting to be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutPacket {
    /// The leg it belongs to (its socket sends it).
    pub leg: LegId,
    /// Where it goes: the leg's latched remote address.
    pub destination: SocketAddr,
    start: u32,
    len: u32,
}

/// The packets of one or more ticks, stored back to back in one buffer whose capacity
/// is kept between ticks, so steady-state ticks allocate nothing.
#[derive(Debug, Default)]
pub struct Outbox {
    data: Vec<u8>,
    packets: Vec<OutPacket>,
}

impl Outbox {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }
    /// An outbox with room for `packets` packets of typical size.
    pub fn with_capacity(packets: usize) -> Self {
        Outbox {
            data: Vec::with_capacity(packets * 256),
            packets: Vec::with_capacity(packets),
        }
    }
    /// Forgets the packets, keeping the memory.
    pub fn clear(&mut self) {
        self.data.clear();
        self.packets.clear();
    }
    /// Number of packets.
    pub fn len(&self) -> usize {
        self.packets.len()
    }
    /// Whether there are no packets.
    pub fn is_empty(&self) -> bool {
        self.packets.is_empty()
    }
    /// Total bytes of all packets.
    pub fn bytes(&self) -> usize {
        self.data.len()
    }
    /// The packets with their bytes, in the order they were produced.
    pub fn iter(&self) -> impl Iterator<Item = (&OutPacket, &[u8])> {
        self.packets.iter().map(|p| {
            let s = p.start as usize;
            (p, &self.data[s..s + p.len as usize])
        })
    }

    /// Appends one RTP packet for `leg` with its own header and a payload that may be
    /// shared with other legs.
    pub(crate) fn push_rtp(&mut self, leg: &mut Leg, silent: bool, payload: &[u8]) {
        let header = leg.next_header(silent);
        let start = self.data.len();
        let hlen = header.len();
        self.data.resize(start + hlen, 0);
        let written = header.write(&mut self.data[start..]).unwrap_or(0);
        self.data.truncate(start + written);
        self.data.extend_from_slice(payload);
        let len = self.data.len() - start;
        leg.stats.packets_sent += 1;
        leg.stats.bytes_sent += len as u64;
        self.packets.push(OutPacket {
            leg: leg.id,
            destination: leg.remote,
            start: start as u32,
            len: len as u32,
        });
    }
}
