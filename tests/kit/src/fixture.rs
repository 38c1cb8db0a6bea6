//! Golden fixtures: one HTTP exchange in a real server's wire format plus every series it must
//! produce (format: `tests/fixtures/README.md`); how a body is cut into callbacks; and the derived
//! stream an upstream sends a client that did not ask for usage.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    #[serde(skip)]
    pub name: String,
    #[serde(skip)]
    dir: PathBuf,
    pub description: String,
    pub source: String,
    #[serde(default)]
    pub config: Option<Value>,
    pub request: Request,
    pub response: Response,
    #[serde(default)]
    pub end: End,
    pub expect: Vec<Expect>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    #[serde(default = "post")]
    pub method: String,
    pub path: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: Option<Value>,
    #[serde(default)]
    pub body_raw: Option<String>,
}

fn post() -> String {
    "POST".to_owned()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    pub status: u16,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub body: Option<Value>,
    #[serde(default)]
    pub body_raw: Option<String>,
    #[serde(default)]
    pub body_file: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum End {
    #[default]
    Complete,
    ClientAbort,
    UpstreamAbort,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    pub metric: String,
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub value: Option<u64>,
    #[serde(default)]
    pub count: Option<u64>,
}

impl Expect {
    /// `name{labels} value=N` or `name{labels} count=N`.
    pub fn line(&self) -> String {
        let key = series_key(&self.metric, &self.labels);
        match (self.value, self.count) {
            (Some(v), None) => format!("{key} value={v}"),
            (None, Some(c)) => format!("{key} count={c}"),
            _ => format!("{key} (needs exactly one of value and count)"),
        }
    }
}

/// `tests/fixtures` of the repository.
pub fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

/// A canonical series key: `name{k="v",...}` with labels sorted (values quoted and escaped as Rust
/// debug strings).
pub fn series_key(name: &str, labels: &BTreeMap<String, String>) -> String {
    let inner: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v:?}")).collect();
    format!("{name}{{{}}}", inner.join(","))
}

/// Every `*.json` in `dir`, sorted by name.
pub fn load_all(dir: &Path) -> Result<Vec<Fixture>> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    paths.sort();
    paths.iter().map(|p| Fixture::load(p)).collect()
}

impl Fixture {
    pub fn load(path: &Path) -> Result<Fixture> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut fixture: Fixture = serde_json::from_str(&text)
            .with_context(|| format!("parsing fixture {}", path.display()))?;
        fixture.name = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        fixture.dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
        fixture.validate()?;
        Ok(fixture)
    }

    fn validate(&self) -> Result<()> {
        let name = &self.name;
        if self.request.body.is_some() && self.request.body_raw.is_some() {
            bail!("fixture {name}: request has both `body` and `body_raw`");
        }
        let bodies = [
            self.response.body.is_some(),
            self.response.body_raw.is_some(),
            self.response.body_file.is_some(),
        ];
        if bodies.iter().filter(|b| **b).count() != 1 {
            bail!("fixture {name}: response needs exactly one of `body`, `body_raw`, `body_file`");
        }
        for e in &self.expect {
            if e.value.is_some() == e.count.is_some() {
                bail!(
                    "fixture {name}: expect entry {} needs exactly one of `value` and `count`",
                    e.line()
                );
            }
        }
        Ok(())
    }

    /// The plugin configuration text (`{}` when absent).
    pub fn config_text(&self) -> String {
        match &self.config {
            None => "{}".to_owned(),
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
        }
    }

    pub fn request_body(&self) -> Vec<u8> {
        match (&self.request.body, &self.request.body_raw) {
            (Some(v), _) => serde_json::to_vec(v).unwrap_or_default(),
            (None, Some(raw)) => raw.as_bytes().to_vec(),
            (None, None) => Vec::new(),
        }
    }

    pub fn response_body(&self) -> Result<Vec<u8>> {
        if let Some(v) = &self.response.body {
            return Ok(serde_json::to_vec(v)?);
        }
        if let Some(raw) = &self.response.body_raw {
            return Ok(raw.as_bytes().to_vec());
        }
        match &self.response.body_file {
            Some(file) => {
                let path = self.dir.join(file);
                std::fs::read(&path)
                    .with_context(|| format!("fixture {}: reading {}", self.name, path.display()))
            }
            None => Ok(Vec::new()),
        }
    }

    /// The expected series as sorted lines, comparable with [`observed_lines`].
    pub fn expected_lines(&self) -> BTreeSet<String> {
        self.expect.iter().map(Expect::line).collect()
    }
}

