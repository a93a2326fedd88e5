/**
 * The gRPC ingress of the tool gateway (proto/fabric/v1/tool.proto): list and call tools as the
 * calling agent, for agents in any language. A call runs through the gateway's one tool-call
 * pipeline (`ToolGateway.callToolAs`), the same as an MCP `tools/call`: the same input bounds,
 * policy decision, approval parking, budget reservation and settlement, and audit line. Only
 * the mapping differs: a refusal is a status with its facts in the `fabric-error-details`
 * trailer (rpc-call.ts), not an `isError` result.
 *
 * The RPC's cancellation and deadline abort the call wherever it is: a call parked for a human
 * approval stops waiting (no reservation was made yet), a call waiting for budget leaves the
 * queue, a forwarded call is cancelled upstream (and charged as over MCP) and keeps its slot of
 * the agent's in-flight bound until the upstream is done with it (`ToolCallRequest.holdSlot`).
 *
 * @module
 */
import { create, type JsonObject } from '@bufbuild/protobuf';
import { BinaryReader, WireType } from '@bufbuild/protobuf/wire';
import { ErrorCode, McpError, type Tool as McpTool } from '@modelcontextprotocol/sdk/types.js';
import {
  ApprovalLimitError,
  BudgetExceededError,
  FabricError,
  GatewayUnavailableError,
  InvalidArgumentError,
  WaitTimeoutError,
  type ErrorKind,
} from '../errors.js';
import type { AgentFabric } from '../fabric.js';
import type { AgentIdentity, ToolCallRefused } from '../gateway/backend.js';
import type { ToolGateway } from '../gateway/gateway.js';
import { messageOf } from '../gateway/map-error.js';
import { rawResultJson } from '../gateway/raw-results.js';
import { describeDecision } from '../gateway/tool-call-pipeline.js';
import {
  CallToolResponseSchema,
  ListToolsResponseSchema,
  ResultEncoding,
  ToolCallDecision,
  ToolSchema,
  ToolService,
  type CallToolRequest,
  type Tool,
} from '../gen/fabric/v1/tool_pb.js';
import { grpcDefinition } from './grpc-definition.js';
import type { ServiceImplementation } from './rpc-call.js';

/** The grpc-js definition of `fabric.v1.ToolService` (for clients in this process too). */
export const TOOL_SERVICE_DEFINITION = grpcDefinition(ToolService);

/**
 * `fabric.v1.ToolService` over `gateway`; every method acts as the calling agent. Without a
 * gateway (a fabric served on its own) every method fails with UNAVAILABLE
 * (`FABRIC_ERR_GATEWAY_UNAVAILABLE`).
 */
export function toolService(
  fabric: AgentFabric,
  gateway: ToolGateway | undefined,
): ServiceImplementation<typeof ToolService> {
  const need = (): ToolGateway => {
    if (gateway === undefined) throw new GatewayUnavailableError('the gRPC ToolService');
    return gateway;
  };
  return {
    service: ToolService,
    caller: 'agent',
    unary: {
      listTools: async ({ id }) => {
        const tools = need().listToolsFor(identityOf(fabric, id));
        return create(ListToolsResponseSchema, { tools: tools.map(toolMessage) });
      },
      callTool: async ({ id }, req, signal, context) => {
        const gw = need();
        const identity = identityOf(fabric, id);
        let args: Record<string, unknown> | undefined;
        try {
          args = argumentsOf(req);
        } catch (error) {
          // Refused before the pipeline (never reaching policy or an upstream), but audited as
          // a malformed MCP tools/call is.
          gw.invalidToolCallAs(identity, req.name, sentArguments(req));
          throw error;
        }
        const sent = await gw.callToolAs({
          identity,
          name: req.name,
          arguments: args,
          signal,
          traceContext: gw.traced ? context?.traceContext : undefined,
          // Given up after it was sent (cancelled, past its deadline), the call keeps a slot of
          // the agent's in-flight bound until the upstream is done with it.
          holdSlot: context?.holdSlot,
        });
        // A tool policy hides from the agent is refused as one that does not exist (NOT_FOUND).
        const outcome = gw.outcomeFor(identity, req.name, sent);
        switch (outcome.kind) {
          case 'refused':
            throw refusalError(outcome.refusal);
          case 'error':
            throw callError(outcome.error);
          case 'result': {
            const { result } = outcome;
            const rule = describeDecision(outcome.decision).rule ?? '';
            const asJson = req.resultEncoding === ResultEncoding.JSON;
            return create(CallToolResponseSchema, {
              ...(asJson
                ? { resultJson: Buffer.from(rawResultJson(result) ?? JSON.stringify(result)) }
                : { result: toStruct(result) }),
              isError: result.isError === true,
              decision: outcome.approved ? ToolCallDecision.APPROVED : ToolCallDecision.ALLOW,
              rule,
            });
          }
        }
      },
    },
    malformed: {
      // A request the door could not decode as a CallToolRequest (a Struct nested past the
      // decoder's limit; over the /api/ door, `arguments` that are no object …) gets the
      // audit line of a malformed call too, with what can be read of its name and arguments.
      callTool: (caller, sent) => {
        if (gateway === undefined || caller.kind !== 'agent') return;
        const { name, args } =
          'bytes' in sent
            ? readCallBytes(sent.bytes)
            : 'json' in sent
              ? readCallJson(sent.json)
              : { name: undefined, args: undefined };
        gateway.invalidToolCallAs(identityOf(fabric, caller.id), name, args);
      },
    },
  };
}

