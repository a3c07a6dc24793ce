//! Chunked bodies: decoding never panics; a decoded body is never longer than its input; the
//! result does not depend on how the input was split into reads; and a body that was accepted
//! re-encodes into framing that decodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use myelin_wire::{Chunk, ChunkedDecoder, decode_chunked};

fuzz_target!(|data: &[u8]| {
    let Some((&split, input)) = data.split_first() else { return };
    let whole = decode_chunked(input);

    // The same bytes arriving in two reads.
    let split = usize::from(split).min(input.len());
    let mut decoder = ChunkedDecoder::new();
    let mut buf = input[..split].to_vec();
    let mut rest = &input[split..];
    let mut body = Vec::new();
    let mut consumed = 0;
    let piecewise = loop {
        let (used, next) = match decoder.decode(&buf) {
            Ok(step) => step,
            Err(e) => break Err(e),
        };
        buf.drain(..used);
        consumed += used;
        let more = |buf: &mut Vec<u8>, rest: &mut &[u8]| {
            buf.extend_from_slice(rest);
            *rest = &[];
        };
        match next {
            Chunk::End => break Ok(Some((body, consumed))),
            Chunk::NeedMore if rest.is_empty() => break Ok(None),
            Chunk::NeedMore => more(&mut buf, &mut rest),
            Chunk::Data(n) => {
                if (buf.len() as u64) < n {
                    more(&mut buf, &mut rest);
                }
                if (buf.len() as u64) < n {
                    break Ok(None);
                }
                body.extend(buf.drain(..n as usize));
                consumed += n as usize;
            }
        }
    };
    match (&whole, &piecewise) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(_), Err(_)) => {}
        // A refusal may come earlier in one reading than the other only if the other ran out of
        // input first.
        (Err(_), Ok(None)) | (Ok(None), Err(_)) => {}
        _ => panic!("whole {whole:?} vs piecewise {piecewise:?}"),
    }
    if let Ok(Some((body, used))) = whole {
        assert!(body.len() <= used && used <= input.len());
        let mut framed = format!("{:x}\r\n", body.len()).into_bytes();
        framed.extend_from_slice(&body);
        framed.extend_from_slice(b"\r\n0\r\n\r\n");
        let again = decode_chunked(if body.is_empty() { b"0\r\n\r\n" } else { &framed }).expect("re-encoded");
        assert_eq!(again.map(|(b, _)| b), Some(body));
    }
});
