"""Agent Fabric from Python: an operator and a worker over the sidecar's gRPC port.

The client code is generated from proto/ with grpc_tools (see README.md next to this file); it is
not committed. Steps, each printed on its own line:

  1. spawn     FabricService.SpawnAgent (admin token) -> a remote agent and its credential
  2. schedule  FabricService.ScheduleTask: a "word-count" task addressed to that agent
  3. worker    a worker loop in a thread, as the agent: AgentService.ClaimTask with a delivery
               lease (ack_seconds), acknowledged at once with an empty ReportProgress, then
               CompleteTask
  4. wait      FabricService.WaitTask -> the task COMPLETED with the worker's result
  5. allowed   ToolService.CallTool of an allowed tool, as the agent
  6. denied    ToolService.CallTool of a denied tool -> PERMISSION_DENIED; the rule that denied it
               is read from the `fabric-error-details` trailer
  7. approval  ToolService.CallTool of a tool under a `require_approval` policy parks; the
               operator lists the pending approvals (ApprovalService.ListApprovals); the agent's own
               Approve is PERMISSION_DENIED; the operator approves it (ApprovalService.Approve)
               and the parked call completes

Exits 0 when every step went as described, 1 (with the reason on stderr) otherwise.

Usage:
  fabric_demo.py [--address HOST:PORT] [--admin-token TOKEN] [--client DIR]
                 [--allowed TOOL] [--denied TOOL] [--parked TOOL] [--parked-message TEXT]
Defaults: $FABRIC_GRPC_ADDRESS (else 127.0.0.1:50051), $FABRIC_ADMIN_TOKEN, $FABRIC_PY_CLIENT
(else ./fabric_client), and the tool names and message of examples/python/fabric.yaml.
"""

import argparse
import json
import os
import sys
import threading
import time


class Unexpected(Exception):
    """A step did not go as described."""


def expect(condition, what):
    if not condition:
        raise Unexpected(what)


def step(name, text):
    print(f"{name}: {text}", flush=True)


def parse_args():
    p = argparse.ArgumentParser(description="Agent Fabric over gRPC from Python")
    p.add_argument("--address", default=os.environ.get("FABRIC_GRPC_ADDRESS", "127.0.0.1:50051"))
    p.add_argument("--admin-token", default=os.environ.get("FABRIC_ADMIN_TOKEN", ""))
    p.add_argument("--client", default=os.environ.get("FABRIC_PY_CLIENT", "fabric_client"),
                   help="folder of the Python code generated from proto/")
    p.add_argument("--allowed", default="ev__echo")
    p.add_argument("--denied", default="ev__get-sum")
    p.add_argument("--parked", default="ev__echo")
    p.add_argument("--parked-message", default="needs approval")
    args = p.parse_args()
    if not args.admin_token:
        p.error("the admin token is required (--admin-token or FABRIC_ADMIN_TOKEN)")
    return args


args = parse_args()
sys.path.insert(0, args.client)

import grpc  # noqa: E402
from google.protobuf import duration_pb2, json_format, struct_pb2  # noqa: E402
from fabric.v1 import (  # noqa: E402
    agent_pb2,
    agent_pb2_grpc,
    approval_pb2,
    approval_pb2_grpc,
    fabric_pb2,
    fabric_pb2_grpc,
    fabric_types_pb2,
    tool_pb2,
    tool_pb2_grpc,
)

CALL_TIMEOUT = 30  # seconds: no call of this program waits longer
# Delivery lease of each claim: a task whose ClaimTask answer this program never read (its timeout
# fired while the answer was on the way) goes back to the queue after this long, its attempt not
# counted, instead of staying RUNNING on this agent until the task's own timeout.
ACK_SECONDS = 30


def bearer(token):
    return [("authorization", f"Bearer {token}")]


def value(obj):
    v = struct_pb2.Value()
    json_format.ParseDict(obj, v)
    return v


def struct(obj):
    s = struct_pb2.Struct()
    json_format.ParseDict(obj, s)
    return s


def tool_text(response):
    """The text parts of a CallTool result (an MCP CallToolResult as a Struct)."""
    result = json_format.MessageToDict(response.result)
    return "\n".join(c.get("text", "") for c in result.get("content", []))


def trailer(err, key):
    for k, v in err.trailing_metadata() or ():
        if k == key:
            return v
    return None