/**
 * The name and arguments of a `CallToolRequest` the decoder refused, read field by field from
 * its top level (nothing nested is decoded): `name` when field 1 is one, `arguments_json` read
 * as {@link sentArguments} does; a Struct that could not be decoded is not read (`undefined`).
 */
function readCallBytes(bytes: Uint8Array): { name: unknown; args: unknown } {
  let name: unknown;
  let args: unknown;
  try {
    const reader = new BinaryReader(bytes);
    while (reader.pos < reader.len) {
      const [no, type] = reader.tag();
      if (no === 1 && type === WireType.LengthDelimited) name = reader.string();
      else if (no === 3 && type === WireType.LengthDelimited) {
        args = jsonArguments(reader.bytes());
      } else reader.skip(type);
    }
  } catch {
    // Read what came before the damage.
  }
  return { name, args };
}

/**
 * The name and arguments of an `/api/` door body that is no `CallToolRequest` in JSON: `name`,
 * and `arguments` as sent, or `argumentsJson` (base64) read as {@link sentArguments} does.
 */
function readCallJson(json: unknown): { name: unknown; args: unknown } {
  if (typeof json !== 'object' || json === null) return { name: undefined, args: json };
  const body = json as { name?: unknown; arguments?: unknown; argumentsJson?: unknown };
  if (body.arguments !== undefined || typeof body.argumentsJson !== 'string') {
    return { name: body.name, args: body.arguments ?? body.argumentsJson };
  }
  return { name: body.name, args: jsonArguments(Buffer.from(body.argumentsJson, 'base64')) };
}

/**
 * The calling agent as the gateway sees an MCP session's agent: its pool and labels from its
 * record (policy reads them from there too).
 */
function identityOf(fabric: AgentFabric, agentId: string): AgentIdentity {
  const rec = fabric.lifecycle.peek(agentId);
  return { kind: 'agent', agentId, poolId: rec?.poolId, labels: rec?.labels ?? {} };
}

function toolMessage(tool: McpTool): Tool {
  return create(ToolSchema, {
    name: tool.name,
    title: tool.title ?? '',
    description: tool.description ?? '',
    inputSchema: toStruct(tool.inputSchema),
    toolJson: Buffer.from(JSON.stringify(tool)),
  });
}

/**
 * A JSON object for a `google.protobuf.Struct` field (protobuf-es holds a Struct as its JSON):
 * through JSON, so `undefined` members drop out as they would over MCP.
 */
function toStruct(value: object): JsonObject {
  return JSON.parse(JSON.stringify(value)) as JsonObject;
}

/**
 * The call's arguments: the Struct's JSON, or `arguments_json` parsed; `undefined` when neither
 * is set.
 * @throws InvalidArgumentError naming `arguments_json` for bytes that are not UTF-8 JSON of an
 *   object or hold a number JSON.parse would change, or `arguments` for a Struct holding NaN
 *   or ±Infinity.
 */
export function argumentsOf(req: CallToolRequest): Record<string, unknown> | undefined {
  switch (req.args.case) {
    case undefined:
      return undefined;
    case 'arguments':
      return finiteStruct(req.args.value);
    case 'argumentsJson':
      return parseArgumentsJson(req.args.value);
  }
}

