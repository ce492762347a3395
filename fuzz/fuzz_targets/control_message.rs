//! The server's control-message decoder on arbitrary bytes: it must return a message or an
//! error, never panic, hang or allocate beyond its bound; a decoded message survives a
//! re-encoding unchanged.
#![no_main]

use cipherml::protocol::{decode, encode, ClientMsg, ServerMsg};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = decode::<ClientMsg>(data) {
        assert_eq!(decode::<ClientMsg>(&encode(&m).unwrap()).unwrap(), m);
    }
    if let Ok(m) = decode::<ServerMsg>(data) {
        assert_eq!(decode::<ServerMsg>(&encode(&m).unwrap()).unwrap(), m);
    }
});
