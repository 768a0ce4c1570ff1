"""A proxyless gRPC Python (C-core) client for the language matrix.

    python3 client.py
        Reads one JSON command a line from stdin, {"target": "xds:///...",
        "calls": N, "timeout_ms": T}, makes N sequential
        helloworld.Greeter/SayHello calls to target (one channel per target,
        kept for the process's life), and answers one
        JSON line: {"replies": {"<reply message>": count}, "errors": n,
        "first_error": "..."}. It first prints {"grpc": version}.

Messages are encoded by hand (one string field, number 1) so the client needs
grpcio alone, as Debian packages it (python3-grpcio).
"""

import json
import sys

import grpc


def encode_name(s):
    b = s.encode()
    return bytes([0x0A, len(b)]) + b


def decode_message(buf):
    i = 0
    while i < len(buf):
        tag = buf[i]
        i += 1
        n = shift = 0
        while True:
            byte = buf[i]
            i += 1
            n |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        if tag == 0x0A:
            return buf[i:i + n].decode()
        i += n
    return ""


def main():
    print(json.dumps({"grpc": grpc.__version__, "python": sys.version.split()[0]}), flush=True)
    channels = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        cmd = json.loads(line)
        target = cmd["target"]
        if target not in channels:
            channels[target] = grpc.insecure_channel(target)
        say_hello = channels[target].unary_unary(
            "/helloworld.Greeter/SayHello",
            request_serializer=lambda x: x,
            response_deserializer=decode_message,
        )
        out = {"replies": {}, "errors": 0}
        for _ in range(cmd["calls"]):
            try:
                msg = say_hello(encode_name("python"), timeout=cmd.get("timeout_ms", 5000) / 1000)
                out["replies"][msg] = out["replies"].get(msg, 0) + 1
            except grpc.RpcError as e:
                out["errors"] += 1
                out.setdefault("first_error", f"{e.code()}: {e.details()}")
        print(json.dumps(out), flush=True)
    for channel in channels.values():
        channel.close()


if __name__ == "__main__":
    main()
