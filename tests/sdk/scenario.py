"""A user's scenario through a client generated from Granda's /openapi.json (openapi-python-client).

tests/it/sdk.rs generates the package `granda_client` from the served document, checks this file
with `mypy --strict`, then runs it against a live Granda: GRANDA_URL, GRANDA_KEY. Every call goes
through the generated, typed operations; the client raises on any status the document does not
declare. Exits non-zero (an AssertionError) on the first surprise.
"""

import http.server
import io
import os
import threading
import time
import uuid

import httpx
from granda_client import AuthenticatedClient
from granda_client.api.callbacks import get_callback_key
from granda_client.api.events import get_event, list_subscriptions, publish_event, subscribe
from granda_client.api.functions import create_function, delete_function, get_function
from granda_client.api.invocations import get_invocation, invoke_async, invoke_sync, invoke_url_path, invoke_url_path_get
from granda_client.api.schedules import create_schedule, delete_schedule, get_schedule
from granda_client.api.webhooks import create_webhook, receive_hook, rotate_webhook, webhook_rejections
from granda_client.models import (
    Accepted,
    CallbackKey,
    ErrorBody,
    EventPublished,
    EventView,
    FunctionView,
    InvocationStatus,
    InvocationView,
    NewFunction,
    NewSchedule,
    NewSubscription,
    NewWebhook,
    RejectionList,
    ResponseMode,
    Rotate,
    ScheduleView,
    Scheme,
    Subscription,
    SubscriptionList,
    Trigger,
    WebhookView,
)
from granda_client.types import File, Unset

BASE = os.environ["GRANDA_URL"]
KEY = os.environ["GRANDA_KEY"]
client = AuthenticatedClient(base_url=BASE, token=KEY, raise_on_unexpected_status=True, timeout=httpx.Timeout(60.0))
suffix = uuid.uuid4().hex[:8]
ECHO = f"echo-{suffix}"
CGI = f"cgi-{suffix}"


def register(body: NewFunction) -> FunctionView:
    r = create_function.sync_detailed(client=client, body=body)
    assert r.status_code == 201 and isinstance(r.parsed, FunctionView), (r.status_code, r.content)
    return r.parsed


def wait_final(id: uuid.UUID) -> InvocationView:
    deadline = time.monotonic() + 60
    while True:
        view = get_invocation.sync(id, client=client)
        assert isinstance(view, InvocationView), view
        if view.status not in (InvocationStatus.QUEUED, InvocationStatus.RUNNING):
            return view
        assert time.monotonic() < deadline, f"{id} still {view.status}"
        time.sleep(0.2)


# Register: an image, a CGI function answering its own status.
echo = register(NewFunction(name=ECHO, image="granda-test/echo", timeout_ms=10000))
assert echo.name == ECHO
register(NewFunction(name=CGI, image="granda-test/cgi", response=ResponseMode.CGI, timeout_ms=10000))

# Sync invoke with bytes that are not UTF-8: the same bytes back.
raw = bytes([0, 1, 2, 254, 255]) + b"payload"
r = invoke_sync.sync_detailed(ECHO, client=client, body=File(payload=io.BytesIO(raw)))
assert r.status_code == 200, (r.status_code, r.content)
assert isinstance(r.parsed, File), r.parsed
assert r.parsed.payload.read() == raw
assert r.headers["x-granda-status"] == "succeeded"

# Async, with an Idempotency-Key and an X-Callback-Url that a local server receives.
received: list[bytes] = []
got_callback = threading.Event()


