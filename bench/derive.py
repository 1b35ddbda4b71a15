#!/usr/bin/env python3
"""Derive the benchmark's Envoy configs from the rendered main config, so that the
benchmark measures exactly what users run: the same jwt_authn and Turnpike filter
config, with the upstream replaced by a direct_response (only the filters cost) and,
for the baselines, filters taken out.

  derive.py VARIANT < rendered.yaml > variant.yaml
  VARIANT: bare (router only) | jwt (jwt_authn + router) | turnpike (everything)
"""
import re
import sys

ROUTE = "route: { cluster: upstream, timeout: 15s }"
DIRECT = 'direct_response: { status: 200, body: { inline_string: "ok" } }'


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
    text = text.replace(ROUTE, DIRECT)
    if variant == "bare":
        text = cut(cut(text, "jwt"), "wasm")
    elif variant == "jwt":
        text = cut(text, "wasm")
    elif variant != "turnpike":
        sys.exit("usage: derive.py bare|jwt|turnpike < rendered.yaml")
    sys.stdout.write(text)


if __name__ == "__main__":
    main()