/// How a body is cut into `proxy_on_*_body` calls.
#[derive(Clone, Debug)]
pub enum Split {
    /// One chunk.
    Whole,
    /// Cut at `cuts` random points chosen by a generator seeded with `seed`.
    Random { seed: u64, cuts: usize },
    /// Cut at these offsets.
    At(Vec<usize>),
    /// One byte per call.
    ByteByByte,
    /// The whole body, then an empty chunk that carries end_of_stream (as Envoy delivers an
    /// HTTP/2 END_STREAM on an empty DATA frame).
    EmptyLastChunk,
}

impl Split {
    pub fn cut<'a>(&self, body: &'a [u8]) -> Vec<&'a [u8]> {
        let points: Vec<usize> = match self {
            Split::Whole => Vec::new(),
            Split::EmptyLastChunk => return vec![body, &body[body.len()..]],
            Split::ByteByByte => (1..body.len()).collect(),
            Split::At(points) => points.clone(),
            Split::Random { seed, cuts } => {
                let mut rng = StdRng::seed_from_u64(*seed);
                if body.len() < 2 {
                    Vec::new()
                } else {
                    (0..*cuts)
                        .map(|_| rng.random_range(1..body.len()))
                        .collect()
                }
            }
        };
        split_at_points(body, &points)
    }
}

/// The cuts every suite replays each fixture at (the filter's native core tests and the wasm host
/// suite alike): seeded random cuts (1 to 36 points), one byte per call, and an empty last chunk
/// that carries end_of_stream. The series must not depend on any of them.
pub fn standard_splits() -> Vec<Split> {
    let mut splits: Vec<Split> = (0..6u64)
        .map(|seed| Split::Random {
            seed,
            cuts: 1 + (seed as usize * 7) % 40,
        })
        .collect();
    splits.push(Split::ByteByByte);
    splits.push(Split::EmptyLastChunk);
    splits
}

/// `body` cut at every point (sorted, deduplicated, out-of-range points ignored); an empty body
/// gives one empty chunk.
pub fn split_at_points<'a>(body: &'a [u8], points: &[usize]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = points
        .iter()
        .copied()
        .filter(|p| *p > 0 && *p < body.len())
        .collect();
    points.sort_unstable();
    points.dedup();
    let mut chunks = Vec::with_capacity(points.len() + 1);
    let mut start = 0;
    for p in points {
        chunks.push(&body[start..p]);
        start = p;
    }
    chunks.push(&body[start..]);
    chunks
}

/// A readable difference between two sets of series lines; empty if they are equal.
pub fn diff(expected: &BTreeSet<String>, observed: &BTreeSet<String>) -> String {
    let mut out = String::new();
    for line in expected.difference(observed) {
        out.push_str(&format!("  missing:    {line}\n"));
    }
    for line in observed.difference(expected) {
        out.push_str(&format!("  unexpected: {line}\n"));
    }
    out
}

/// Events of an SSE body with their raw bytes (blank line included); a trailing incomplete event
/// comes last, as it is.
pub fn raw_events(body: &[u8]) -> Vec<&[u8]> {
    let mut events = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < body.len() {
        let rest = &body[i..];
        let blank = [&b"\r\n\r\n"[..], b"\n\n", b"\r\r"]
            .iter()
            .find(|sep| rest.starts_with(sep))
            .map(|sep| sep.len());
        match blank {
            Some(n) => {
                events.push(&body[start..i + n]);
                i += n;
                start = i;
            }
            None => i += 1,
        }
    }
    if start < body.len() {
        events.push(&body[start..]);
    }
    events
}

/// Whether a path is one the filter adds `include_usage` to (chat or completions, default paths).
pub fn injectable_path(path: &str) -> bool {
    let path = path.split('?').next().unwrap_or_default();
    path.ends_with("/chat/completions") || path.ends_with("/completions")
}

