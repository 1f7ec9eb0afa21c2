"""A short agent conversation through tracegate, with the official openai SDK.

    python openai_chat.py --base-url http://127.0.0.1:10000/v1 --session demo-1

Sends two chat completions and one streamed completion, all in one session
(header x-session-id), and prints what comes back. Exits non-zero if any
answer is not what the demo's local upstream returns.
"""

import argparse
import sys

import openai

PROMPTS = [
    "Summarise the incident report in one line.",
    "Which service failed first?",
]
STREAMED = "List three follow-up actions."


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--session", required=True)
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument(
        "--api-key", default="sk-demo-not-a-real-key",
        help="sent as Authorization: Bearer; the demo passes a JWT",
    )
    args = parser.parse_args()

    client = openai.OpenAI(
        base_url=args.base_url,
        api_key=args.api_key,
        default_headers={"x-session-id": args.session},
        max_retries=0,
        timeout=30,
    )
    history = [{"role": "system", "content": "You are an SRE assistant."}]
    for prompt in PROMPTS:
        history.append({"role": "user", "content": prompt})
        reply = client.chat.completions.create(model=args.model, messages=history)
        answer = reply.choices[0].message.content
        print(f"user> {prompt}\nassistant> {answer}\n")
        if answer != f"echo: {prompt}":
            print(f"unexpected answer: {answer!r}", file=sys.stderr)
            return 1
        history.append({"role": "assistant", "content": answer})

    history.append({"role": "user", "content": STREAMED})
    print(f"user> {STREAMED}\nassistant (streamed)> ", end="", flush=True)
    parts = []
    stream = client.chat.completions.create(model=args.model, messages=history, stream=True)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            parts.append(chunk.choices[0].delta.content)
            print(chunk.choices[0].delta.content, end="", flush=True)
    print("\n")
    if "".join(parts) != f"echo: {STREAMED}":
        print(f"unexpected streamed answer: {''.join(parts)!r}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
