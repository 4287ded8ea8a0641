//! RFC 4733 telephone-event payloads and per-leg key-press detection.
//!
//! Callers type a room PIN with DTMF. RFC 4733 sends each key press as a run
//! of packets sharing one RTP timestamp and repeats the final (end) packet
//! three times, so the raw stream would report every digit many times; the
//! detector here turns it back into one digit per key press.

/// One telephone-event payload (RFC 4733 §2.3).
///
/// Exists so the leg can recognise DTMF packets by payload type and hand
/// them to [`DtmfDetector`] instead of the audio decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// Event code; 0..=15 are the DTMF keys, higher codes are other tones.
    pub event: u8,
    /// E bit: set on the packets that close the event.
    pub end: bool,
    /// Power level in -dBm0 (0..=63), kept for diagnostics only.
    pub volume: u8,
    /// Duration so far in RTP timestamp units.
    pub duration: u16,
}

impl TelephoneEvent {
    /// Reads the first 4-byte event block; `None` when the payload is too
    /// short to hold one. Any following bytes are ignored since only the
    /// first block describes the event this packet belongs to.
    pub fn parse(payload: &[u8]) -> Option<Self> {
        let (&[event, flags, d0, d1], _) = payload.split_first_chunk::<4>()?;
        Some(TelephoneEvent {
            event,
            end: flags & 0x80 != 0,
            // Bit 6 is reserved (R) and must be ignored by receivers.
            volume: flags & 0x3F,
            duration: u16::from_be_bytes([d0, d1]),
        })
    }

    /// The DTMF key this event stands for: 0-9 -> '0'..'9', 10 '*', 11 '#',
    /// 12-15 'A'-'D'; `None` for non-DTMF events (RFC 4733 §3.2 table).
    pub fn digit(&self) -> Option<char> {
        digit_of(self.event)
    }
}

/// How far (in timestamp units) a packet may lag the current event and
/// still count as a late packet of an older event. 2^20 ticks is about 22 s
/// at 48 kHz and 2 min at 8 kHz, far longer than any reordering; beyond it a
/// timestamp is taken as a stream restart rather than ignored forever.
const STALE_WINDOW: u32 = 1 << 20;

/// RFC 4733 §2.5.1.3: an event longer than the duration field can express
/// is split into segments with fresh timestamps, the earlier ones ending at
/// this duration without the E bit.
const MAX_DURATION: u16 = u16::MAX;

/// The event currently being received.
#[derive(Debug, Clone, Copy)]
struct Current {
    timestamp: u32,
    event: u8,
    duration: u16,
    reported: bool,
}

/// Turns the packet stream of one leg into one digit per key press.
///
/// Exists because RFC 4733 repeats packets by design (updates during the
/// press, three end packets) and the network may lose or reorder them,
/// while the room owner must see each digit of a PIN exactly once.
#[derive(Debug, Default)]
pub struct DtmfDetector {
    current: Option<Current>,
}

impl DtmfDetector {
    /// A detector with no event in progress, one per leg.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feed each telephone-event packet (its RTP timestamp identifies the
    /// event). Returns Some(digit) exactly once per event: when its first end
    /// packet arrives, or — if all end packets are lost — when a packet with
    /// a new timestamp arrives while the previous event never ended (report
    /// the previous one then). Duplicates and retransmitted end packets
    /// return None.
    ///
    /// Packets up to 2^20 timestamp units behind the current event are late
    /// leftovers of an event already handled and are ignored. If the first
    /// packet of a new event is already an end packet while the previous
    /// event still needs reporting, the previous digit is returned and the
    /// new one on its next (repeated) end packet. Events that are not DTMF
    /// keys are tracked the same way but never produce a digit.
    pub fn push(&mut self, rtp_timestamp: u32, event: &TelephoneEvent) -> Option<char> {
        let fresh = Current {
            timestamp: rtp_timestamp,
            event: event.event,
            duration: event.duration,
            reported: false,
        };
        let Some(cur) = self.current.as_mut() else {
            return self.begin(fresh, event.end);
        };

        if rtp_timestamp == cur.timestamp {
            cur.duration = cur.duration.max(event.duration);
            return cur.end_if(event.end);
        }

        let behind = cur.timestamp.wrapping_sub(rtp_timestamp);
        if (1..=STALE_WINDOW).contains(&behind) {
            return None;
        }

        // A newer timestamp is a new key press, or the next segment of a very
        // long one, which must not count as a second press.
        if !cur.reported && cur.duration == MAX_DURATION && cur.event == event.event {
            cur.timestamp = rtp_timestamp;
            cur.duration = event.duration;
            return cur.end_if(event.end);
        }

        if cur.reported {
            return self.begin(fresh, event.end);
        }
        // All end packets of the previous event were lost. Only one digit can
        // be returned per call, so the new event waits for its next end
        // packet (senders repeat them three times).
        let previous = cur.event;
        self.current = Some(fresh);
        digit_of(previous)
    }

