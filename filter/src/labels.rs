//! The `model` label and the extra header labels (`label_headers`, e.g. `tenant`): sanitising what
//! clients send and keeping the label space bounded.
//!
//! Envoy never frees a stat, so an unbounded label would let any client grow Envoy's memory by sending
//! made-up model names. Two policies bound it:
//! - an allowlist (`models` in the configuration): any other name becomes `other`;
//! - a process-wide cap (`max_models`): the first N distinct names seen by *any* worker keep their
//!   name, later ones become `other`. Workers run separate VMs, so the admitted set lives in proxy-wasm
//!   shared data behind the [`Registry`] trait; each VM caches the answers it got (admission and, once
//!   the set is full, rejection are both final) so the shared data is touched once per name per VM.
//!
//! Sanitising: characters outside `[A-Za-z0-9._/:@+-]` become `_` (this keeps names such as
//! `Qwen/Qwen3-1.7B`, `qwen3:1.7b` and `org/model@rev` intact and cannot produce Envoy's tag
//! delimiters `=.=` / `;.;`), then the name is cut to 64 bytes, and dots that end it become `_`
//! (Envoy would drop them from the tag value). An empty or missing name is `unknown`.
//!
//! Extra header labels ([`HeaderLabels`]) follow the same rules, each with its own allowlist or cap
//! and its own process-wide set (registry key [`label_registry_key`]); a missing or empty header is
//! `none`, and a `hash` entry labels [`hash_label`] of the raw value instead of the value.

use std::borrow::Cow;
#[cfg(test)]
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;

use crate::config::LabelHeader;
use crate::metrics::{LabelIds, MAX_EXTRA_LABELS};

/// The registry key (proxy-wasm shared-data key) of the process-wide set of admitted model names.
pub const MODELS_KEY: &str = "llm-metrics-filter.models.v1";

/// The registry key of the process-wide set of admitted values of the extra label `label`.
pub fn label_registry_key(label: &str) -> String {
    format!("llm-metrics-filter.labels.{label}.v1")
}

/// Hex digits of a hashed label value ([`hash_label`]).
pub const HASH_LABEL_HEX_DIGITS: usize = 12;

/// The label form of a secret header value (`hash: true`): the top 48 bits of the 64-bit FNV-1a
/// hash of the raw bytes, as 12 lowercase hex digits.
///
/// FNV-1a because it is fixed forever (Rust's `DefaultHasher` is not guaranteed stable across
/// releases, so labels would change on an upgrade), needs no key or dependency, and is a few lines
/// in any language, so an operator can compute the label of a known key offline. The top bits
/// because FNV's multiply mixes every input bit into them. It is not a secret-keeping hash: it only
/// keeps the value itself out of the stats. A high-entropy secret (an API key) cannot be recovered
/// from 48 bits, but a low-entropy value (a user name) can be guessed and checked.
pub fn hash_label(raw: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in raw {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{:012x}", h >> 16)
}

/// Longest model label, in bytes.
pub const MAX_MODEL_LABEL_BYTES: usize = 64;
/// Most rejected names a VM remembers; past that a rejected name costs one shared-data read.
pub const MAX_CACHED_REJECTIONS: usize = 1024;

/// A VM-local number for a model label; ids 0 and 1 are `unknown` and `other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModelId(pub u16);

impl ModelId {
    pub const UNKNOWN: ModelId = ModelId(0);
    pub const OTHER: ModelId = ModelId(1);
}

fn allowed(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'/' | b':' | b'@' | b'+' | b'-')
}

/// The label form of a client-sent model name (without the `unknown` substitution).
pub fn sanitize_model(raw: &str) -> Cow<'_, str> {
    let cut = raw.len().min(MAX_MODEL_LABEL_BYTES);
    if raw.bytes().all(allowed) {
        // All ASCII, so any byte index is a char boundary.
        let kept = raw.get(..cut).unwrap_or(raw);
        if !kept.ends_with('.') {
            return Cow::Borrowed(kept);
        }
        return Cow::Owned(without_trailing_dots(kept.to_owned()));
    }
    let mut out = String::with_capacity(cut);
    for c in raw.chars() {
        let mapped = if c.is_ascii() && allowed(c as u8) {
            c
        } else {
            '_'
        };
        if out.len() + 1 > MAX_MODEL_LABEL_BYTES {
            break;
        }
        out.push(mapped);
    }
    Cow::Owned(without_trailing_dots(out))
}

