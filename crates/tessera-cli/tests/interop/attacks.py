"""Attacks on Tessera as an outsider on the host would make them, for tests/hardening.rs.

  attacks.py workload SOCKET MODE TARGET   gRPC FetchX509SVID on the Workload API
  attacks.py imds HOST:PORT MODE TARGET    a managed-identity token request
  attacks.py hold HOST PORT N              N connections holding half a request head

MODE `none`: this process asks for itself (the control). MODE `fork` / `fork-inherit`:
exec after connect. This process connects, forks, and execs TARGET (the binary a workload's
selectors name) while its child talks on the connection; with `fork-inherit` the exec'd
program holds the connection too. MODE `spawning` is the legitimate use beside them: calls made
while another thread starts TARGET again and again. Prints one line: `GOT <text>` or
`REFUSED <why>`.
"""
import os
import socket
import sys
import time


def grpc_x509(sock):
    import h2.config
    import h2.connection
    import h2.events

    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    sid = conn.get_next_available_stream_id()
    conn.send_headers(sid, [
        (":method", "POST"), (":scheme", "http"), (":authority", "localhost"),
        (":path", "/SpiffeWorkloadAPI/FetchX509SVID"),
        ("content-type", "application/grpc"), ("te", "trailers"),
        ("workload.spiffe.io", "true"),
    ])
    conn.send_data(sid, b"\x00\x00\x00\x00\x00", end_stream=True)
    sock.sendall(conn.data_to_send())
    sock.settimeout(10)
    data = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return "REFUSED connection closed"
        for ev in conn.receive_data(chunk):
            if isinstance(ev, h2.events.DataReceived):
                data += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, (h2.events.ResponseReceived, h2.events.TrailersReceived)):
                h = {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
                     for k, v in ev.headers}
                if h.get("grpc-status", "0") != "0":
                    from urllib.parse import unquote
                    return "REFUSED " + unquote(h.get("grpc-message", h["grpc-status"]))
        sock.sendall(conn.data_to_send())
        if len(data) > 5:
            # The SPIFFE IDs in the response are plain strings inside the protobuf.
            import re
            ids = sorted({m.decode() for m in re.findall(rb"spiffe://[a-z0-9./_-]+", data)})
            return "GOT " + " ".join(ids)


def http_get(sock, hostport, path):
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: {hostport}\r\nMetadata: true\r\nConnection: close\r\n\r\n".encode())
    sock.settimeout(10)
    out = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        out += chunk
    text = out.decode(errors="replace")
    status = text.split(" ", 2)[1] if " " in text else "?"
    body = text.split("\r\n\r\n", 1)[-1]
    if status == "200":
        import base64
        import json
        payload = json.loads(body)["access_token"].split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        return "GOT 200 sub=" + claims["sub"]
    return ("GOT " if status == "200" else "REFUSED ") + status + " " + body.replace("\n", " ")[:300]


def run(connect, talk, mode, target):
    if mode == "spawning":
        # Not an attack: a workload that starts programs (TARGET) from another thread while it
        # calls, so its connections are held for a moment by children between fork and exec.
        # Every call must get its own answer.
        import subprocess
        import threading
        done = threading.Event()

        def spawn():
            while not done.is_set():
                subprocess.run([target, "0"])
        for _ in range(3):
            threading.Thread(target=spawn, daemon=True).start()
        outs = []
        for _ in range(150):
            s = connect()
            outs.append(talk(s))
            s.close()
        done.set()
        refused = [o for o in outs if not o.startswith("GOT")]
        print(refused[0] if refused else outs[-1], flush=True)
        return
    sock = connect()
    if mode == "none":
        print(talk(sock), flush=True)
        return
    if mode == "fork-inherit":
        sock.set_inheritable(True)
    pid = os.fork()
    if pid == 0:
        # The child: wait for the parent to become TARGET, then talk on the inherited connection.
        time.sleep(0.5)
        try:
            print(talk(sock), flush=True)
        except Exception as e:  # noqa: BLE001 - any failure is a refusal to report
            print("REFUSED " + repr(e), flush=True)
        os._exit(0)
    # The parent: the process the agent sees as the peer becomes the workload's binary.
    os.execv(target, [target, "2"])


def main():
    kind = sys.argv[1]
    if kind == "workload":
        path, mode, target = sys.argv[2:5]

        def connect():
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(path)
            return s
        run(connect, grpc_x509, mode, target)
    elif kind == "imds":
        hostport, mode, target = sys.argv[2:5]
        host, port = hostport.rsplit(":", 1)
        path = "/metadata/identity/oauth2/token?api-version=2018-02-01&resource=api"
        run(lambda: socket.create_connection((host, int(port))),
            lambda s: http_get(s, hostport, path), mode, target)
    elif kind == "hold":
        import resource
        host, port, n = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        held = []
        for _ in range(n):
            s = socket.create_connection((host, port))
            s.sendall(b"POST /token HTTP/1.1\r\nHost: x\r\nContent-")
            held.append(s)
        print(f"held {len(held)}", flush=True)
        # Hold them until the test kills this process.
        time.sleep(3600)
    else:
        sys.exit(f"unknown attack {kind}")


if __name__ == "__main__":
    main()
