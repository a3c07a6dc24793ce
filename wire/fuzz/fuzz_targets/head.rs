//! Request heads: parsing never panics, a parsed head never claims more bytes than it was
//! given, and the same head parses the same way when more bytes follow it (what a pipelined
//! request looks like).
#![no_main]

use libfuzzer_sys::fuzz_target;
use myelin_wire::{Framing, MAX_HEAD, parse_head};

fuzz_target!(|data: &[u8]| {
    let Ok(Some((head, len))) = parse_head(data) else { return };
    assert!(len <= data.len() && len <= MAX_HEAD);
    if let Framing::Length(n) = head.framing {
        assert!(n > 0);
    }
    let mut longer = data[..len].to_vec();
    longer.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    let (again, len_again) = parse_head(&longer).expect("a head that parsed").expect("complete");
    assert_eq!(len, len_again);
    assert_eq!(head.framing, again.framing);
    assert_eq!(head.parts.uri, again.parts.uri);
});
