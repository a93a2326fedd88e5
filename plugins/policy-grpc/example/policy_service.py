"""An example policy service for the policy-grpc plugin, in Python (grpcio).

Generate the stubs from the fabric's proto first, then start it:

    python3 -m grpc_tools.protoc -I proto --python_out=gen --grpc_python_out=gen \
        proto/fabric/v1/policy_provider.proto
    python3 policy_service.py gen 50051          # port 0: any free port

It prints `PORT <n>` once it listens, then a `CALL <json>` line per decision. Rules (edit `decide` for your own):
  - writes (`*__write_file`, `*__edit_file`, `*__move_file`): denied, cached 30 s;
  - shell tools (`shell__*`): a human must approve;
  - reads (`*__read_*`, `*__list_*`): allowed, cached 60 s;
  - anything else: no opinion (the sidecar's own policies decide).
With POLICY_TOKEN set, a caller must send `authorization: Bearer <POLICY_TOKEN>`.
"""
import json
import os
import sys
from concurrent import futures

sys.path.insert(0, sys.argv[1])

import grpc  # noqa: E402
from fabric.v1 import policy_provider_pb2 as pb  # noqa: E402
from fabric.v1 import policy_provider_pb2_grpc as pb_grpc  # noqa: E402

TOKEN = os.environ.get("POLICY_TOKEN")


def decide(agent_id, tool, args):
    """(decision, reason, cache_ttl_ms) for one tool call."""
    if tool.endswith(("__write_file", "__edit_file", "__move_file")):
        return pb.DECISION_DENY, f"agent {agent_id}: this service allows no writes ({tool})", 30_000
    if tool.startswith("shell__"):
        return pb.DECISION_REQUIRE_APPROVAL, "shell commands need a human", 0
    if "__read_" in tool or "__list_" in tool:
        return pb.DECISION_ALLOW, "reads are fine", 60_000
    return pb.DECISION_ABSTAIN, "", 0


class PolicyProvider(pb_grpc.PolicyProviderServiceServicer):
    def Decide(self, request, context):
        if TOKEN is not None:
            sent = dict(context.invocation_metadata()).get("authorization")
            if sent != f"Bearer {TOKEN}":
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "bad or missing token")
        args = json.loads(request.arguments_json or "{}")
        decision, reason, ttl = decide(request.agent_id, request.tool, args)
        # One log line per decision (CALL <json>).
        line = {"agent": request.agent_id, "tool": request.tool, "decision": decision}
        print("CALL " + json.dumps(line), flush=True)
        return pb.DecideResponse(decision=decision, reason=reason, cache_ttl_ms=ttl)


def main():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    pb_grpc.add_PolicyProviderServiceServicer_to_server(PolicyProvider(), server)
    port = server.add_insecure_port(f"127.0.0.1:{sys.argv[2] if len(sys.argv) > 2 else 0}")
    server.start()
    print(f"PORT {port}", flush=True)
    server.wait_for_termination()


if __name__ == "__main__":
    main()
