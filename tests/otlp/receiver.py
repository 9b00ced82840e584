"""A minimal OTLP/HTTP trace receiver for Granda's tests (tests/it/otel.rs, tests/it/trace_paths.rs).

Listens on 127.0.0.1:<port> (argv[1]; 0 picks one), prints the port it bound on its first
stdout line, decodes each `ExportTraceServiceRequest` POSTed to /v1/traces (protobuf) with the
`opentelemetry-proto` package, and appends one JSON line a span to argv[2]: service, name,
trace_id, span_id, parent_span_id, kind, start and end (ns), and its attributes.
"""

import json
import sys
from http.server import BaseHTTPRequestHandler, HTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

OUT = sys.argv[2]


def attribute(value):
    """An attribute's value as JSON: its string, integer, float or boolean."""
    kind = value.WhichOneof("value")
    return getattr(value, kind) if kind else None


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        if self.path != "/v1/traces":
            self.send_response(404)
            self.end_headers()
            return
        request = ExportTraceServiceRequest()
        request.ParseFromString(body)
        with open(OUT, "a") as out:
            for rs in request.resource_spans:
                service = next(
                    (a.value.string_value for a in rs.resource.attributes if a.key == "service.name"),
                    "",
                )
                for ss in rs.scope_spans:
                    for span in ss.spans:
                        out.write(json.dumps({
                            "service": service,
                            "name": span.name,
                            "trace_id": span.trace_id.hex(),
                            "span_id": span.span_id.hex(),
                            "parent_span_id": span.parent_span_id.hex(),
                            "kind": span.kind,
                            "start": span.start_time_unix_nano,
                            "end": span.end_time_unix_nano,
                            "attributes": {a.key: attribute(a.value) for a in span.attributes},
                        }) + "\n")
        answer = ExportTraceServiceResponse().SerializeToString()
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args):
        pass


server = HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
print(server.server_address[1], flush=True)
server.serve_forever()
