"""Sends spans with the OpenTelemetry Python SDK (a real OTLP client, not Maille's code).

Usage: otel_sdk_client.py grpc|http ENDPOINT SERVICE
Prints the X-Ray trace id and the span ids it sent, one per line.
"""
import sys

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

protocol, endpoint, service = sys.argv[1], sys.argv[2], sys.argv[3]
if protocol == "grpc":
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    exporter = OTLPSpanExporter(endpoint=endpoint, insecure=True)
else:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    exporter = OTLPSpanExporter(endpoint=endpoint + "/v1/traces")

provider = TracerProvider(resource=Resource.create({"service.name": service, "cloud.platform": "aws_ec2",
                                                    "host.id": "i-0123456789abcdef0"}))
provider.add_span_processor(SimpleSpanProcessor(exporter))
tracer = provider.get_tracer("maille-test")
ids = []
with tracer.start_as_current_span("checkout", kind=trace.SpanKind.SERVER,
                                  attributes={"http.request.method": "POST", "http.response.status_code": 201}) as root:
    ids.append(root.get_span_context().span_id)
    with tracer.start_as_current_span("charge card", kind=trace.SpanKind.CLIENT,
                                      attributes={"peer.service": "payments", "http.response.status_code": 500}) as child:
        ids.append(child.get_span_context().span_id)
        try:
            raise ValueError("card declined")
        except ValueError as e:
            child.record_exception(e)
provider.shutdown()
tid = "%032x" % root.get_span_context().trace_id
print("1-%s-%s" % (tid[:8], tid[8:]))
for i in ids:
    print("%016x" % i)