/// For a fixture that records the stream an upstream sends a client that asked for usage (a `POST`
/// to a chat or completions path, `"stream": true` with `stream_options.include_usage: true`, a
/// plain 2xx event stream): the same request as a client that did not ask sends it, without
/// `include_usage` (and without `stream_options` if nothing else is left in it).
pub fn request_not_asking_usage(f: &Fixture) -> Option<Value> {
    let sse = f
        .response
        .headers
        .get("content-type")
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    let mut request = f.request.body.clone()?;
    let recorded_asking = sse
        && f.request.method == "POST"
        && injectable_path(&f.request.path)
        && f.response.status < 400
        && !f.response.headers.contains_key("content-encoding")
        && request.get("stream") == Some(&Value::Bool(true))
        && request.pointer("/stream_options/include_usage") == Some(&Value::Bool(true));
    if !recorded_asking {
        return None;
    }
    let options = request.get_mut("stream_options")?.as_object_mut()?;
    options.remove("include_usage");
    if options.is_empty() {
        request.as_object_mut()?.remove("stream_options");
    }
    Some(request)
}

/// The JSON of a plain `data:` event (one data line), with the offset of the JSON in the event.
fn data_json(event: &[u8]) -> Option<(usize, &[u8])> {
    let text = std::str::from_utf8(event).ok()?;
    let line_end = text.find(['\r', '\n'])?;
    if !text[line_end..].trim_start_matches(['\r', '\n']).is_empty() {
        return None;
    }
    let line = &text[..line_end];
    let payload = line.strip_prefix("data:")?;
    let payload = payload.strip_prefix(' ').unwrap_or(payload);
    Some((line_end - payload.len(), payload.as_bytes()))
}

/// What an upstream that honours `stream_options.include_usage` as OpenAI documents sends a client
/// that did not ask, from the stream it sends one that did: without the chunk whose `choices` is
/// empty and whose `usage` is an object, and without top-level `"usage": null` members. Derived
/// event by event, each cut checked against the parsed JSON (independently of the filter's code).
pub fn not_asked(stream: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for event in raw_events(stream) {
        let Some((at, json)) = data_json(event) else {
            out.extend_from_slice(event);
            continue;
        };
        let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(json) else {
            out.extend_from_slice(event);
            continue;
        };
        match obj.get("usage") {
            Some(Value::Object(_)) if obj.get("choices") == Some(&json!([])) => {}
            Some(Value::Null) => {
                let mut without = obj.clone();
                without.remove("usage");
                let text = String::from_utf8_lossy(json).into_owned();
                let cut = [r#","usage":null"#, r#""usage":null,"#]
                    .iter()
                    .flat_map(|pat| text.match_indices(pat).map(|(i, p)| (i, p.len())))
                    .map(|(i, n)| format!("{}{}", &text[..i], &text[i + n..]))
                    .find(|c| {
                        serde_json::from_str::<Value>(c).ok()
                            == Some(Value::Object(without.clone()))
                    })
                    .unwrap_or_else(|| panic!("no way to cut usage:null from {text}"));
                out.extend_from_slice(&event[..at]);
                out.extend_from_slice(cut.as_bytes());
                out.extend_from_slice(&event[at + json.len()..]);
            }
            _ => out.extend_from_slice(event),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cuts_cover_the_body_exactly_once() {
        let body = b"data: x\r\n\r\ndata: [DONE]\r\n\r\n";
        for split in [
            Split::Whole,
            Split::ByteByByte,
            Split::Random { seed: 3, cuts: 5 },
            Split::At(vec![0, 4, 4, 999]),
        ] {
            let chunks = split.cut(body);
            assert_eq!(chunks.concat(), body.to_vec(), "{split:?}");
            assert!(chunks.iter().all(|c| !c.is_empty()), "{split:?}");
        }
        assert_eq!(Split::ByteByByte.cut(body).len(), body.len());
        assert_eq!(Split::EmptyLastChunk.cut(body), vec![&body[..], &b""[..]]);
    }

    #[test]
    fn seeded_random_cuts_are_reproducible() {
        let body = [0u8; 1000];
        let a = Split::Random { seed: 9, cuts: 7 }.cut(&body);
        let b = Split::Random { seed: 9, cuts: 7 }.cut(&body);
        assert_eq!(
            a.iter().map(|c| c.len()).collect::<Vec<_>>(),
            b.iter().map(|c| c.len()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn every_fixture_in_the_directory_parses() {
        let fixtures = load_all(&fixtures_dir()).unwrap();
        for f in &fixtures {
            f.response_body().unwrap();
        }
    }
}
