"""Checks deploy/ecs/*: each task definition against the ECS API model that botocore ships
(RegisterTaskDefinition's input shape: field names, types, enums, required fields), and the
task role policy for the permissions the collector needs. Exit status 1 with the problems.

Usage: python validate.py TASKDEF.json... [--policy POLICY.json]
"""
import json
import sys

import botocore.session
from botocore.validate import ParamValidator

args = sys.argv[1:]
policy = None
if "--policy" in args:
    i = args.index("--policy")
    policy = args[i + 1]
    args = args[:i] + args[i + 2:]

shape = botocore.session.get_session().get_service_model("ecs").operation_model("RegisterTaskDefinition").input_shape
problems = []
for path in args:
    with open(path) as f:
        td = json.load(f)
    report = ParamValidator().validate(td, shape)
    if report.has_errors():
        problems.append(f"{path}:\n{report.generate_report()}")
    names = {c["name"] for c in td.get("containerDefinitions", [])}
    for c in td.get("containerDefinitions", []):
        for d in c.get("dependsOn", []):
            if d["containerName"] not in names:
                problems.append(f"{path}: {c['name']}.dependsOn names no container {d['containerName']!r}")
    if "FARGATE" in td.get("requiresCompatibilities", []) and td.get("networkMode") != "awsvpc":
        problems.append(f"{path}: Fargate needs networkMode awsvpc")
    for need in ("envoy", "collector"):
        if need not in names:
            problems.append(f"{path}: no {need} sidecar")
if policy:
    with open(policy) as f:
        p = json.load(f)
    actions = set()
    for st in p["Statement"]:
        a = st["Action"]
        actions.update([a] if isinstance(a, str) else a)
    for need in ("xray:PutTraceSegments", "cloudwatch:PutMetricData", "logs:PutLogEvents", "logs:CreateLogStream"):
        if need not in actions:
            problems.append(f"{policy}: missing {need}")
if problems:
    print("\n".join(problems))
    sys.exit(1)
print(f"ok: {len(args)} task definition(s) valid against the ECS API model (botocore {botocore.__version__})")