def worker_loop(agent, credential, stop, handled, errors):
    """Claims tasks as `credential` and completes each until `stop` is set."""
    md = bearer(credential)
    try:
        while not stop.is_set():
            claimed = agent.ClaimTask(
                agent_pb2.ClaimTaskRequest(wait_seconds=1, ack_seconds=ACK_SECONDS),
                metadata=md, timeout=CALL_TIMEOUT)
            if not claimed.HasField("task"):
                continue
            task = claimed.task
            # Acknowledge the task before working on it: an empty progress report naming the
            # attempt ends the lease. Refused (the lease ran out and the task went back, or it
            # ended), the task is not ours to run.
            try:
                agent.ReportProgress(
                    agent_pb2.ReportProgressRequest(task_id=task.task_id, attempt=task.attempt),
                    metadata=md, timeout=CALL_TIMEOUT)
            except grpc.RpcError as e:
                if e.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                    step("worker", f"{task.task_id} (attempt {task.attempt}) went back: {e.code().name}")
                    continue
                raise
            payload = json_format.MessageToDict(task.payload)
            if task.task_type == "word-count":
                result = {"words": len(str(payload.get("text", "")).split()), "by": "python"}
                agent.CompleteTask(
                    agent_pb2.CompleteTaskRequest(task_id=task.task_id, attempt=task.attempt,
                                                  result=value(result)),
                    metadata=md, timeout=CALL_TIMEOUT)
            else:
                agent.FailTask(
                    agent_pb2.FailTaskRequest(task_id=task.task_id, attempt=task.attempt,
                                              message=f"unknown task type {task.task_type}"),
                    metadata=md, timeout=CALL_TIMEOUT)
            handled.append(task.task_id)
            step("worker", f"claimed {task.task_id} (attempt {task.attempt}), acknowledged and answered it")
    except grpc.RpcError as e:  # reported by the main thread
        errors.append(e)


