"""What a streaming user sees, with and without tracegate (make bench).

    stream_latency.py PASSTHROUGH_URL TRACEGATE_URL TOKEN RUNS [--smoke]

The local upstream streams each answer in 4-character pieces, 10 ms apart
(about 100 tokens/s). Through each listener in turn, the official SDKs read
the stream; every piece of visible text (answer or reasoning, as the SDK
yields it) is timed from the request's start. Reported per API and answer:
the time to the first visible text and the time at which each 10 % of the
answer had arrived, medians over RUNS runs, interleaved. Prints one JSON
object.
"""
import base64
import json
import statistics
import sys
import time

import anthropic
import openai

PACE_MS = 10
PIECE = 4

PROSE = ("The deployment failed after the migration step because the connection pool was "
         "exhausted. We rolled back within five minutes and the error rate returned to normal. "
         "Next we will add a canary stage, raise the pool size to sixty-four and alert when "
         "saturation stays above eighty percent for more than two minutes in a row.")
SECRET = ("The rotation is done: the new key is sk-proj-AbCdEfGhIjKlMnOpQrStUvWx123 and the "
          "old one was revoked at noon. Tell ops@example.com if any job still fails, and keep "
          "the staging key out of the repository; the audit found it in two notebooks.")
CODE = ("Here is the fix:\n```python\nimport os\n\ndef connect(cfg):\n    pool = Pool(size=cfg.get("
        "\"pool_size\", 64))\n    for attempt in range(3):\n        try:\n            return pool.acquire("
        "timeout=5)\n        except Timeout:\n            log.warning(\"retry %d\", attempt)\n    "
        "raise RuntimeError(\"pool exhausted\")\n```\nDeploy it behind the canary first.")
REASONING = ("The user asks why the deploy failed. The logs show pool exhaustion right after "
             "the migration, so the migration held connections open. A larger pool helps, but "
             "the real fix is to release connections after each batch. I should say both.")
ANSWERS = {
    "prose": (PROSE, None),
    "secret in the middle": (SECRET, None),
    "code block": (CODE, None),
    "reasoning stream": ("Release connections after each batch; raise the pool to 64.", REASONING),
}


def headers(text, reasoning):
    # Base64: tracegate judges headers too (the secret would be masked on
    # the way up and the answer would hold none).
    h = {"x-test-reply-b64": base64.b64encode(text.encode()).decode(), "x-test-piece-chars": str(PIECE),
         "x-test-chunk-delay-ms": str(PACE_MS)}
    if reasoning:
        h["x-test-reasoning"] = reasoning
    return h


def chat(base, token, text, reasoning):
    c = openai.OpenAI(base_url=base + "/v1", api_key=token, max_retries=0, timeout=60)
    for chunk in c.chat.completions.create(
            model="gpt-test", stream=True, extra_headers=headers(text, reasoning),
            messages=[{"role": "user", "content": "why did the deploy fail?"}]):
        if chunk.choices:
            d = chunk.choices[0].delta
            yield (getattr(d, "reasoning_content", None) or "") + (d.content or "")


def responses(base, token, text, reasoning):
    c = openai.OpenAI(base_url=base + "/v1", api_key=token, max_retries=0, timeout=60)
    with c.responses.stream(model="gpt-test", input="why did the deploy fail?",
                            extra_headers=headers(text, reasoning)) as s:
        for e in s:
            if e.type in ("response.output_text.delta", "response.reasoning_summary_text.delta"):
                yield e.delta


def messages(base, token, text, reasoning):
    c = anthropic.Anthropic(base_url=base, api_key="unused", max_retries=0, timeout=60,
                            default_headers={"authorization": f"Bearer {token}"})
    with c.messages.stream(model="claude-test", max_tokens=500, extra_headers=headers(text, reasoning),
                           messages=[{"role": "user", "content": "why did the deploy fail?"}]) as s:
        for e in s:
            if e.type == "content_block_delta":
                yield getattr(e.delta, "text", None) or getattr(e.delta, "thinking", None) or ""


APIS = {"OpenAI chat": chat, "OpenAI Responses": responses, "Anthropic": messages}


def timeline(api, base, token, text, reasoning):
    """(ms since the request started, visible characters so far) per piece."""
    start = time.perf_counter()
    seen, points = 0, []
    for piece in APIS[api](base, token, text, reasoning):
        if piece:
            seen += len(piece)
            points.append(((time.perf_counter() - start) * 1e3, seen))
    return points


def deciles(points):
    total = points[-1][1]
    out = []
    for d in range(1, 11):
        want = total * d / 10
        out.append(next(t for t, n in points if n >= want))
    return out


def main():
    passthrough, tracegate, token, runs = sys.argv[1:5]
    runs = int(runs)
    smoke = "--smoke" in sys.argv
    apis = ["OpenAI chat"] if smoke else list(APIS)
    answers = ["secret in the middle"] if smoke else list(ANSWERS)
    rows = []
    for api in apis:
        for answer in answers:
            text, reasoning = ANSWERS[answer]
            got = {"passthrough": [], "tracegate": []}
            for _ in range(runs):
                for name, base in (("passthrough", passthrough), ("tracegate", tracegate)):
                    points = timeline(api, base, token, text, reasoning)
                    if not points:
                        sys.exit(f"{api} {answer} via {name}: no visible text")
                    got[name].append(points)
            row = {"api": api, "answer": answer, "runs": runs}
            for name, all_points in got.items():
                row[name] = {
                    "first_text_ms": statistics.median(p[0][0] for p in all_points),
                    "deciles_ms": [statistics.median(d[i] for d in map(deciles, all_points))
                                   for i in range(10)],
                    "chars": all_points[0][-1][1],
                }
            row["added_first_text_ms"] = (row["tracegate"]["first_text_ms"]
                                          - row["passthrough"]["first_text_ms"])
            row["added_lag_ms"] = [t - p for t, p in zip(row["tracegate"]["deciles_ms"],
                                                         row["passthrough"]["deciles_ms"])]
            rows.append(row)
    print(json.dumps({"pace_ms": PACE_MS, "piece_chars": PIECE, "rows": rows}))


if __name__ == "__main__":
    main()