/// `label` with each dot at its end replaced by `_`: Envoy drops the dots that end a tag value (stat
/// names are dot-separated tokens), so `a.` would be counted as `a` and `.` as an empty label.
fn without_trailing_dots(mut label: String) -> String {
    let dots = label.len() - label.trim_end_matches('.').len();
    label.truncate(label.len() - dots);
    label.extend(std::iter::repeat_n('_', dots));
    label
}

/// The answer of the process-wide registry for one name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// The name is (now) one of the admitted names.
    Admitted,
    /// The set is full and the name is not in it.
    Full,
    /// The shared store failed; treat the name as `other` this time without caching the answer.
    Unavailable,
}

/// The process-wide sets of admitted label values, one per `key` ([`MODELS_KEY`] for model names,
/// [`label_registry_key`] for an extra label): proxy-wasm shared data in the wasm build, this
/// library's memory in the native one.
pub trait Registry {
    fn admit(&mut self, key: &str, name: &str, max: usize) -> Admission;
}

/// Maps client-sent model names (or values of one extra label) to bounded label ids, per VM.
#[derive(Debug)]
pub struct ModelLabels {
    /// The registry key of the process-wide set.
    key: String,
    allowlist: bool,
    max_models: usize,
    names: Vec<Arc<str>>,
    ids: HashMap<String, ModelId>,
    rejected: usize,
}

impl ModelLabels {
    /// `allow`: the configured allowlist (already sanitised); empty means "cap at `max_models`".
    pub fn new(allow: &[String], max_models: usize) -> ModelLabels {
        ModelLabels::bounded(MODELS_KEY, "unknown", allow, max_models)
    }

    /// A bounded label with its own registry `key` and its own label for a missing value (id 0);
    /// id 1 is `other`.
    pub fn bounded(key: &str, missing: &str, allow: &[String], max: usize) -> ModelLabels {
        let mut labels = ModelLabels {
            key: key.to_owned(),
            allowlist: !allow.is_empty(),
            max_models: max,
            names: vec![Arc::from(missing), Arc::from("other")],
            ids: HashMap::new(),
            rejected: 0,
        };
        for name in allow {
            labels.intern(name);
        }
        labels
    }

    fn intern(&mut self, name: &str) -> ModelId {
        if let Some(id) = self.ids.get(name) {
            return *id;
        }
        let Ok(n) = u16::try_from(self.names.len()) else {
            return ModelId::OTHER;
        };
        let id = ModelId(n);
        self.names.push(Arc::from(name));
        self.ids.insert(name.to_owned(), id);
        id
    }

    /// The label value of an id.
    pub fn name(&self, id: ModelId) -> &str {
        self.names.get(usize::from(id.0)).map_or("other", |n| n)
    }

    /// The label value of an id, as a shared string a host can keep beyond a lock on `self`.
    pub fn shared_name(&self, id: ModelId) -> Arc<str> {
        self.names
            .get(usize::from(id.0))
            .cloned()
            .unwrap_or_else(|| Arc::from("other"))
    }

    /// The label id for a request's `model` (`None`: the request had no usable model).
    pub fn resolve(&mut self, raw: Option<&str>, registry: &mut dyn Registry) -> ModelId {
        let clean = sanitize_model(raw.unwrap_or(""));
        if clean.is_empty() || self.names.first().is_some_and(|m| **m == *clean) {
            return ModelId::UNKNOWN;
        }
        if clean == "other" {
            return ModelId::OTHER;
        }
        if let Some(id) = self.ids.get(clean.as_ref()) {
            return *id;
        }
        if self.allowlist {
            return ModelId::OTHER;
        }
        match registry.admit(&self.key, &clean, self.max_models) {
            Admission::Admitted => self.intern(&clean),
            Admission::Full => {
                if self.rejected < MAX_CACHED_REJECTIONS {
                    self.rejected += 1;
                    self.ids.insert(clean.into_owned(), ModelId::OTHER);
                }
                ModelId::OTHER
            }
            Admission::Unavailable => ModelId::OTHER,
        }
    }

    /// The registry key of this label's process-wide set.
    pub fn registry_key(&self) -> &str {
        &self.key
    }

    /// Whether the label is bounded by the process-wide set (no allowlist).
    pub fn uses_registry(&self) -> bool {
        !self.allowlist
    }
}

/// One configured extra label.
#[derive(Debug)]
struct HeaderLabel {
    header: String,
    label: String,
    hash: bool,
    values: ModelLabels,
}