/**
 * The arguments of a call {@link argumentsOf} refused, for its audit digest: the Struct's JSON;
 * `arguments_json` parsed when it is JSON (the digest an MCP call of that value gets), else its
 * text (bytes that are not UTF-8 read with U+FFFD for them).
 */
function sentArguments(req: CallToolRequest): unknown {
  return req.args.case === 'argumentsJson' ? jsonArguments(req.args.value) : req.args.value;
}

/** `arguments_json` as {@link sentArguments} reads it. */
function jsonArguments(bytes: Uint8Array): unknown {
  const text = LENIENT_UTF8.decode(bytes);
  try {
    return JSON.parse(text) as unknown;
  } catch {
    return text;
  }
}

/**
 * `value`, checked for numbers that are no JSON (NaN, ±Infinity decode from a Struct and would
 * reach the tool as `null`). Bounded: the decoder's recursion limit caps the depth and the
 * message size the node count; the walk uses a stack, not recursion.
 */
function finiteStruct(value: JsonObject): JsonObject {
  const stack: unknown[] = [value];
  while (stack.length > 0) {
    const v = stack.pop();
    if (typeof v === 'number' && !Number.isFinite(v)) {
      throw new InvalidArgumentError('arguments', `holds ${String(v)}, which is not a JSON number`);
    }
    if (typeof v === 'object' && v !== null) for (const x of Object.values(v)) stack.push(x);
  }
  return value;
}

const UTF8 = new TextDecoder('utf-8', { fatal: true });
const LENIENT_UTF8 = new TextDecoder('utf-8');
/** String literals and numbers of JSON text (strings first, so digits inside them are skipped). */
const JSON_TOKEN = /"(?:[^"\\]|\\.)*"|-?\d+(?:\.\d+)?(?:[eE][+-]?\d+)?/g;

/** `arguments_json` as an object; see {@link argumentsOf}. */
function parseArgumentsJson(bytes: Uint8Array): Record<string, unknown> {
  let text: string;
  let value: unknown;
  try {
    text = UTF8.decode(bytes);
    value = JSON.parse(text);
  } catch (error) {
    throw new InvalidArgumentError('arguments_json', `is not UTF-8 JSON: ${messageOf(error)}`, {
      cause: error,
    });
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw new InvalidArgumentError('arguments_json', 'must be a JSON object');
  }
  // A number JSON.parse would change is refused, never forwarded changed (a linear scan: no
  // recursion however deep the text nests). Not parsed losslessly (json-bytes.ts) as payloads
  // are: the upstream leg is MCP JSON-RPC written with JSON.stringify by the SDK's transports,
  // which on Node 20 cannot write an integer beyond 2^53 exactly (a bigint throws there).
  for (const [token] of text.matchAll(JSON_TOKEN)) {
    if (token.startsWith('"')) continue;
    const n = Number(token);
    if (!Number.isFinite(n) || (Number.isInteger(n) && !Number.isSafeInteger(n))) {
      throw new InvalidArgumentError(
        'arguments_json',
        `holds the number ${token.slice(0, 40)}, which the sidecar cannot carry exactly (integers up to ±(2^53-1)); send it as a string`,
      );
    }
  }
  return value as Record<string, unknown>;
}

/** A refusal as the catalog error it is (policy, approval, budget, a leaving agent). */
function refusalError(refusal: ToolCallRefused): FabricError {
  if (refusal.error instanceof FabricError) return refusal.error;
  // A backend that answers refusals without the error: rebuild it from the code.
  return new FabricError(refusal.code, kindOfRefusal(refusal.code), refusal.reason, {
    ...refusal.details,
    ...(refusal.retryAt === undefined ? {} : { retryAt: refusal.retryAt }),
  });
}

function kindOfRefusal(code: string): ErrorKind {
  switch (code) {
    case BudgetExceededError.code:
    case ApprovalLimitError.code:
      return 'resource_exhausted';
    case WaitTimeoutError.code:
      return 'deadline_exceeded';
    default:
      return 'permission_denied';
  }
}

/**
 * A failed call's error for the wire: catalog errors as they are; an upstream's own rejection of
 * the arguments (JSON-RPC invalid params) is INVALID_ARGUMENT; anything else INTERNAL.
 */
function callError(error: unknown): unknown {
  if (error instanceof McpError && error.code === ErrorCode.InvalidParams) {
    return new InvalidArgumentError('arguments', `were rejected by the tool: ${error.message}`, {
      cause: error,
    });
  }
  return error;
}
