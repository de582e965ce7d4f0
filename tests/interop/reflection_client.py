#!/usr/bin/env python3
"""A generic gRPC client that learns everything it knows from server reflection.

It is an interoperability check for Coffer: it carries none of Coffer's protos
and resolves every message type at run time through the reflection service.

Usage:
  reflection_client.py --addr HOST:PORT --cacert CA.pem [--cert CERT.pem --key KEY.pem]
                       [--server-name localhost] list
  reflection_client.py ... invoke PACKAGE.Service/Method '{"field": "value"}'

`list` prints the service names reflection reports, one per line.
`invoke` prints the response as JSON (proto field names, bytes in base64) and
exits 0; on an RPC error it prints {"code": "<StatusCode name>", "details": "..."}
and exits 3.
"""

from __future__ import annotations

import argparse
import json
import sys

import grpc
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

DEADLINE_SECONDS = 10.0
EXIT_RPC_ERROR = 3
EXIT_USAGE = 2


def read_file(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def make_channel(args: argparse.Namespace) -> grpc.Channel:
    if bool(args.cert) != bool(args.key):
        raise SystemExit("--cert and --key go together")
    credentials = grpc.ssl_channel_credentials(
        root_certificates=read_file(args.cacert),
        private_key=read_file(args.key) if args.key else None,
        certificate_chain=read_file(args.cert) if args.cert else None,
    )
    options = [("grpc.ssl_target_name_override", args.server_name)]
    return grpc.secure_channel(args.addr, credentials, options=options)


class DeadlineReflectionDatabase(ProtoReflectionDescriptorDatabase):
    """The reflection database, with a deadline on its streaming call.

    The stock database opens its reflection stream without a deadline; this
    subclass reopens it with one so a silent server cannot hang the client.
    """

    def __init__(self, channel: grpc.Channel, timeout: float):
        super().__init__(channel)
        # The stock implementation keeps the stream factory on `_stub` and calls
        # `ServerReflectionInfo(iterator)`; wrap it to pass a timeout.
        stub = getattr(self, "_stub", None)
        if stub is not None and hasattr(stub, "ServerReflectionInfo"):
            info = stub.ServerReflectionInfo

            class _TimedStub:
                def ServerReflectionInfo(self, requests, **kwargs):  # noqa: N802
                    kwargs.setdefault("timeout", timeout)
                    return info(requests, **kwargs)

            self._stub = _TimedStub()


def print_error(error: grpc.RpcError) -> int:
    code = error.code() if hasattr(error, "code") else None
    details = error.details() if hasattr(error, "details") else str(error)
    print(
        json.dumps(
            {
                "code": code.name if code is not None else "UNKNOWN",
                "details": details or "",
            }
        )
    )
    return EXIT_RPC_ERROR


def cmd_list(channel: grpc.Channel) -> int:
    database = DeadlineReflectionDatabase(channel, DEADLINE_SECONDS)
    for name in database.get_services():
        print(name)
    return 0


def cmd_invoke(channel: grpc.Channel, full_method: str, request_json: str) -> int:
    name = full_method.lstrip("/")
    if "/" not in name:
        print(f"method must look like package.Service/Method, got {full_method!r}", file=sys.stderr)
        return EXIT_USAGE
    service_name, method_name = name.rsplit("/", 1)

    database = DeadlineReflectionDatabase(channel, DEADLINE_SECONDS)
    pool = descriptor_pool.DescriptorPool(database)
    try:
        service = pool.FindServiceByName(service_name)
    except KeyError:
        print(f"reflection knows no service {service_name!r}", file=sys.stderr)
        return EXIT_USAGE
    method = service.methods_by_name.get(method_name)
    if method is None:
        print(f"service {service_name} has no method {method_name!r}", file=sys.stderr)
        return EXIT_USAGE
    if method.client_streaming or method.server_streaming:
        print(f"{full_method} is a streaming method; only unary calls are supported", file=sys.stderr)
        return EXIT_USAGE

    request_class = message_factory.GetMessageClass(method.input_type)
    response_class = message_factory.GetMessageClass(method.output_type)
    request = request_class()
    try:
        json_format.Parse(request_json, request)
    except json_format.ParseError as error:
        print(f"request JSON does not fit {method.input_type.full_name}: {error}", file=sys.stderr)
        return EXIT_USAGE

    call = channel.unary_unary(
        f"/{service_name}/{method_name}",
        request_serializer=lambda message: message.SerializeToString(),
        response_deserializer=response_class.FromString,
    )
    response = call(request, timeout=DEADLINE_SECONDS)
    print(
        json_format.MessageToJson(
            response,
            preserving_proto_field_name=True,
        )
    )
    return 0


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Generic gRPC client driven by server reflection")
    parser.add_argument("--addr", required=True, help="HOST:PORT")
    parser.add_argument("--cacert", required=True, help="PEM file of the CA that signed the server")
    parser.add_argument("--cert", help="client certificate chain (PEM)")
    parser.add_argument("--key", help="client private key (PEM)")
    parser.add_argument("--server-name", default="localhost", help="name to verify the server certificate against")
    sub = parser.add_subparsers(dest="call", required=True)
    sub.add_parser("list", help="print the services reflection reports")
    invoke = sub.add_parser("invoke", help="make one unary call")
    invoke.add_argument("method", help="package.Service/Method")
    invoke.add_argument("json", help="the request as JSON")
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    channel = make_channel(args)
    try:
        if args.call == "list":
            return cmd_list(channel)
        return cmd_invoke(channel, args.method, args.json)
    except grpc.RpcError as error:
        return print_error(error)
    finally:
        channel.close()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
