//! The proxy-wasm ABI's serialised header map, as `proxy_get_header_map_pairs` returns it: a
//! little-endian `u32` count, then a `u32` key length and a `u32` value length per entry, then each
//! entry's key and value, each followed by a NUL byte.
//!
//! Why the wasm shell reads response headers this way: every host call out of V8 costs about
//! 10,000 instructions in Envoy 1.40 (a header read also calls back into the module to allocate the
//! copy; `tests/bench/filter_instructions.py` measured one header read less as 10.5k fewer per
//! request), so one call for the whole map beats one call per header. Plain bytes in, no host
//! calls: the parsing is tested natively here.

/// The value of the first entry named `name` (header names are lowercase in Envoy's maps), or
/// `None` when there is none or the bytes are not a well-formed map.
pub fn first<'a>(map: &'a [u8], name: &[u8]) -> Option<&'a [u8]> {
    let count = usize::try_from(u32_at(map, 0)?).ok()?;
    let mut data = count.checked_mul(8)?.checked_add(4)?;
    for i in 0..count {
        let sizes = i.checked_mul(8)?.checked_add(4)?;
        let key_len = usize::try_from(u32_at(map, sizes)?).ok()?;
        let value_len = usize::try_from(u32_at(map, sizes.checked_add(4)?)?).ok()?;
        let key_end = data.checked_add(key_len)?;
        let value_start = key_end.checked_add(1)?;
        let value_end = value_start.checked_add(value_len)?;
        let key = map.get(data..key_end)?;
        let value = map.get(value_start..value_end)?;
        if key == name {
            return Some(value);
        }
        data = value_end.checked_add(1)?;
    }
    None
}

fn u32_at(bytes: &[u8], at: usize) -> Option<u32> {
    let raw: [u8; 4] = bytes.get(at..at.checked_add(4)?)?.try_into().ok()?;
    Some(u32::from_le_bytes(raw))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serialise(pairs: &[(&str, &[u8])]) -> Vec<u8> {
        let mut out = (pairs.len() as u32).to_le_bytes().to_vec();
        for (k, v) in pairs {
            out.extend_from_slice(&(k.len() as u32).to_le_bytes());
            out.extend_from_slice(&(v.len() as u32).to_le_bytes());
        }
        for (k, v) in pairs {
            out.extend_from_slice(k.as_bytes());
            out.push(0);
            out.extend_from_slice(v);
            out.push(0);
        }
        out
    }

    #[test]
    fn finds_the_first_entry_of_a_name() {
        let map = serialise(&[
            (":status", b"200"),
            ("content-type", b"text/event-stream"),
            ("x-empty", b""),
            ("content-encoding", b"gzip"),
            ("content-encoding", b"br"),
            ("x-bytes", b"\xff\x00\xfe"),
        ]);
        assert_eq!(first(&map, b":status"), Some(&b"200"[..]));
        assert_eq!(
            first(&map, b"content-type"),
            Some(&b"text/event-stream"[..])
        );
        assert_eq!(first(&map, b"x-empty"), Some(&b""[..]));
        assert_eq!(first(&map, b"content-encoding"), Some(&b"gzip"[..]));
        assert_eq!(first(&map, b"x-bytes"), Some(&b"\xff\x00\xfe"[..]));
        assert_eq!(first(&map, b"content-length"), None);
        assert_eq!(first(&serialise(&[]), b":status"), None);
    }

    #[test]
    fn malformed_maps_give_nothing_and_never_panic() {
        let map = serialise(&[(":status", b"200"), ("content-type", b"application/json")]);
        for cut in 0..map.len() - 1 {
            // A truncated map may still hold the first entry whole; never anything wrong.
            let got = first(&map[..cut], b"content-type");
            assert_eq!(got, None, "cut at {cut}");
        }
        let mut huge = map.clone();
        huge[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(first(&huge, b"content-type"), None);
        let mut long_key = map.clone();
        long_key[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(first(&long_key, b":status"), None);
        assert_eq!(first(b"", b":status"), None);
    }
}
