"""Schemathesis hooks for Granda's API fuzz run (loaded through SCHEMATHESIS_HOOKS).

`granda_not_a_server_error`: like schemathesis' own `not_a_server_error`, except for the 5xx
answers that report the *function's* fate rather than Granda's: 502 `function_failed` (the
function exited non-zero), 504 `function_timed_out`, 502 `bad_cgi_response` (a function switched
to `response: "cgi"`, as the fuzzer may do, whose output is not a CGI response), and 502
`platform_error` caused by input that an `input: "args"` function can't take. Any other 5xx is a
bug in Granda, except a 502/504 that names a recorded run that failed (the fuzzer may switch a
test function to a mode or response its image can't serve). A HEAD request's 5xx carries no
body: the same request as GET tells.

`application/x-ndjson` (a build's streamed log, one `BuildStreamLine` per line) is read as its
last line, the verdict, so that its schema is checked too.
"""

import json

import requests
import schemathesis

FUNCTION_FATES = {"function_failed", "function_timed_out", "bad_cgi_response"}


@schemathesis.check
def granda_not_a_server_error(ctx, response, case):
    if response.status_code < 500:
        return None
    text = response.text
    request = getattr(response, "request", None)
    if not text and request is not None and str(request.method).upper() == "HEAD":
        # A HEAD answer has no body to say whose fault a 5xx was: ask the same as GET.
        again = requests.request(
            "GET", request.url, headers=dict(request.headers), data=request.body, timeout=60
        )
        if again.status_code == response.status_code:
            text = again.text
    try:
        error = json.loads(text)["error"]
    except Exception:
        error = {}
    code = error.get("code")
    if code in FUNCTION_FATES:
        return None
    # A call whose run was recorded and failed reports the run's fate, whatever its class: the
    # stateful phase may switch a test function to a mode or response its image can't serve
    # (hot without a listener, cgi without CGI output). Granda's own failures carry no run.
    if response.status_code in (502, 504) and error.get("invocation_id") and error.get("status") in ("failed", "timed_out", "dead"):
        return None
    if code == "platform_error" and str(error.get("detail", "")).startswith("bad input for args mode"):
        return None
    raise AssertionError(f"Granda answered {response.status_code}: {response.text[:500]}")


@schemathesis.deserializer("application/x-ndjson")
def ndjson_verdict(ctx, response):
    lines = [line for line in response.content.splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else None
