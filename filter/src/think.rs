//! Raw `<think>…</think>` tags in chat `content`: servers that run a reasoning model without a
//! reasoning parser (Qwen3 on vLLM/SGLang/llama.cpp without `--reasoning-parser`) stream the model's
//! thinking as ordinary `content`, wrapped in the tags. This matcher tells, per content text, whether
//! it carried reasoning, answer, or neither (whitespace, a tag still incomplete), with two bytes of
//! state, also when a tag is split across events or chunks.
//!
//! Rules: leading whitespace is skipped; content that then begins with `<think>` is reasoning until
//! `</think>`; the first non-whitespace byte after `</think>` (or of content that does not begin with
//! `<think>`) is answer, and from then on every non-empty text is answer (a later `<think>` in the
//! answer is just text). The tags themselves count as reasoning, from the event that completes
//! `<think>` on.

const OPEN: &[u8] = b"<think>";
const CLOSE: &[u8] = b"</think>";

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum State {
    /// Nothing but whitespace (and maybe the start of `<think>`) so far.
    #[default]
    Start,
    /// Inside `<think>`.
    Inside,
    /// After `</think>`, only whitespace so far.
    After,
    /// The answer has begun.
    Answer,
}

/// The matcher state of one stream: where it is, and how many bytes of the tag it is looking for
/// (`<think>` at the start, `</think>` inside) matched so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ThinkTags {
    state: State,
    matched: u8,
}

/// What one text carried.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Class {
    pub reasoning: bool,
    pub answer: bool,
}

impl ThinkTags {
    /// The answer has begun by other means (a tool call, a refusal): stop looking for tags.
    pub fn answered(&mut self) {
        self.state = State::Answer;
        self.matched = 0;
    }

    /// Classifies the next content text of the stream.
    pub fn feed(&mut self, text: &str) -> Class {
        let mut class = Class::default();
        for &b in text.as_bytes() {
            match self.state {
                State::Answer => {
                    class.answer = true;
                    break;
                }
                State::Start => {
                    if self.matched == 0 && b.is_ascii_whitespace() {
                        continue;
                    }
                    if OPEN.get(usize::from(self.matched)) == Some(&b) {
                        self.matched += 1;
                        if usize::from(self.matched) == OPEN.len() {
                            self.state = State::Inside;
                            self.matched = 0;
                            class.reasoning = true;
                        }
                    } else {
                        // Not a think tag after all: the content (with any partial tag) is answer.
                        self.answered();
                        class.answer = true;
                        break;
                    }
                }
                State::Inside => {
                    class.reasoning = true;
                    if CLOSE.get(usize::from(self.matched)) == Some(&b) {
                        self.matched += 1;
                        if usize::from(self.matched) == CLOSE.len() {
                            self.state = State::After;
                            self.matched = 0;
                        }
                    } else {
                        // `<` only starts the tag, so a mismatch restarts at it or at nothing.
                        self.matched = u8::from(b == b'<');
                    }
                }
                State::After => {
                    if !b.is_ascii_whitespace() {
                        self.answered();
                        class.answer = true;
                        break;
                    }
                }
            }
        }
        class
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes(parts: &[&str]) -> Vec<(bool, bool)> {
        let mut t = ThinkTags::default();
        parts
            .iter()
            .map(|p| {
                let c = t.feed(p);
                (c.reasoning, c.answer)
            })
            .collect()
    }

    const R: (bool, bool) = (true, false);
    const A: (bool, bool) = (false, true);
    const NEITHER: (bool, bool) = (false, false);
    const BOTH: (bool, bool) = (true, true);

    #[test]
    fn plain_content_is_answer() {
        assert_eq!(classes(&["Hello", " world"]), vec![A, A]);
        assert_eq!(classes(&["\n\n", "Hi"]), vec![NEITHER, A]);
    }

    #[test]
    fn qwen3_tokens_one_per_event() {
        assert_eq!(
            classes(&["<think>", "\n", "Okay", "\n", "</think>", "\n\n", "The", " answer"]),
            vec![R, R, R, R, R, NEITHER, A, A]
        );
    }

    #[test]
    fn tags_split_anywhere() {
        assert_eq!(
            classes(&["<", "thi", "nk>x", "</th", "ink", ">", " ", "y"]),
            vec![NEITHER, NEITHER, R, R, R, R, NEITHER, A]
        );
        // Text after `</think>` in the same event is answer.
        assert_eq!(classes(&["<think>hmm</think>\n\nYes"]), vec![BOTH]);
        assert_eq!(classes(&["<think>a</thin", "k>Yes"]), vec![R, BOTH]);
    }

    #[test]
    fn a_near_miss_is_answer_or_stays_reasoning() {
        // Not a think tag: answer from the first byte on.
        assert_eq!(classes(&["<thi", "s is html>"]), vec![NEITHER, A]);
        assert_eq!(classes(&["<b>bold</b>"]), vec![A]);
        // Inside, a near-closing tag is still reasoning; the real one closes.
        assert_eq!(
            classes(&["<think>", "a </thinking> <</think>", "b"]),
            vec![R, R, A]
        );
    }

    #[test]
    fn after_the_answer_tags_are_text() {
        assert_eq!(classes(&["Use ", "<think>", "x"]), vec![A, A, A]);
        let mut t = ThinkTags::default();
        t.answered();
        assert_eq!(
            t.feed("<think>"),
            Class {
                reasoning: false,
                answer: true
            }
        );
    }

    #[test]
    fn the_state_is_tiny() {
        assert!(std::mem::size_of::<ThinkTags>() <= 2);
    }
}
