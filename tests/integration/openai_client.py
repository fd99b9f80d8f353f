#!/usr/bin/env python3
"""The official `openai` Python package against a running `tpnode serve`.

Usage: openai_client.py BASE_URL   (e.g. http://127.0.0.1:8080/v1)
Exit 77 (skipped) when the openai package is missing.
"""
import sys

try:
    import openai
except ImportError:
    print("skip: the openai package is not installed (pip install openai)")
    sys.exit(77)


def main() -> int:
    base_url = sys.argv[1]
    client = openai.OpenAI(base_url=base_url, api_key="unused", max_retries=0, timeout=120)

    models = client.models.list()
    model = models.data[0].id
    print("model:", model)

    done = client.completions.create(model=model, prompt="The capital of France is",
                                     max_tokens=8, temperature=0)
    text = done.choices[0].text
    print("completion:", repr(text), done.choices[0].finish_reason, done.usage)
    assert "Paris" in text, text
    assert done.usage.prompt_tokens == 5 and done.usage.completion_tokens == 8, done.usage
    assert done.choices[0].finish_reason == "length"

    streamed = ""
    finish = None
    usage = None
    for chunk in client.completions.create(model=model, prompt="The capital of France is",
                                           max_tokens=8, temperature=0, stream=True,
                                           stream_options={"include_usage": True}):
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            streamed += choice.text
            finish = choice.finish_reason or finish
    print("streamed completion:", repr(streamed), finish, usage)
    assert streamed == text, (streamed, text)
    assert finish == "length" and usage.completion_tokens == 8

    chat = client.chat.completions.create(
        model=model, temperature=0, max_tokens=24,
        messages=[{"role": "system", "content": "You are a helpful assistant."},
                  {"role": "user", "content": "What is the capital of France?"}])
    answer = chat.choices[0].message.content
    print("chat:", repr(answer), chat.choices[0].finish_reason)
    assert chat.choices[0].message.role == "assistant"
    assert "Paris" in answer, answer

    streamed = ""
    for chunk in client.chat.completions.create(
            model=model, temperature=0, max_tokens=24, stream=True,
            messages=[{"role": "system", "content": "You are a helpful assistant."},
                      {"role": "user", "content": "What is the capital of France?"}]):
        for choice in chunk.choices:
            streamed += choice.delta.content or ""
    print("streamed chat:", repr(streamed))
    assert streamed == answer, (streamed, answer)

    try:
        client.completions.create(model=model, prompt="x", n=2, max_tokens=2)
        raise AssertionError("n=2 was accepted")
    except openai.BadRequestError as e:
        print("n=2 refused:", e.status_code)
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