/// Up to [`MAX_EXTRA_LABELS`] strings, one per configured extra label; no allocation.
#[derive(Debug, Clone, Copy, Default)]
pub struct ExtraStrs<'a> {
    strs: [&'a str; MAX_EXTRA_LABELS],
    len: usize,
}

impl<'a> ExtraStrs<'a> {
    pub fn as_slice(&self) -> &[&'a str] {
        self.strs.get(..self.len).unwrap_or(&[])
    }
}

/// The extra labels of one VM (`label_headers`), in configuration order: each maps a request
/// header's value to a bounded label id, like [`ModelLabels`] for the model.
#[derive(Debug, Default)]
pub struct HeaderLabels {
    entries: Vec<HeaderLabel>,
}

impl HeaderLabels {
    /// The extra labels of a configuration (at most [`MAX_EXTRA_LABELS`]: more are ignored, which
    /// the configuration's validation rules out).
    pub fn new(config: &[LabelHeader]) -> HeaderLabels {
        let entries = config
            .iter()
            .take(MAX_EXTRA_LABELS)
            .map(|c| HeaderLabel {
                header: c.header.clone(),
                label: c.label.clone(),
                hash: c.hash,
                values: ModelLabels::bounded(
                    &label_registry_key(&c.label),
                    "none",
                    &c.values,
                    c.max_values,
                ),
            })
            .collect();
        HeaderLabels { entries }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The request headers to read, in configuration order.
    pub fn headers(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.header.as_str())
    }

    /// The registry keys of the labels bounded by a process-wide set (no allowlist).
    pub fn registry_keys(&self) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .filter(|e| e.values.uses_registry())
            .map(|e| e.values.registry_key())
    }

    /// The extra label names, in configuration order.
    pub fn names(&self) -> ExtraStrs<'_> {
        let mut out = ExtraStrs::default();
        for (slot, e) in out.strs.iter_mut().zip(&self.entries) {
            *slot = &e.label;
            out.len += 1;
        }
        out
    }

    /// The label values of an exchange's ids, in configuration order.
    pub fn values(&self, ids: LabelIds) -> ExtraStrs<'_> {
        let mut out = ExtraStrs::default();
        for ((slot, e), id) in out.strs.iter_mut().zip(&self.entries).zip(ids.0) {
            *slot = e.values.name(ModelId(id));
            out.len += 1;
        }
        out
    }

    /// The label values of an exchange's ids as shared strings a host can keep beyond a lock.
    pub fn shared_values(&self, ids: LabelIds) -> [Option<Arc<str>>; MAX_EXTRA_LABELS] {
        let mut out: [Option<Arc<str>>; MAX_EXTRA_LABELS] = Default::default();
        for ((slot, e), id) in out.iter_mut().zip(&self.entries).zip(ids.0) {
            *slot = Some(e.values.shared_name(ModelId(id)));
        }
        out
    }

    /// Resolves every extra label of a request: `header` reads one request header (called once per
    /// configured entry, in order; `None` when absent).
    pub fn resolve<B: AsRef<[u8]>>(
        &mut self,
        mut header: impl FnMut(&str) -> Option<B>,
        registry: &mut dyn Registry,
    ) -> LabelIds {
        let mut ids = LabelIds::default();
        for (slot, e) in ids.0.iter_mut().zip(&mut self.entries) {
            let raw = header(&e.header);
            let raw = raw.as_ref().map(AsRef::as_ref).filter(|r| !r.is_empty());
            let id = match raw {
                None => ModelId::UNKNOWN,
                Some(r) if e.hash => e.values.resolve(Some(&hash_label(r)), registry),
                Some(r) => e
                    .values
                    .resolve(Some(&String::from_utf8_lossy(r)), registry),
            };
            *slot = id.0;
        }
        ids
    }
}

/// The shared-data value format: admitted names separated by `\n` (sanitised names never contain
/// one). Returns whether `name` is in `list` and how many names the list holds.
pub fn list_contains(list: &[u8], name: &str) -> (bool, usize) {
    if list.is_empty() {
        return (false, 0);
    }
    let mut count = 0;
    let mut found = false;
    for entry in list.split(|b| *b == b'\n') {
        count += 1;
        found |= entry == name.as_bytes();
    }
    (found, count)
}

/// `list` with `name` appended.
pub fn list_append(list: &[u8], name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(list.len() + name.len() + 1);
    out.extend_from_slice(list);
    if !list.is_empty() {
        out.push(b'\n');
    }
    out.extend_from_slice(name.as_bytes());
    out
}

