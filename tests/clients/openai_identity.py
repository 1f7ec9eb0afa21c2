"""The official openai SDK, authenticating with a JWT as its API key (the SDK
sends it as `Authorization: Bearer`).

    openai_identity.py BASE_URL SESSION GOOD_TOKEN EXPIRED_TOKEN

A chat with the good token must succeed; with the expired one the SDK must
raise AuthenticationError (401) carrying tracegate's reason.
"""
import sys

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
print("ok")
