"""Token usage through tracegate, as the official SDKs see it.

    sdk_usage.py BASE_URL SESSION TOKEN

openai chat, streamed without asking for usage: tracegate asks upstream
for it, and the client must still get no usage chunk (every chunk's usage is
None). Streamed with `stream_options.include_usage`: the client keeps its
usage chunk. Not streamed: usage as usual. Responses streamed and anthropic
streamed: their own usage events pass. Prints one line per check; exits
non-zero on the first failure.
"""
import sys

import anthropic
import openai

base_url, session, token = sys.argv[1:4]
oa = openai.OpenAI(base_url=base_url + "/v1", api_key=token, max_retries=0, timeout=30,
                   default_headers={"x-session-id": session})
an = anthropic.Anthropic(base_url=base_url, auth_token=token, max_retries=0, timeout=30,
                         default_headers={"x-session-id": session})
MESSAGES = [{"role": "user", "content": "count my tokens please"}]


def check(name, cond, detail):
    if not cond:
        sys.exit(f"FAIL {name}: {detail!r}")
    print(f"ok {name}")


chunks = list(oa.chat.completions.create(model="gpt-usage", messages=MESSAGES, stream=True))
check("chat stream without usage asked: no usage chunk",
      all(c.usage is None for c in chunks) and all(c.choices for c in chunks),
      [c.model_dump() for c in chunks][-2:])
text = "".join(c.choices[0].delta.content or "" for c in chunks)
check("chat stream text", text.startswith("echo:"), text)

chunks = list(oa.chat.completions.create(model="gpt-usage", messages=MESSAGES, stream=True,
                                         stream_options={"include_usage": True}))
check("chat stream with usage asked: usage chunk kept",
      chunks[-1].usage is not None and chunks[-1].usage.prompt_tokens > 0,
      chunks[-1].model_dump())

reply = oa.chat.completions.create(model="gpt-usage", messages=MESSAGES)
check("chat usage", reply.usage is not None and reply.usage.total_tokens > 0, reply.model_dump())

events = list(oa.responses.create(model="gpt-usage-r", input="count my tokens please", stream=True))
done = [e for e in events if e.type == "response.completed"]
check("responses completed with usage", done and done[0].response.usage is not None,
      [e.type for e in events])

with an.messages.stream(model="claude-usage", max_tokens=64, messages=MESSAGES) as s:
    final = s.get_final_message()
check("anthropic usage", final.usage.output_tokens > 0, final.model_dump())
