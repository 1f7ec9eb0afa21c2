"""An agent without the provider's key, with the official openai SDK.

    sdk_gateway.py GATEWAY_BASE_URL UPSTREAM_BASE_URL SESSION AGENT_JWT

Through the gateway (Envoy with tracegate, which verifies the JWT and then
injects the organisation's key) the chat must succeed. The same request sent
straight to the upstream, with the agent's JWT or with no key at all, must be
refused by the provider: AuthenticationError (401, invalid_api_key).
"""
import sys

import openai

gateway, upstream, session, token = sys.argv[1:5]
messages = [{"role": "user", "content": "hello from the agent"}]


def client(base_url: str, key: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=base_url, api_key=key, max_retries=0,
        default_headers={"x-session-id": session},
    )


reply = client(gateway, token).chat.completions.create(model="gpt-test", messages=messages)
assert reply.choices[0].message.content == "echo: hello from the agent", reply
print("through the gateway: answered")

for what, key in [("the agent's JWT", token), ("a made-up key", "sk-guessed")]:
    try:
        client(upstream, key).chat.completions.create(model="gpt-test", messages=messages)
    except openai.AuthenticationError as e:
        assert e.status_code == 401, e
        assert e.code == "invalid_api_key", e.body
        print(f"straight to the upstream with {what}: refused ({e.status_code} {e.code})")
    else:
        sys.exit(f"the upstream answered a request with {what}")
print("ok")
