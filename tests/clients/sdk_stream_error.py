"""A stream tracegate has to cut (an event longer than its limit) ends with
an error event that the official SDKs raise as an error.

    sdk_stream_error.py BASE_URL SESSION

The local upstream streams one `data:` line of 4 MiB that never ends.
Prints one line per check; exits non-zero on the first failure.
"""
import sys

import anthropic
import openai

base_url, session = sys.argv[1:3]
HEADERS = {"x-test-endless-line-kb": "4096"}


def check(name, cond, detail):
    if not cond:
        sys.exit(f"FAIL {name}: {detail!r}")
    print(f"ok {name}")


oa = openai.OpenAI(base_url=base_url + "/v1", api_key="sk-test", max_retries=0, timeout=30,
                   default_headers={"x-session-id": session})
try:
    for _ in oa.chat.completions.create(model="gpt-test", stream=True, extra_headers=HEADERS,
                                        messages=[{"role": "user", "content": "hi"}]):
        pass
    check("openai raised", False, "the stream ended without an error")
except openai.APIError as e:
    check("openai raised", "exceeds" in str(e), str(e))

an = anthropic.Anthropic(base_url=base_url, api_key="sk-ant-test", max_retries=0, timeout=30,
                         default_headers={"x-session-id": session})
try:
    with an.messages.stream(model="claude-test", max_tokens=10, extra_headers=HEADERS,
                            messages=[{"role": "user", "content": "hi"}]) as s:
        for _ in s.text_stream:
            pass
    check("anthropic raised", False, "the stream ended without an error")
except anthropic.APIError as e:
    check("anthropic raised", "exceeds" in str(e), str(e))
