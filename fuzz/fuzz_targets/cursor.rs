//! Pagination cursors: an arbitrary string never decodes unless it is exactly what the codec issued
//! for that list, and what the codec issues always decodes to its position, for its list only.

#![no_main]

use feeds::cursor::CursorCodec;
use libfuzzer_sys::fuzz_target;

const LISTS: [&str; 5] = [
    "flat:usr_02",
    "user:usr_01",
    "aggregated:usr_02",
    "followers:usr_01",
    "following:usr_02",
];

fuzz_target!(|input: (u8, &str, &str)| {
    let (selector, a, b) = input;
    let codec = CursorCodec::new(b"fuzzing cursor secret");
    let list = LISTS[selector as usize % LISTS.len()];

    // Untrusted input: refused, or exactly a cursor this codec issued for this list.
    for cursor in [a, b] {
        if let Ok(position) = codec.decode(list, cursor) {
            assert_eq!(codec.encode(list, &position), cursor);
        }
    }

    // Issued cursors: round trip for their list, refused by another list and by another key.
    let cursor = codec.encode(a, b);
    assert_eq!(codec.decode(a, &cursor).as_deref(), Ok(b));
    if a != list {
        assert!(codec.decode(list, &cursor).is_err());
    }
    assert!(CursorCodec::new(b"another secret")
        .decode(a, &cursor)
        .is_err());
    // Any single altered character is refused.
    let mut altered = cursor.clone().into_bytes();
    let at = selector as usize % altered.len();
    altered[at] = if altered[at] == b'A' { b'B' } else { b'A' };
    let altered = String::from_utf8(altered).unwrap();
    if altered != cursor {
        assert!(codec.decode(a, &altered).is_err(), "{altered:?}");
    }
});
