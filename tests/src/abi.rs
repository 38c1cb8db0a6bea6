//! Numbers and encodings of proxy-wasm ABI 0.2.1 (github.com/proxy-wasm/spec, `abi-versions/v0.2.1`),
//! as the Rust SDK 0.2.5 (`src/types.rs`, `src/hostcalls.rs`) uses them.

/// Status codes returned by host calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Status {
    Ok = 0,
    NotFound = 1,
    BadArgument = 2,
    SerializationFailure = 3,
    ParseFailure = 4,
    InvalidMemoryAccess = 6,
    Empty = 7,
    CasMismatch = 8,
    InternalFailure = 10,
    Unimplemented = 12,
}

impl Status {
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// `Action` returned by the stream callbacks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Continue,
    Pause,
    /// Anything else the filter returned; a correct filter never does this.
    Other(i32),
}

impl Action {
    pub fn from_abi(value: i32) -> Action {
        match value {
            0 => Action::Continue,
            1 => Action::Pause,
            other => Action::Other(other),
        }
    }
}

/// `MapType` of the header-map calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MapType {
    RequestHeaders,
    RequestTrailers,
    ResponseHeaders,
    ResponseTrailers,
}

impl MapType {
    pub fn from_abi(value: i32) -> Option<MapType> {
        match value {
            0 => Some(MapType::RequestHeaders),
            1 => Some(MapType::RequestTrailers),
            2 => Some(MapType::ResponseHeaders),
            3 => Some(MapType::ResponseTrailers),
            _ => None,
        }
    }
}

/// `BufferType` of the buffer calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BufferType {
    RequestBody,
    ResponseBody,
    VmConfiguration,
    PluginConfiguration,
}

impl BufferType {
    pub fn from_abi(value: i32) -> Option<BufferType> {
        match value {
            0 => Some(BufferType::RequestBody),
            1 => Some(BufferType::ResponseBody),
            6 => Some(BufferType::VmConfiguration),
            7 => Some(BufferType::PluginConfiguration),
            _ => None,
        }
    }
}

/// Log levels of `proxy_log`.
pub fn log_level_name(level: i32) -> &'static str {
    match level {
        0 => "trace",
        1 => "debug",
        2 => "info",
        3 => "warn",
        4 => "error",
        5 => "critical",
        _ => "unknown",
    }
}

/// A header map as the ABI serialises it: count, then (key size, value size) pairs, then each key
/// and value followed by a NUL byte; all integers u32 little-endian.
pub fn serialize_map(pairs: &[(String, String)]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&(pairs.len() as u32).to_le_bytes());
    for (k, v) in pairs {
        out.extend_from_slice(&(k.len() as u32).to_le_bytes());
        out.extend_from_slice(&(v.len() as u32).to_le_bytes());
    }
    for (k, v) in pairs {
        out.extend_from_slice(k.as_bytes());
        out.push(0);
        out.extend_from_slice(v.as_bytes());
        out.push(0);
    }
    out
}

/// The inverse of [`serialize_map`]; `None` if the bytes are malformed.
pub fn deserialize_map(bytes: &[u8]) -> Option<Vec<(String, String)>> {
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let u32_at = |at: usize| -> Option<usize> {
        let b = bytes.get(at..at + 4)?;
        Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    let count = u32_at(0)?;
    let mut data = 4usize.checked_add(count.checked_mul(8)?)?;
    let mut pairs = Vec::with_capacity(count.min(1024));
    for i in 0..count {
        let key_len = u32_at(4 + i * 8)?;
        let value_len = u32_at(8 + i * 8)?;
        let key = bytes.get(data..data + key_len)?;
        data += key_len + 1;
        let value = bytes.get(data..data + value_len)?;
        data += value_len + 1;
        pairs.push((
            String::from_utf8_lossy(key).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        ));
    }
    Some(pairs)
}

/// A property path arrives as its segments separated by NUL bytes; we name it with dots
/// (`response\0flags` -> `response.flags`), as Envoy's docs do.
pub fn property_path(bytes: &[u8]) -> String {
    bytes
        .split(|b| *b == 0)
        .map(|part| String::from_utf8_lossy(part).into_owned())
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_maps_round_trip_through_the_abi_encoding() {
        let pairs = vec![
            (":status".to_owned(), "200".to_owned()),
            ("content-type".to_owned(), "text/event-stream".to_owned()),
            ("x-empty".to_owned(), String::new()),
        ];
        let bytes = serialize_map(&pairs);
        assert_eq!(&bytes[0..4], &3u32.to_le_bytes());
        assert_eq!(deserialize_map(&bytes), Some(pairs));
    }

    #[test]
    fn a_truncated_map_is_rejected() {
        let bytes = serialize_map(&[("a".to_owned(), "b".to_owned())]);
        assert_eq!(deserialize_map(&bytes[..bytes.len() - 2]), None);
    }

    #[test]
    fn property_paths_are_joined_with_dots() {
        assert_eq!(property_path(b"response\0flags"), "response.flags");
    }
}
