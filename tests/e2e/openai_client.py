#!/usr/bin/env python3
"""Drive the gateway with the official `openai` Python client and check what the client parsed.

Run by the end-to-end test `openai_python_client_works_through_the_gateway_and_its_usage_is_counted`
(tests/tests/e2e.rs) with the project's venv, against Envoy + the filter in front of qwen3-engine:

    .venv/bin/python tests/e2e/openai_client.py --base-url http://127.0.0.1:10000/v1 --model qwen3-tiny

It sends a non-streaming chat completion (thinking off) and a streaming one with
stream_options.include_usage (thinking on), asserts the parsed objects (content, finish_reason, usage
arithmetic, the usage-only final chunk; reasoning_content and reasoning_tokens >= 1 when thinking), and
prints as its last line a JSON summary of the usage the
client saw, which the test compares with the gateway's counters. Exit status 1 with a message on the
first failed check. Needs `openai` in the venv (`bash envoy/setup.sh --test`).

With --without-include-usage the streaming request does not ask for usage (as most clients do), and
the script checks the client sees no trace of it: no chunk with usage, no chunk without choices
(what a gateway with `inject_stream_usage` must guarantee while it counts the usage itself).
"""
import argparse
import json
import sys

try:
    import openai
except ImportError:
    sys.exit("the openai package is missing: run `bash envoy/setup.sh --test` (installs it into .venv)")


def check(cond, what):
    if not cond:
        sys.exit(f"openai_client.py: check failed: {what}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--base-url", required=True, help="the gateway's OpenAI base URL, ending in /v1")
    ap.add_argument("--model", required=True)
    ap.add_argument("--without-include-usage", action="store_true",
                    help="stream without stream_options.include_usage and check no usage reaches the client")
    args = ap.parse_args()
    client = openai.OpenAI(base_url=args.base_url, api_key="unused", timeout=60, max_retries=0)
    messages = [{"role": "user", "content": "Name three things a gateway can measure."}]
    totals = {"prompt_tokens": 0, "completion_tokens": 0, "reasoning_tokens": 0,
              "streaming_requests": 0, "non_streaming_requests": 0}

    def add(usage, where):
        check(usage is not None, f"{where}: usage present")
        check(usage.prompt_tokens > 0, f"{where}: prompt_tokens > 0 ({usage.prompt_tokens})")
        check(usage.completion_tokens > 0, f"{where}: completion_tokens > 0 ({usage.completion_tokens})")
        check(usage.total_tokens == usage.prompt_tokens + usage.completion_tokens,
              f"{where}: total_tokens = prompt + completion ({usage})")
        totals["prompt_tokens"] += usage.prompt_tokens
        totals["completion_tokens"] += usage.completion_tokens
        details = usage.completion_tokens_details
        if details is not None and details.reasoning_tokens:
            totals["reasoning_tokens"] += details.reasoning_tokens

    # Non-streaming, thinking off (Qwen3's chat template flag, passed as vLLM takes it).
    r = client.chat.completions.create(model=args.model, messages=messages, max_tokens=16, temperature=0,
                                       extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    check(r.object == "chat.completion", f"non-streaming: object {r.object!r}")
    check(r.model == args.model, f"non-streaming: model {r.model!r}")
    check(len(r.choices) == 1, "non-streaming: one choice")
    choice = r.choices[0]
    check(choice.message.role == "assistant", f"non-streaming: role {choice.message.role!r}")
    check(bool(choice.message.content), "non-streaming: content non-empty")
    check(choice.finish_reason in ("stop", "length"), f"non-streaming: finish_reason {choice.finish_reason!r}")
    add(r.usage, "non-streaming")
    totals["non_streaming_requests"] += 1

    # Streaming with include_usage (or, with --without-include-usage, without), thinking on.
    asked = not args.without_include_usage
    options = {"stream_options": {"include_usage": True}} if asked else {}
    stream = client.chat.completions.create(model=args.model, messages=messages, max_tokens=16, temperature=0,
                                            stream=True, **options,
                                            extra_body={"chat_template_kwargs": {"enable_thinking": True}})
    text, reasoning, finish, usage, chunks, usage_chunk_choices = [], [], None, None, 0, None
    for chunk in stream:
        chunks += 1
        check(chunk.object == "chat.completion.chunk", f"stream: object {chunk.object!r}")
        if not asked:
            check(chunk.usage is None, f"stream: usage reached a client that did not ask: {chunk}")
            check(len(chunk.choices) >= 1, f"stream: a chunk without choices reached the client: {chunk}")
        if chunk.usage is not None:
            usage, usage_chunk_choices = chunk.usage, chunk.choices
        for c in chunk.choices:
            delta = c.delta
            text.append(delta.content or "")
            # The engine sends Qwen3 reasoning as reasoning_content (an extra field the client keeps);
            # the random-weight preset reasons in thinking mode, so it must be there.
            reasoning.append(getattr(delta, "reasoning_content", None) or "")
            if c.finish_reason is not None:
                finish = c.finish_reason
    check(chunks >= 3, f"stream: {chunks} chunks")
    check("".join(reasoning) != "", "stream: reasoning_content in thinking mode")
    check(finish in ("stop", "length"), f"stream: finish_reason {finish!r}")
    if asked:
        check(usage_chunk_choices == [], "stream: the usage chunk has choices == []")
        add(usage, "stream")
        reasoning_tokens = usage.completion_tokens_details and usage.completion_tokens_details.reasoning_tokens
        check((reasoning_tokens or 0) >= 1, f"stream: reasoning_tokens >= 1 in thinking mode ({usage})")
    totals["streaming_requests"] += 1

    print(json.dumps(totals))


if __name__ == "__main__":
    main()
