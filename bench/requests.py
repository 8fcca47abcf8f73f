"""Sends N GET requests over one keep-alive connection to 127.0.0.1:PORT with one extra header
("name: value"); prints how many responses each upstream gave ({"canary": 2000}). Fails on any
status other than 200. Used by bench/filters.sh to count instructions per request."""
import collections
import http.client
import json
import sys

port, count, header = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
name, value = header.split(": ", 1)
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
served = collections.Counter()
for _ in range(count):
    conn.request("GET", "/", headers={name: value})
    resp = conn.getresponse()
    body = resp.read().decode().strip()
    if resp.status != 200:
        sys.exit(f"port {port}: status {resp.status}: {body}")
    served[body] += 1
print(json.dumps(dict(served), sort_keys=True))