/// Admits `name` into the `\n`-separated `list` unless `max` names are there already.
pub fn admit_to_list(list: &mut Vec<u8>, name: &str, max: usize) -> Admission {
    match list_contains(list, name) {
        (true, _) => Admission::Admitted,
        (false, n) if n >= max => Admission::Full,
        (false, _) => {
            *list = list_append(list, name);
            Admission::Admitted
        }
    }
}

/// An in-memory registry (one list per key), for tests of code that needs one (not in what ships).
#[cfg(test)]
#[derive(Debug, Default)]
pub struct MemoryRegistry {
    pub lists: BTreeMap<String, Vec<u8>>,
    pub calls: usize,
}

#[cfg(test)]
impl Registry for MemoryRegistry {
    fn admit(&mut self, key: &str, name: &str, max: usize) -> Admission {
        self.calls += 1;
        admit_to_list(self.lists.entry(key.to_owned()).or_default(), name, max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn common_model_names_survive_intact() {
        for name in [
            "Qwen/Qwen3-1.7B",
            "qwen3:1.7b",
            "gpt-4o-mini-2024-07-18",
            "meta-llama/Llama-3.1-8B-Instruct",
            "org/model@main",
            "Qwen3-1.7B-Q4_K_M.gguf",
        ] {
            assert_eq!(sanitize_model(name), name);
        }
    }

    #[test]
    fn a_label_never_ends_with_a_dot() {
        // Envoy drops the dots that end a tag value: `a.` would be counted as model `a`, `.` and
        // `..` as one empty label (two identical series in the wasm build's scrape).
        assert_eq!(sanitize_model("."), "_");
        assert_eq!(sanitize_model(".."), "__");
        assert_eq!(sanitize_model("a."), "a_");
        assert_eq!(sanitize_model("...a.."), "...a__");
        assert_eq!(sanitize_model("é."), "__");
        assert_eq!(sanitize_model(".a"), ".a");
        assert_eq!(sanitize_model("a..b"), "a..b");
        let cut_at_a_dot = format!("{}.b", "a".repeat(63));
        assert_eq!(
            sanitize_model(&cut_at_a_dot),
            format!("{}_", "a".repeat(63))
        );
    }

    #[test]
    fn other_bytes_become_underscores_and_names_are_cut_at_64_bytes() {
        assert_eq!(sanitize_model("my model;.;x=.=y"), "my_model_._x_._y");
        assert_eq!(sanitize_model("模型"), "__");
        let long = "a".repeat(100);
        assert_eq!(sanitize_model(&long).len(), 64);
        let long_unicode = "é".repeat(100);
        assert_eq!(sanitize_model(&long_unicode), "_".repeat(64));
    }

    #[test]
    fn missing_or_empty_models_are_unknown() {
        let mut labels = ModelLabels::new(&[], 4);
        let mut reg = MemoryRegistry::default();
        assert_eq!(labels.resolve(None, &mut reg), ModelId::UNKNOWN);
        assert_eq!(labels.resolve(Some(""), &mut reg), ModelId::UNKNOWN);
        assert_eq!(labels.name(ModelId::UNKNOWN), "unknown");
        assert_eq!(reg.calls, 0);
    }

    #[test]
    fn the_allowlist_maps_other_names_to_other() {
        let mut labels = ModelLabels::new(&["gpt-4o".to_owned()], 32);
        let mut reg = MemoryRegistry::default();
        let id = labels.resolve(Some("gpt-4o"), &mut reg);
        assert_eq!(labels.name(id), "gpt-4o");
        assert_eq!(labels.resolve(Some("gpt-5"), &mut reg), ModelId::OTHER);
        assert_eq!(labels.name(ModelId::OTHER), "other");
        assert_eq!(reg.calls, 0);
    }

    #[test]
    fn the_cap_admits_the_first_names_and_caches_answers() {
        let mut labels = ModelLabels::new(&[], 2);
        let mut reg = MemoryRegistry::default();
        let a = labels.resolve(Some("a"), &mut reg);
        let b = labels.resolve(Some("b"), &mut reg);
        assert_eq!((labels.name(a), labels.name(b)), ("a", "b"));
        assert_eq!(labels.resolve(Some("c"), &mut reg), ModelId::OTHER);
        let calls = reg.calls;
        assert_eq!(labels.resolve(Some("a"), &mut reg), a);
        assert_eq!(labels.resolve(Some("c"), &mut reg), ModelId::OTHER);
        assert_eq!(reg.calls, calls, "answers are cached per VM");
    }

    #[test]
    fn two_vms_share_one_cap() {
        let mut reg = MemoryRegistry::default();
        let mut vm1 = ModelLabels::new(&[], 2);
        let mut vm2 = ModelLabels::new(&[], 2);
        vm1.resolve(Some("a"), &mut reg);
        vm2.resolve(Some("b"), &mut reg);
        assert_eq!(vm1.resolve(Some("c"), &mut reg), ModelId::OTHER);
        let b_on_vm1 = vm1.resolve(Some("b"), &mut reg);
        assert_eq!(vm1.name(b_on_vm1), "b");
    }

    #[test]
    fn rejections_cached_per_vm_are_bounded() {
        let mut labels = ModelLabels::new(&[], 1);
        let mut reg = MemoryRegistry::default();
        labels.resolve(Some("first"), &mut reg);
        for i in 0..(MAX_CACHED_REJECTIONS + 100) {
            assert_eq!(
                labels.resolve(Some(&format!("m{i}")), &mut reg),
                ModelId::OTHER
            );
        }
        assert!(labels.ids.len() <= MAX_CACHED_REJECTIONS + 1);
    }

    #[test]
    fn the_shared_list_format_round_trips() {
        let l = list_append(b"", "a");
        let l = list_append(&l, "Qwen/Qwen3-1.7B");
        assert_eq!(l, b"a\nQwen/Qwen3-1.7B");
        assert_eq!(list_contains(&l, "Qwen/Qwen3-1.7B"), (true, 2));
        assert_eq!(list_contains(&l, "Qwen"), (false, 2));
        assert_eq!(list_contains(b"", "a"), (false, 0));
    }

    fn entry(label: &str, values: &[&str], max_values: usize, hash: bool) -> LabelHeader {
        LabelHeader {
            header: format!("x-{label}"),
            label: label.to_owned(),
            values: values.iter().map(|v| (*v).to_owned()).collect(),
            max_values,
            hash,
        }
    }

    /// Resolves one request whose headers are `headers` (name, value).
    fn request(
        labels: &mut HeaderLabels,
        headers: &[(&str, &[u8])],
        reg: &mut MemoryRegistry,
    ) -> Vec<String> {
        let mut read = Vec::new();
        let ids = labels.resolve(
            |name| {
                read.push(name.to_owned());
                headers
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| v.to_vec())
            },
            reg,
        );
        let names: Vec<String> = labels.headers().map(str::to_owned).collect();
        assert_eq!(read, names, "each configured header is read once, in order");
        labels
            .values(ids)
            .as_slice()
            .iter()
            .map(|v| (*v).to_owned())
            .collect()
    }

    #[test]
    fn header_labels_allowlist_other_and_none() {
        let mut labels = HeaderLabels::new(&[entry("tenant", &["acme", "globex"], 32, false)]);
        let mut reg = MemoryRegistry::default();
        assert_eq!(labels.names().as_slice(), ["tenant"]);
        assert_eq!(
            request(&mut labels, &[("x-tenant", b"acme")], &mut reg),
            ["acme"]
        );
        assert_eq!(
            request(&mut labels, &[("x-tenant", b"initech")], &mut reg),
            ["other"]
        );
        assert_eq!(request(&mut labels, &[], &mut reg), ["none"]);
        assert_eq!(
            request(&mut labels, &[("x-tenant", b"")], &mut reg),
            ["none"]
        );
        assert_eq!(reg.calls, 0, "an allowlist never asks the registry");
        assert_eq!(labels.registry_keys().count(), 0);
    }

    #[test]
    fn header_values_are_sanitised_like_model_names() {
        let mut labels = HeaderLabels::new(&[entry("tenant", &[], 32, false)]);
        let mut reg = MemoryRegistry::default();
        assert_eq!(
            request(&mut labels, &[("x-tenant", b"acme corp;.;x=.=y")], &mut reg),
            ["acme_corp_._x_._y"]
        );
        assert_eq!(
            request(&mut labels, &[("x-tenant", b"caf\xc3\xa9\xff")], &mut reg),
            ["caf__"]
        );
        let long = [b'a'; 100];
        assert_eq!(
            request(&mut labels, &[("x-tenant", &long)], &mut reg),
            ["a".repeat(64)]
        );
        // `unknown` is an ordinary value here; `none` and `other` are the reserved ones.
        assert_eq!(
            request(&mut labels, &[("x-tenant", b"unknown")], &mut reg),
            ["unknown"]
        );
    }

    #[test]
    fn the_label_cap_is_process_wide_and_separate_from_the_model_cap() {
        let config = [entry("tenant", &[], 2, false), entry("team", &[], 1, false)];
        let mut reg = MemoryRegistry::default();
        // Two workers (VMs) share one registry, as proxy-wasm shared data.
        let mut vm1 = HeaderLabels::new(&config);
        let mut vm2 = HeaderLabels::new(&config);
        let mut models = ModelLabels::new(&[], 1);
        models.resolve(Some("m"), &mut reg);
        assert_eq!(
            request(
                &mut vm1,
                &[("x-tenant", b"a"), ("x-team", b"red")],
                &mut reg
            ),
            ["a", "red"]
        );
        assert_eq!(
            request(
                &mut vm2,
                &[("x-tenant", b"b"), ("x-team", b"blue")],
                &mut reg
            ),
            ["b", "other"]
        );
        assert_eq!(
            request(
                &mut vm1,
                &[("x-tenant", b"c"), ("x-team", b"red")],
                &mut reg
            ),
            ["other", "red"]
        );
        // vm1 never saw `b`, but the process admitted it.
        assert_eq!(
            request(&mut vm1, &[("x-tenant", b"b")], &mut reg),
            ["b", "none"]
        );
        assert_eq!(
            reg.lists.get(MODELS_KEY).map(Vec::as_slice),
            Some(&b"m"[..])
        );
        assert_eq!(
            reg.lists
                .get("llm-metrics-filter.labels.tenant.v1")
                .map(Vec::as_slice),
            Some(&b"a\nb"[..])
        );
        assert_eq!(
            reg.lists
                .get("llm-metrics-filter.labels.team.v1")
                .map(Vec::as_slice),
            Some(&b"red"[..])
        );
        assert_eq!(
            vm1.registry_keys().collect::<Vec<_>>(),
            [
                "llm-metrics-filter.labels.tenant.v1",
                "llm-metrics-filter.labels.team.v1"
            ]
        );
    }

    #[test]
    fn hashing_is_fnv1a_stable_and_never_the_raw_value() {
        // FNV-1a 64 reference values: "a" = af63dc4c8601ec8c, "foobar" = 85944171f73967e8.
        assert_eq!(hash_label(b"a"), "af63dc4c8601");
        assert_eq!(hash_label(b"foobar"), "85944171f739");
        assert_eq!(hash_label(b"").len(), HASH_LABEL_HEX_DIGITS);
        let mut labels = HeaderLabels::new(&[entry("api_key", &[], 2, true)]);
        let mut reg = MemoryRegistry::default();
        let secret = b"Bearer sk-live-0123456789abcdef";
        let first = request(&mut labels, &[("x-api_key", secret)], &mut reg);
        assert_eq!(first, [hash_label(secret)]);
        assert!(!first[0].contains("sk-live"), "{first:?}");
        // Stable across requests and workers.
        let mut other_vm = HeaderLabels::new(&[entry("api_key", &[], 2, true)]);
        assert_eq!(
            request(&mut other_vm, &[("x-api_key", secret)], &mut reg),
            first
        );
        // The bound applies to hashes, and the registry holds only hashes.
        request(&mut labels, &[("x-api_key", b"key-2")], &mut reg);
        assert_eq!(
            request(&mut labels, &[("x-api_key", b"key-3")], &mut reg),
            ["other"]
        );
        assert_eq!(request(&mut labels, &[], &mut reg), ["none"]);
        let list = reg
            .lists
            .get("llm-metrics-filter.labels.api_key.v1")
            .cloned()
            .unwrap_or_default();
        assert!(!String::from_utf8_lossy(&list).contains("sk-live"));
        // An allowlist of hashes.
        let allowed = hash_label(b"key-2");
        let mut labels = HeaderLabels::new(&[entry("api_key", &[&allowed], 32, true)]);
        assert_eq!(
            request(&mut labels, &[("x-api_key", b"key-2")], &mut reg),
            [allowed.as_str()]
        );
        assert_eq!(
            request(&mut labels, &[("x-api_key", secret)], &mut reg),
            ["other"]
        );
    }

    #[test]
    fn no_header_labels_read_nothing() {
        let mut labels = HeaderLabels::new(&[]);
        let mut reg = MemoryRegistry::default();
        assert!(labels.is_empty());
        assert_eq!(
            request(&mut labels, &[("x-tenant", b"a")], &mut reg),
            Vec::<String>::new()
        );
        assert!(labels.names().as_slice().is_empty());
    }
}
