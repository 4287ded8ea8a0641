//! Fuzzes the RTP receive view and the telephone-event parser, which see
//! untrusted datagrams from every leg and must never panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mixer::dtmf::{DtmfDetector, TelephoneEvent};
use mixer::rtp::{RtpHeader, RtpView};

fuzz_target!(|data: &[u8]| {
    // The raw bytes as a telephone-event payload too, so short and odd
    // payloads reach the parser directly.
    let _ = TelephoneEvent::parse(data).map(|e| e.digit());

    let Ok(view) = RtpView::parse(data) else {
        return;
    };
    let marker = view.marker();
    let payload_type = view.payload_type();
    let sequence = view.sequence();
    let timestamp = view.timestamp();
    let ssrc = view.ssrc();
    let csrcs = view.csrcs().count();
    assert!(csrcs <= 15);
    let payload = view.payload();
    assert!(12 + csrcs * 4 + payload.len() <= data.len());
    let _ = view.extension_profile();
    let mut audio_level = None;
    for id in 0..=255u8 {
        if let Some(element) = view.extension(id) {
            assert!(element.len() < data.len());
        }
        if let Some(level) = view.audio_level(id) {
            assert!(level.level <= 127);
            if (1..=14).contains(&id) && audio_level.is_none() {
                audio_level = Some((id, level));
            }
        }
    }

    // Whatever the view read must survive the send path's writer.
    let header = RtpHeader {
        marker,
        payload_type,
        sequence,
        timestamp,
        ssrc,
        audio_level,
    };
    let mut out = [0u8; 32];
    let written = header.write(&mut out);
    assert_eq!(written, Some(header.len()));
    let reparsed = RtpView::parse(out.get(..header.len()).unwrap_or_default());
    assert!(reparsed.is_ok_and(|r| r.sequence() == sequence
        && r.timestamp() == timestamp
        && r.ssrc() == ssrc
        && r.marker() == marker
        && r.payload_type() == payload_type
        && audio_level.is_none_or(|(id, level)| r.audio_level(id) == Some(level))));

    if let Some(event) = TelephoneEvent::parse(payload) {
        let _ = event.digit();
        let mut detector = DtmfDetector::new();
        let _ = detector.push(timestamp, &event);
        let _ = detector.push(timestamp, &event);
    }
});
