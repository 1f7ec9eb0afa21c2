"""The official SDKs, authenticating with a JWT.

    sdk_identity.py BASE_URL SESSION GOOD_TOKEN EXPIRED_TOKEN

openai: the JWT is the API key (sent as `Authorization: Bearer`). A chat with
the good token must succeed; with the expired one the SDK must raise
AuthenticationError (401) carrying tracegate's reason.
anthropic: the JWT is the `auth_token` (also `Authorization: Bearer`); with
the expired one the SDK must raise AuthenticationError with tracegate's
error type and message.
"""
import sys

import anthropic
import openai

base_url, session, good, expired = sys.argv[1:5]


def client(token: str) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=base_url, api_key=token, max_retries=0,
        default_headers={"x-session-id": session},
    )


reply = client(good).chat.completions.create(
    model="gpt-test", messages=[{"role": "user", "content": "hello as alice"}]
)
assert reply.choices[0].message.content == "echo: hello as alice", reply

try:
    client(expired).chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hello as mallory"}]
    )
except openai.AuthenticationError as e:
    assert e.status_code == 401, e
    assert "expired" in e.message, e.message
    print(f"refused: {e.message}")
else:
    sys.exit("an expired token was accepted")

claude = anthropic.Anthropic(
    base_url=base_url.removesuffix("/v1"), auth_token=expired, api_key=None,
    max_retries=0, default_headers={"x-session-id": session},
)
try:
    claude.messages.create(
        model="claude-test", max_tokens=16, messages=[{"role": "user", "content": "hello"}]
    )
except anthropic.AuthenticationError as e:
    assert e.status_code == 401, e
    assert e.body["error"]["type"] == "authentication_error", e.body
    assert "token has expired" in e.body["error"]["message"], e.body
    print(f"anthropic refused: {e.body['error']['message']}")
else:
    sys.exit("anthropic: an expired token was accepted")
print("ok")
