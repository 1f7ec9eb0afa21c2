"""Access rules through the official SDKs.

    sdk_access.py BASE_URL SESSION ANALYST_TOKEN STREAMER_TOKEN

The analyst's rule allows gpt-4o-mini* and claude-3-5-haiku*, tools
search_*, at most 1024 output tokens, no streaming. The streamer's rule
allows streaming of gpt-4o-mini with tools search_*. Every refusal must be a
PermissionDeniedError (403) naming the rule; an answer calling a tool the
rule does not allow must never reach the caller as a tool call.
"""
import sys

import anthropic
import openai

base_url, session, analyst, streamer = sys.argv[1:5]


def oai(token: str, **headers) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=base_url, api_key=token, max_retries=0,
        default_headers={"x-session-id": session, **headers},
    )


def claude(token: str, **headers) -> anthropic.Anthropic:
    return anthropic.Anthropic(
        base_url=base_url.removesuffix("/v1"), auth_token=token, api_key=None,
        max_retries=0, default_headers={"x-session-id": session, **headers},
    )


def denied(what: str, call, rule: str, says: str, sdk=openai):
    try:
        call()
    except sdk.PermissionDeniedError as e:
        assert e.status_code == 403, e
        err = e.body if sdk is openai else e.body["error"]
        assert err.get("rule") == rule, (what, e.body)
        assert says in err["message"] and rule in err["message"], (what, err["message"])
        print(f"{what}: {err['message']}")
    else:
        sys.exit(f"{what}: was allowed")


user = [{"role": "user", "content": "hi"}]
search = {"type": "function", "function": {"name": "search_docs", "parameters": {"type": "object"}}}
a = oai(analyst)

# Allowed: chat, Responses, Anthropic.
r = a.chat.completions.create(model="gpt-4o-mini", messages=user, max_tokens=100, tools=[search])
assert r.choices[0].message.content == "echo: hi", r
r = a.responses.create(model="gpt-4o-mini", input="hi", max_output_tokens=100)
assert r.output_text, r
m = claude(analyst).messages.create(model="claude-3-5-haiku-latest", max_tokens=100, messages=user)
assert m.content[0].text == "echo: hi", m

# Refused, each naming the rule and why.
denied("model", lambda: a.chat.completions.create(model="gpt-4o", messages=user, max_tokens=10),
       "analysts", 'model "gpt-4o"')
denied("model case", lambda: a.chat.completions.create(model="GPT-4o-mini", messages=user, max_tokens=10),
       "analysts", "GPT-4o-mini")
denied("model lookalike", lambda: a.chat.completions.create(model="gpt-4о-mini", messages=user, max_tokens=10),
       "analysts", "not allowed")
denied("tool", lambda: a.chat.completions.create(
    model="gpt-4o-mini", messages=user, max_tokens=10,
    tools=[{"type": "function", "function": {"name": "exec_shell", "parameters": {"type": "object"}}}]),
    "analysts", 'tool "exec_shell" (declared)')
denied("legacy functions", lambda: a.chat.completions.create(
    model="gpt-4o-mini", messages=user, max_tokens=10, functions=[{"name": "exec_shell"}]),
    "analysts", 'tool "exec_shell"')
denied("history", lambda: a.chat.completions.create(
    model="gpt-4o-mini", max_tokens=10, messages=[
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "exec_shell", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "done"}]),
    "analysts", "called in the conversation")
denied("responses tool", lambda: a.responses.create(
    model="gpt-4o-mini", input="hi", max_output_tokens=10,
    tools=[{"type": "function", "name": "exec_shell", "parameters": {"type": "object"}}]),
    "analysts", 'tool "exec_shell"')
denied("responses hosted tool", lambda: a.responses.create(
    model="gpt-4o-mini", input="hi", max_output_tokens=10, tools=[{"type": "web_search"}]),
    "analysts", 'tool "web_search"')
denied("max tokens", lambda: a.chat.completions.create(model="gpt-4o-mini", messages=user, max_tokens=4096),
       "analysts", "max_tokens 4096 > 1024")
denied("max completion tokens", lambda: a.chat.completions.create(
    model="gpt-4o-mini", messages=user, max_completion_tokens=2048),
    "analysts", "max_completion_tokens 2048 > 1024")
denied("no limit", lambda: a.chat.completions.create(model="gpt-4o-mini", messages=user),
       "analysts", "no output limit")
denied("responses max", lambda: a.responses.create(model="gpt-4o-mini", input="hi", max_output_tokens=5000),
       "analysts", "max_output_tokens 5000 > 1024")
denied("stream", lambda: list(a.chat.completions.create(
    model="gpt-4o-mini", messages=user, max_tokens=10, stream=True)), "analysts", "streaming")
c = claude(analyst)
denied("anthropic model", lambda: c.messages.create(model="claude-opus-4", max_tokens=10, messages=user),
       "analysts", 'model "claude-opus-4"', sdk=anthropic)
denied("anthropic tool", lambda: c.messages.create(
    model="claude-3-5-haiku-latest", max_tokens=10, messages=user,
    tools=[{"name": "exec_shell", "input_schema": {"type": "object"}}]),
    "analysts", 'tool "exec_shell"', sdk=anthropic)
denied("anthropic max tokens", lambda: c.messages.create(
    model="claude-3-5-haiku-latest", max_tokens=4096, messages=user),
    "analysts", "max_tokens 4096 > 1024", sdk=anthropic)
# An answer calling a tool the rule does not allow: never delivered as a call.
try:
    r = oai(analyst, **{"x-test-tool-call": "exec_shell"}).chat.completions.create(
        model="gpt-4o-mini", messages=user, max_tokens=10, tools=[search])
except openai.PermissionDeniedError as e:
    assert e.body.get("rule") == "analysts", e.body
    assert "exec_shell" in e.body["message"], e.body
    print(f"answer withheld: {e.body['message']}")
else:
    sys.exit(f"an answer calling exec_shell was delivered: {r}")
# An allowed call is delivered.
r = oai(analyst, **{"x-test-tool-call": "search_docs"}).chat.completions.create(
    model="gpt-4o-mini", messages=user, max_tokens=10, tools=[search])
assert r.choices[0].message.tool_calls[0].function.name == "search_docs", r
try:
    m = claude(analyst, **{"x-test-tool-call": "exec_shell"}).messages.create(
        model="claude-3-5-haiku-latest", max_tokens=10, messages=user)
except anthropic.PermissionDeniedError as e:
    assert e.body["error"]["rule"] == "analysts", e.body
    print(f"anthropic answer withheld: {e.body['error']['message']}")
else:
    sys.exit(f"anthropic: an answer calling exec_shell was delivered: {m}")

# Streamed: the stream ends with an error the SDK raises, before the call.
calls = []
try:
    for chunk in oai(streamer, **{"x-test-tool-call": "exec_shell"}).chat.completions.create(
            model="gpt-4o-mini", messages=user, stream=True, tools=[search]):
        for ch in chunk.choices:
            calls.extend(ch.delta.tool_calls or [])
except openai.APIError as e:
    assert "exec_shell" in str(e.message) and "streamers" in str(e.message), e.message
    print(f"stream withheld: {e.message}")
else:
    sys.exit("a streamed answer calling exec_shell ended normally")
assert not calls, f"tool call chunks reached the caller: {calls}"
print("ok")