    fn begin(&mut self, fresh: Current, end: bool) -> Option<char> {
        self.current.insert(fresh).end_if(end)
    }
}

impl Current {
    /// Reports the event on its first end packet only.
    fn end_if(&mut self, end: bool) -> Option<char> {
        if end && !self.reported {
            self.reported = true;
            return digit_of(self.event);
        }
        None
    }
}

/// Maps an event code to its key, shared with the detector which keeps only
/// the code of the event in progress.
fn digit_of(event: u8) -> Option<char> {
    match event {
        0..=9 => Some(char::from(b'0' + event)),
        10 => Some('*'),
        11 => Some('#'),
        12..=15 => Some(char::from(b'A' + (event - 12))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    fn ev(event: u8, end: bool, duration: u16) -> TelephoneEvent {
        TelephoneEvent {
            event,
            end,
            volume: 10,
            duration,
        }
    }

    /// RFC 4733 §2.5: updates with growing duration, then three end packets.
    fn press(event: u8, updates: u16) -> Vec<TelephoneEvent> {
        let mut packets: Vec<_> = (1..=updates).map(|i| ev(event, false, i * 160)).collect();
        packets.extend([ev(event, true, (updates + 1) * 160); 3]);
        packets
    }

    fn feed(d: &mut DtmfDetector, ts: u32, packets: &[TelephoneEvent]) -> Vec<Option<char>> {
        packets.iter().map(|p| d.push(ts, p)).collect()
    }

    #[test]
    fn parse_fields() {
        let e = TelephoneEvent::parse(&[11, 0x80 | 0x40 | 10, 0x03, 0x20, 0xFF]);
        assert_eq!(e, Some(ev(11, true, 800)));
        assert_eq!(e.and_then(|e| e.digit()), Some('#'));
        assert_eq!(
            TelephoneEvent::parse(&[1, 0, 0, 0]),
            Some(ev(1, false, 0)).map(|e| TelephoneEvent { volume: 0, ..e })
        );
    }

    #[test]
    fn short_payload_is_none() {
        for n in 0..4 {
            assert_eq!(
                TelephoneEvent::parse(&[1, 0x80, 0, 160][..n]),
                None,
                "len {n}"
            );
        }
    }

    #[test]
    fn digit_mapping() {
        let keys: String = (0..=15).filter_map(|e| ev(e, false, 0).digit()).collect();
        assert_eq!(keys, "0123456789*#ABCD");
        for e in 16..=255 {
            assert_eq!(ev(e, false, 0).digit(), None);
        }
    }

    #[test]
    fn one_press_gives_one_digit_on_first_end() {
        let mut d = DtmfDetector::new();
        let out = feed(&mut d, 1000, &press(5, 5));
        let mut want = vec![None; 8];
        want[5] = Some('5');
        assert_eq!(out, want);
    }

    #[test]
    fn same_key_twice_gives_two_digits() {
        let mut d = DtmfDetector::new();
        let mut out = feed(&mut d, 1000, &press(7, 5));
        out.extend(feed(&mut d, 2600, &press(7, 5)));
        assert_eq!(out.into_iter().flatten().collect::<String>(), "77");
    }

    #[test]
    fn late_packets_of_a_reported_event_are_ignored() {
        let mut d = DtmfDetector::new();
        assert_eq!(d.push(1000, &ev(1, true, 800)), Some('1'));
        assert_eq!(d.push(2000, &ev(2, false, 160)), None);
        // Retransmitted end of the first press, arriving after the second began.
        assert_eq!(d.push(1000, &ev(1, true, 800)), None);
        assert_eq!(d.push(1000, &ev(1, false, 320)), None);
        assert_eq!(d.push(2000, &ev(2, true, 800)), Some('2'));
        assert_eq!(d.push(2000, &ev(2, true, 800)), None);
    }

    #[test]
    fn lost_end_packets_report_on_next_event() {
        let mut d = DtmfDetector::new();
        assert_eq!(d.push(1000, &ev(3, false, 160)), None);
        assert_eq!(d.push(1000, &ev(3, false, 320)), None);
        assert_eq!(d.push(5000, &ev(4, false, 160)), Some('3'));
        assert_eq!(d.push(5000, &ev(4, true, 480)), Some('4'));
    }

    #[test]
    fn lost_end_then_next_event_starts_with_end() {
        let mut d = DtmfDetector::new();
        assert_eq!(d.push(1000, &ev(3, false, 160)), None);
        assert_eq!(d.push(5000, &ev(4, true, 480)), Some('3'));
        assert_eq!(d.push(5000, &ev(4, true, 480)), Some('4'));
        assert_eq!(d.push(5000, &ev(4, true, 480)), None);
    }

    #[test]
    fn unknown_events_give_no_digit() {
        let mut d = DtmfDetector::new();
        let out = feed(&mut d, 1000, &press(16, 3));
        assert!(out.iter().all(Option::is_none));
        // A non-DTMF event without end packets does not hide the next key.
        assert_eq!(d.push(9000, &ev(200, false, 160)), None);
        assert_eq!(d.push(20000, &ev(9, true, 160)), None);
        assert_eq!(d.push(20000, &ev(9, true, 160)), Some('9'));
    }

    #[test]
    fn long_event_split_into_segments_is_one_press() {
        let mut d = DtmfDetector::new();
        assert_eq!(d.push(0, &ev(8, false, 40000)), None);
        assert_eq!(d.push(0, &ev(8, false, MAX_DURATION)), None);
        assert_eq!(d.push(65535, &ev(8, false, 8000)), None);
        assert_eq!(d.push(65535, &ev(8, true, 9000)), Some('8'));
        assert_eq!(d.push(65535, &ev(8, true, 9000)), None);
    }

    #[test]
    fn timestamp_wrap_and_stream_restart() {
        let mut d = DtmfDetector::new();
        assert_eq!(d.push(u32::MAX - 10, &ev(1, true, 160)), Some('1'));
        assert_eq!(d.push(150, &ev(2, true, 160)), Some('2'));
        // Far behind the window: a restarted sender, not a late packet.
        assert_eq!(
            d.push(150u32.wrapping_sub(STALE_WINDOW + 1), &ev(3, true, 160)),
            Some('3')
        );
    }

    /// One press as it arrives: packets shuffled within the press, some
    /// duplicated, and either all end packets kept or (optionally) all lost.
    fn arrival() -> impl Strategy<Value = (u8, u32, Vec<TelephoneEvent>, bool)> {
        (
            0u8..=15,
            160u32..=16000,
            1u16..=8,
            any::<bool>(),
            any::<u64>(),
        )
            .prop_flat_map(|(key, gap, updates, lose_ends, seed)| {
                let packets = press(key, updates);
                let n = packets.len();
                (
                    Just((key, gap, lose_ends)),
                    Just(packets),
                    vec(0..n, 0..4),
                    Just(seed),
                )
            })
            .prop_map(|((key, gap, lose_ends), mut packets, dups, seed)| {
                let dup: Vec<_> = dups.iter().map(|&i| packets[i]).collect();
                packets.extend(dup);
                if lose_ends {
                    packets.retain(|p| !p.end);
                }
                // Deterministic shuffle from the seed so shrinking stays stable.
                let mut state = seed | 1;
                for i in (1..packets.len()).rev() {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    packets.swap(i, (state % (i as u64 + 1)) as usize);
                }
                (key, gap, packets, lose_ends)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig { failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn each_press_reported_once_in_order(
            start in any::<u32>(),
            presses in vec(arrival(), 1..=8),
        ) {
            let mut d = DtmfDetector::new();
            let mut ts = start;
            let mut got = String::new();
            let mut want = String::new();
            let last = presses.len() - 1;
            for (i, (key, gap, packets, lose_ends)) in presses.iter().enumerate() {
                // The last press has nothing after it to flush a lost end.
                if !(i == last && *lose_ends) {
                    want.extend(ev(*key, false, 0).digit());
                }
                got.extend(packets.iter().filter_map(|p| d.push(ts, p)));
                ts = ts.wrapping_add(*gap);
            }
            prop_assert_eq!(got, want);
        }

        #[test]
        fn non_dtmf_events_never_give_digits(
            packets in vec((any::<u32>(), 16u8..=255, any::<bool>(), any::<u16>()), 0..64),
        ) {
            let mut d = DtmfDetector::new();
            for (ts, event, end, duration) in packets {
                prop_assert_eq!(d.push(ts, &ev(event, end, duration)), None);
            }
        }

        #[test]
        fn parse_never_panics_and_reads_the_first_block(payload in vec(any::<u8>(), 0..16)) {
            let e = TelephoneEvent::parse(&payload);
            prop_assert_eq!(e.is_some(), payload.len() >= 4);
            if let Some(e) = e {
                prop_assert_eq!(e.event, payload[0]);
                prop_assert_eq!(e.end, payload[1] & 0x80 != 0);
                prop_assert_eq!(e.volume, payload[1] & 0x3F);
                prop_assert_eq!(e.duration, u16::from(payload[2]) << 8 | u16::from(payload[3]));
            }
        }
    }
}
