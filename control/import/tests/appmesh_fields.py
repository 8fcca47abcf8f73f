"""Every field of App Mesh's resources, from botocore's model of the 2019-01-25 API (the
project's .venv): one JSON line per leaf field, with a `spec` that sets only that field to a
value of its type. Read by field_coverage.rs."""
import json

import botocore.session

OPS = {
    "Mesh": "CreateMesh",
    "VirtualNode": "CreateVirtualNode",
    "VirtualRouter": "CreateVirtualRouter",
    "Route": "CreateRoute",
    "VirtualService": "CreateVirtualService",
    "VirtualGateway": "CreateVirtualGateway",
    "GatewayRoute": "CreateGatewayRoute",
}


def sample(shape):
    t = shape.type_name
    if t == "string":
        return shape.enum[0] if shape.enum else "x"
    if t in ("integer", "long"):
        return 1
    if t == "boolean":
        return True
    if t in ("double", "float"):
        return 1.0
    raise ValueError(t)


def walk(shape, path, depth=0):
    """(path, value) for every leaf under `shape`; the value nests the leaf's sample."""
    if depth > 16:
        return
    t = shape.type_name
    if t == "structure":
        for name, member in shape.members.items():
            for p, v in walk(member, f"{path}.{name}", depth + 1):
                yield p, {name: v}
    elif t == "list":
        for p, v in walk(shape.member, path + "[]", depth + 1):
            yield p, [v]
    elif t == "map":
        yield path + "{}", {"k": sample(shape.value)}
    else:
        yield path, sample(shape)


model = botocore.session.get_session().get_service_model("appmesh")
for kind, op in OPS.items():
    spec = model.operation_model(op).input_shape.members["spec"]
    for path, value in walk(spec, "spec"):
        print(json.dumps({"kind": kind, "path": path, "spec": value}))
