"""Streamed answers through tracegate arrive while the model is still writing.

    sdk_streaming.py BASE_URL UPSTREAM_URL SESSION

For the openai SDK (chat completions and the Responses API) and the
anthropic SDK: the local upstream streams an answer in 4-character pieces
and, part way, stops until this client has released it (POST
UPSTREAM_URL/__release/NAME). The client releases it on the first non-empty
text delta its SDK yields. If tracegate held the text back until the end,
that delta would never come before the pause: the SDK's read times out
(15 s) and the check fails. Then the whole answer must assemble to the text
with its secret masked. Prints one line per check; exits non-zero on the
first failure.
"""
import base64
import sys
import urllib.request

import anthropic
import openai

base_url, upstream, session = sys.argv[1:4]
KEY = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWx123"
REPLY = ("The deployment failed after the migration step; we rotated the key "
         f"{KEY} and rolled back at once, then wrote to ops@example.com.")
MASKED = REPLY.replace(KEY, "[OPENAI_API_KEY]").replace("ops@example.com", "[EMAIL]")


def check(name, cond, detail):
    if not cond:
        sys.exit(f"FAIL {name}: {detail!r}")
    print(f"ok {name}")


def release(name):
    req = urllib.request.Request(f"{upstream}/__release/{name}", method="POST")
    urllib.request.urlopen(req, timeout=5).read()


def headers(name):
    # Frames from index 8 on wait: the first seven pieces (28 characters)
    # are all the model has "written" until the client has seen text.
    # Base64: tracegate judges headers too, and would mask the secret in it.
    return {"x-test-reply-b64": base64.b64encode(REPLY.encode()).decode(), "x-test-piece-chars": "4",
            "x-test-pause-after": f"8:{name}"}


def consume(name, deltas):
    """Joins the deltas; releases the upstream at the first visible text."""
    parts, released = [], False
    for text in deltas:
        if text and not released:
            release(name)
            released = True
        parts.append(text or "")
    return released, "".join(parts)


oa = openai.OpenAI(base_url=base_url + "/v1", api_key="sk-test", max_retries=0, timeout=15,
                   default_headers={"x-session-id": session})

name = f"{session}-chat"
stream = oa.chat.completions.create(model="gpt-test", stream=True, extra_headers=headers(name),
                                    messages=[{"role": "user", "content": "what happened?"}])
released, text = consume(name, (c.choices[0].delta.content for c in stream if c.choices))
check("openai chat: text before the model finished", released, text)
check("openai chat: whole answer masked", text == MASKED, text)

name = f"{session}-responses"
with oa.responses.stream(model="gpt-test", input="what happened?", extra_headers=headers(name)) as s:
    released, text = consume(name, (e.delta for e in s if e.type == "response.output_text.delta"))
    final = s.get_final_response().output_text
check("openai responses: text before the model finished", released, text)
check("openai responses: whole answer masked", text == MASKED and final == MASKED, (text, final))

an = anthropic.Anthropic(base_url=base_url, api_key="sk-ant-test", max_retries=0, timeout=15,
                         default_headers={"x-session-id": session})
name = f"{session}-anthropic"
with an.messages.stream(model="claude-test", max_tokens=200, extra_headers=headers(name),
                        messages=[{"role": "user", "content": "what happened?"}]) as s:
    released, text = consume(name, s.text_stream)
check("anthropic: text before the model finished", released, text)
check("anthropic: whole answer masked", text == MASKED, text)