def main():
    admin = bearer(args.admin_token)
    with grpc.insecure_channel(args.address) as channel:
        fabric = fabric_pb2_grpc.FabricServiceStub(channel)
        agent_service = agent_pb2_grpc.AgentServiceStub(channel)
        tools = tool_pb2_grpc.ToolServiceStub(channel)
        approvals = approval_pb2_grpc.ApprovalServiceStub(channel)

        # 1. Spawn a remote agent: its credential is what the worker and tool calls use.
        spawned = fabric.SpawnAgent(
            fabric_pb2.SpawnAgentRequest(name="py-worker", model="demo-model", executor="remote"),
            metadata=admin, timeout=CALL_TIMEOUT).spawned
        agent_id, credential = spawned.agent.agent_id, spawned.credential
        expect(agent_id and credential, "SpawnAgent returned no agent id or credential")
        step("spawn", f"agent {agent_id} (py-worker)")

        # 2. Schedule a task addressed to it.
        text = "the quick brown fox jumps over the lazy dog"
        task = fabric.ScheduleTask(
            fabric_pb2.ScheduleTaskRequest(agent_id=agent_id, task_type="word-count",
                                           payload=value({"text": text})),
            metadata=admin, timeout=CALL_TIMEOUT).task
        step("schedule", f"task {task.task_id} ({fabric_types_pb2.TaskStatus.Name(task.status)})")

        # 3. The worker loop runs as the agent while the operator waits.
        stop, handled, errors = threading.Event(), [], []
        worker = threading.Thread(target=worker_loop,
                                  args=(agent_service, credential, stop, handled, errors))
        worker.start()
        try:
            # 4. Wait for the result.
            done = fabric.WaitTask(
                fabric_pb2.WaitTaskRequest(task_id=task.task_id,
                                           timeout=duration_pb2.Duration(seconds=CALL_TIMEOUT)),
                metadata=admin, timeout=CALL_TIMEOUT + 5).task
        finally:
            stop.set()
            worker.join()
        expect(not errors, f"the worker loop failed: {errors[0] if errors else ''}")
        status = fabric_types_pb2.TaskStatus.Name(done.status)
        result = json_format.MessageToDict(done.result)
        expect(status == "TASK_STATUS_COMPLETED", f"task ended {status}")
        expect(result.get("words") == len(text.split()), f"unexpected result {result}")
        expect(handled == [task.task_id], f"the worker handled {handled}")
        # A Value holds every number as a double: 9 comes back as 9.0.
        step("wait", f"task {done.task_id} {status}: {int(result['words'])} words, counted by {result['by']}")

        agent_md = bearer(credential)

        # 5. An allowed tool call.
        allowed = tools.CallTool(
            tool_pb2.CallToolRequest(name=args.allowed, arguments=struct({"message": "hello from python"})),
            metadata=agent_md, timeout=CALL_TIMEOUT)
        decision = tool_pb2.ToolCallDecision.Name(allowed.decision)
        expect(not allowed.is_error, f"{args.allowed} answered with an error")
        expect(decision == "TOOL_CALL_DECISION_ALLOW", f"{args.allowed}: decision {decision}")
        step("allowed", f"{args.allowed} -> {tool_text(allowed)!r} ({decision})")

        # 6. A denied tool call: PERMISSION_DENIED, the rule in the fabric-error-details trailer.
        try:
            tools.CallTool(tool_pb2.CallToolRequest(name=args.denied, arguments=struct({"a": 1, "b": 2})),
                           metadata=agent_md, timeout=CALL_TIMEOUT)
            raise Unexpected(f"{args.denied} was not denied")
        except grpc.RpcError as e:
            expect(e.code() == grpc.StatusCode.PERMISSION_DENIED, f"{args.denied}: {e.code()} {e.details()}")
            raw = trailer(e, "fabric-error-details")
            expect(raw is not None, "no fabric-error-details trailer")
            rule = json.loads(raw)
            step("denied", f"{args.denied} -> {e.code().name} {trailer(e, 'fabric-error-code')} "
                           f"policy={rule.get('policy')} rule={rule.get('rule')}: {e.details()}")

        # 7. A call under require_approval parks until the operator approves it.
        parked = tools.CallTool.future(
            tool_pb2.CallToolRequest(name=args.parked, arguments=struct({"message": args.parked_message})),
            metadata=agent_md, timeout=CALL_TIMEOUT)
        pending = []
        deadline = time.monotonic() + CALL_TIMEOUT
        while not pending:
            expect(time.monotonic() < deadline, "no approval became pending")
            if parked.done():  # exception() waits for the call: only ask once it is done
                failure = parked.exception()
                raise Unexpected(f"the parked call failed: {failure.code().name} {failure.details()}"
                                 if failure else "the call under require_approval did not park")
            pending = approvals.ListApprovals(
                approval_pb2.ListApprovalsRequest(status=approval_pb2.APPROVAL_STATUS_PENDING,
                                                  agent_id=agent_id),
                metadata=admin, timeout=CALL_TIMEOUT).approvals
            if not pending:
                time.sleep(0.1)
        expect(len(pending) == 1, f"{len(pending)} approvals pending")
        request = pending[0]
        step("pending", f"approval {request.id} for {request.tool} by {request.agent_id} "
                        f"(policy {request.policy}: {request.reason})")
        # The agent cannot approve its own call: ApprovalService takes the admin token only.
        try:
            approvals.Approve(approval_pb2.ApproveRequest(id=request.id), metadata=agent_md,
                              timeout=CALL_TIMEOUT)
            raise Unexpected("the agent approved its own call")
        except grpc.RpcError as e:
            expect(e.code() == grpc.StatusCode.PERMISSION_DENIED, f"self-approval: {e.code()} {e.details()}")
            step("self-approve", f"refused to the agent: {e.code().name}")
        approved = approvals.Approve(approval_pb2.ApproveRequest(id=request.id, reason="looks fine"),
                                     metadata=admin, timeout=CALL_TIMEOUT).approval
        expect(approved.status == approval_pb2.APPROVAL_STATUS_APPROVED, "the approval is not APPROVED")
        step("approve", f"approval {approved.id} APPROVED by {approved.approver}")
        completed = parked.result()
        decision = tool_pb2.ToolCallDecision.Name(completed.decision)
        expect(not completed.is_error, f"{args.parked} answered with an error")
        expect(decision == "TOOL_CALL_DECISION_APPROVED", f"{args.parked}: decision {decision}")
        step("parked", f"{args.parked} -> {tool_text(completed)!r} ({decision})")
    step("done", "every step went as expected")


if __name__ == "__main__":
    try:
        main()
    except Unexpected as e:
        print(f"unexpected: {e}", file=sys.stderr)
        sys.exit(1)
    except grpc.RpcError as e:
        print(f"unexpected: {e.code().name} {e.details()}", file=sys.stderr)
        sys.exit(1)
