//! Arbitrary bytes into the SIP intake: datagram parsing and stream framing must never
//! panic, and every framed message must parse or be refused with a reason.
#![no_main]

use libfuzzer_sys::fuzz_target;
use supernode::sip::intake;

fuzz_target!(|data: &[u8]| {
    let _ = intake::parse(data);
    if let Ok(normalized) = intake::normalize(data) {
        // Normalising twice changes nothing.
        if let Ok(again) = intake::normalize(&normalized) {
            assert_eq!(again, normalized);
        }
    }
    let mut rest = data;
    while let Ok(Some(n)) = intake::frame_stream(rest) {
        if n == 0 || n > rest.len() {
            break;
        }
        let _ = intake::parse(&rest[..n]);
        rest = &rest[n..];
    }
});