class Receiver(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        received.append(self.rfile.read(int(self.headers["content-length"] or 0)))
        self.send_response(204)
        self.end_headers()
        got_callback.set()

    def log_message(self, format: str, *args: object) -> None:
        pass


server = http.server.HTTPServer(("127.0.0.1", 0), Receiver)
threading.Thread(target=server.serve_forever, daemon=True).start()
callback = f"http://127.0.0.1:{server.server_address[1]}/done"
key = f"order-{suffix}"
first = invoke_async.sync(ECHO, client=client, body=File(payload=io.BytesIO(b'{"n":1}')), idempotency_key=key, x_callback_url=callback)
again = invoke_async.sync(ECHO, client=client, body=File(payload=io.BytesIO(b'{"n":1}')), idempotency_key=key)
assert isinstance(first, Accepted) and isinstance(again, Accepted), (first, again)
assert first.id == again.id, "the same Idempotency-Key ran twice"
done = wait_final(first.id)
assert done.status == InvocationStatus.SUCCEEDED, (done.status, done.error)
assert done.trigger == Trigger.ASYNC
assert done.output == '{"n":1}', done.output
assert got_callback.wait(30), "no callback arrived"
assert str(first.id).encode() in received[0], received

# The function URL: a CGI function's own 201, and a GET that sends no body.
r2 = invoke_url_path.sync_detailed(CGI, "created", client=client, body=File(payload=io.BytesIO(b"")))
assert r2.status_code == 201, (r2.status_code, r2.content)
assert isinstance(r2.parsed, File) and r2.parsed.payload.read() == b'{"ok":true}'
assert r2.headers["x-granda-status"] == "succeeded"
r3 = invoke_url_path_get.sync_detailed(CGI, "teapot", client=client)
assert r3.status_code == 418, (r3.status_code, r3.content)

# Events: subscribe, publish with an Idempotency-Key, read back.
sub = subscribe.sync(ECHO, client=client, body=NewSubscription(pattern="orders.*"))
assert isinstance(sub, Subscription) and sub.pattern == "orders.*", sub
subs = list_subscriptions.sync(ECHO, client=client)
assert isinstance(subs, SubscriptionList) and [s.pattern for s in subs.subscriptions] == ["orders.*"]
published = publish_event.sync("orders.created", client=client, body=File(payload=io.BytesIO(b"hello")), idempotency_key=f"ev-{suffix}")
assert isinstance(published, EventPublished) and len(published.invocations) == 1, published
event = get_event.sync(published.id, client=client)
assert isinstance(event, EventView) and event.payload == "hello" and event.size == 5, event
assert wait_final(published.invocations[0].id).trigger == Trigger.EVENT

# Webhooks: bind, deliver, rotate with a body, read the rejections.
hook = create_webhook.sync(client=client, body=NewWebhook(function=ECHO, scheme=Scheme.STANDARD))
assert isinstance(hook, WebhookView) and isinstance(hook.secret, str), hook
unsigned = receive_hook.sync_detailed(hook.id, client=client, body=File(payload=io.BytesIO(b"{}")))
assert unsigned.status_code == 401 and isinstance(unsigned.parsed, ErrorBody), unsigned
rotated = rotate_webhook.sync(hook.id, client=client, body=Rotate(secret="whsec_" + "QUJD" * 8, grace_seconds=60))
assert isinstance(rotated, WebhookView) and not isinstance(rotated.previous_secret_valid_until, Unset), rotated
rejections = webhook_rejections.sync(hook.id, client=client)
assert isinstance(rejections, RejectionList) and rejections.rejections[0].reason == "missing_signature", rejections

# Schedules: a string payload, as documented.
schedule = create_schedule.sync(client=client, body=NewSchedule(function=ECHO, cron="0 3 * * *", payload="nightly"))
assert isinstance(schedule, ScheduleView) and schedule.payload == "nightly", schedule
read = get_schedule.sync(schedule.id, client=client)
assert isinstance(read, ScheduleView) and len(read.next_runs) > 0
assert delete_schedule.sync_detailed(schedule.id, client=client).status_code == 204

# The callback key, typed.
ck = get_callback_key.sync(ECHO, client=client)
assert isinstance(ck, CallbackKey) and ck.key.startswith("whsec_"), ck

# Errors: typed, with their codes.
missing = get_function.sync(f"nope-{suffix}", client=client)
assert isinstance(missing, ErrorBody) and missing.error.code == "not_found", missing
taken = create_function.sync(client=client, body=NewFunction(name=ECHO, image="granda-test/echo"))
assert isinstance(taken, ErrorBody) and taken.error.code == "conflict", taken
assert delete_function.sync_detailed(CGI, client=client).status_code == 204
print("ok sdk scenario")
