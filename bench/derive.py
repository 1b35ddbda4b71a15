#!/usr/bin/env python3
"""Derive the benchmark's Envoy configs from the rendered main config, so that the
benchmark measures exactly what users run: the same jwt_authn and Turnpike filter
config, with the upstream replaced by a direct_response (only the filters cost) and,
for the baselines, filters taken out.

  derive.py VARIANT < rendered.yaml > variant.yaml
  VARIANT: bare (router only) | jwt (jwt_authn + router) | turnpike (everything)
           | settle (everything; the direct_response answers like an LLM API: a JSON
             body with `usage.total_tokens`, content-type application/json)
"""
import re
import sys

ROUTE = "route: { cluster: upstream, timeout: 15s }"
DIRECT = 'direct_response: { status: 200, body: { inline_string: "ok" } }'
# What an OpenAI-style chat completion answers, trimmed: the filter settles the tokens
# from /usage/total_tokens.
CHAT_BODY = (
    '{"id":"bench","object":"chat.completion","choices":[{"index":0,'
    '"message":{"role":"assistant","content":"ok"},"finish_reason":"stop"}],'
    '"usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}'
)
DIRECT_JSON = f"direct_response: {{ status: 200, body: {{ inline_string: '{CHAT_BODY}' }} }}"
JSON_HEADER = (
    "response_headers_to_add: [ { header: { key: content-type, value: application/json },"
    " append_action: OVERWRITE_IF_EXISTS_OR_ADD } ]"
)


def cut(text: str, block: str) -> str:
    pattern = re.compile(
        rf"^[ \t]*# bench:{block}-begin[^\n]*\n.*?^[ \t]*# bench:{block}-end\n", re.M | re.S
    )
    out, n = pattern.subn("", text)
    if n != 1:
        sys.exit(f"derive.py: marker pair bench:{block}-begin/end not found exactly once")
    return out


def main() -> None:
    variant = sys.argv[1] if len(sys.argv) > 1 else ""
    text = sys.stdin.read()
    if text.count(ROUTE) != 1:
        sys.exit(f"derive.py: expected the route line {ROUTE!r} exactly once")
    if variant == "settle":
        # The route's own key, on its own line at the same indentation.
        line = re.compile(rf"^([ \t]*){re.escape(ROUTE)}[ \t]*$", re.M)
        text, n = line.subn(lambda m: f"{m.group(1)}{DIRECT_JSON}\n{m.group(1)}{JSON_HEADER}", text)
        if n != 1:
            sys.exit(f"derive.py: expected {ROUTE!r} alone on its line")
        return sys.stdout.write(text)
    text = text.replace(ROUTE, DIRECT)
    if variant == "bare":
        text = cut(cut(text, "jwt"), "wasm")
    elif variant == "jwt":
        text = cut(text, "wasm")
    elif variant != "turnpike":
        sys.exit("usage: derive.py bare|jwt|turnpike|settle < rendered.yaml")
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
