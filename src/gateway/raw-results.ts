/**
 * Forwarding an upstream's tool result without serializing it again.
 *
 * A result the gateway passes on unchanged was already JSON once: in the upstream's response
 * line. When that line has the SDK's layout, `{"result":R,"jsonrpc":"2.0","id":N}`, the agent's
 * response is the same text with N replaced by the agent's request id, and R's byte length is
 * the result's size for the token estimate — no `JSON.stringify` of a result that may be
 * megabytes (a file read). Replacing the value of the line's *last* member is exact: parsing the
 * new line gives the parsed response with only the id changed, whatever the line holds before it.
 *
 * @module
 */
import { Buffer } from 'node:buffer';

const PREFIX = '{"result":';
const ID_MEMBER = ',"jsonrpc":"2.0","id":';

interface RawResult {
  /** The upstream's response line. */
  readonly line: string;
  /** Where the upstream's id value starts (the line ends with the id and `}`). */
  readonly idAt: number;
  /** The result this line is of: a copy made by spreading it carries the key but is not it. */
  readonly owner: object;
}

/**
 * Where the line is kept: a symbol-keyed property of the parsed result (invisible to JSON, zod
 * and `for…in`). A WeakMap did the same at ~1 µs a call in ephemeron write barriers and GC work.
 */
const RAW = Symbol('agent-fabric.rawResult');

type WithRaw = { [RAW]?: RawResult };

function rawOf(result: object): RawResult | undefined {
  const r = (result as WithRaw)[RAW];
  return r !== undefined && r.owner === result ? r : undefined;
}

/**
 * Remembers the upstream line `result` was parsed from, when it has the SDK's layout with the
 * numeric id `id` last; otherwise nothing is remembered and the result is serialized as usual.
 * Only call this for a response whose parsed keys are exactly `result`, `jsonrpc` and `id`.
 */
export function rememberRawResult(result: object, line: string, id: number): void {
  if (!line.startsWith(PREFIX) || !Object.isExtensible(result)) return;
  const idAt = idStart(line, id);
  if (idAt === -1) return;
  (result as WithRaw)[RAW] = { line, idAt, owner: result };
}

/**
 * Where `id` starts in `line` when the line ends with `,"jsonrpc":"2.0","id":<id>}` (the id as
 * `String(id)` writes it), else -1. Read from the end, digit by digit: building that tail as a
 * string and comparing with `endsWith` cost more than the rest of remembering a result.
 */
function idStart(line: string, id: number): number {
  const end = line.length - 1;
  if (line.charCodeAt(end) !== 0x7d /* } */) return -1;
  if (!Number.isSafeInteger(id) || id < 0) {
    const tail = ID_MEMBER + String(id) + '}';
    return line.endsWith(tail) ? line.length - tail.length + ID_MEMBER.length : -1;
  }
  // The digits of `id`, last first: exactly String(id), which never has a leading zero.
  let at = end;
  let rest = id;
  do {
    at--;
    if (line.charCodeAt(at) !== 0x30 + (rest % 10)) return -1;
    rest = Math.floor(rest / 10);
  } while (rest > 0);
  const member = at - ID_MEMBER.length;
  return member >= PREFIX.length && line.startsWith(ID_MEMBER, member) ? at : -1;
}

/**
 * The JSON-RPC response line carrying `result` under `id`, if its upstream text is known. A
 * numeric id is written with `String` — for a finite number the same text `JSON.stringify`
 * makes, without its generic serializer (a visible part of a forwarded response).
 */
export function rawResponseLine(result: object, id: string | number): string | undefined {
  const r = rawOf(result);
  if (r === undefined) return undefined;
  const idJson = typeof id === 'number' && Number.isFinite(id) ? `${id}` : JSON.stringify(id);
  return `${r.line.slice(0, r.idAt)}${idJson}}`;
}

/** A number in exponent notation (`1e20`), which JavaScript's JSON may write longer. */
const EXPONENT = /[0-9][eE]/;

/**
 * For a result that is sent as JSON written anew rather than as its upstream's text (an MCP
 * task's, kept and written by `tasks/result`; a resource read's, prompt get's or completion's,
 * sent by the SDK): forgets that text when writing it again can make it longer — it holds a
 * number in exponent notation (`1e20` is written `100000000000000000000`) — so that the size
 * is measured on the JSON ({@link rawResultBytes} then knows none). Otherwise the upstream's
 * text is kept: JSON written again can only be shorter (no whitespace, fewer escapes, the
 * shortest digits), so its size bounds what is sent. Scans the text once; no serialization.
 */
export function forgetLongerRawResult(result: object): void {
  const r = rawOf(result);
  if (r !== undefined && EXPONENT.test(r.line)) delete (result as WithRaw)[RAW];
}

/** UTF-8 bytes of `result`'s JSON as the upstream wrote it, if known. */
export function rawResultBytes(result: object): number | undefined {
  const json = rawResultJson(result);
  return json === undefined ? undefined : Buffer.byteLength(json, 'utf8');
}

/** `result`'s JSON text as the upstream wrote it (its numbers exactly as written), if known. */
export function rawResultJson(result: object): string | undefined {
  const r = rawOf(result);
  return r === undefined ? undefined : r.line.slice(PREFIX.length, r.idAt - ID_MEMBER.length);
}

/** Longest line {@link plainTextResponse} reads; longer ones are parsed (JSON.parse is faster). */
export const PLAIN_TEXT_MAX_LINE = 1024;

/** A JSON string literal (a RegExp source): no raw `"`, `\\` or control character; only JSON's escapes. */
export const JSON_STRING = String.raw`"(?:[^"\\\u0000-\u001f]|\\["\\/bfnrt]|\\u[0-9a-fA-F]{4})*"`;

/**
 * The SDK's layout of a response whose result is one text block, with or without `isError`.
 * Every key and separator is fixed, so a line it matches is valid JSON that parses to exactly
 * `{ result: { content: [{ type: 'text', text }], isError? }, jsonrpc: '2.0', id }` — no other
 * key, no duplicate, no whitespace. The string's alternatives are disjoint and single-unit, so
 * a failing match backtracks linearly (and lines are bounded by {@link PLAIN_TEXT_MAX_LINE}).
 */
const PLAIN_TEXT_RESPONSE = new RegExp(
  String.raw`^\{"result":\{"content":\[\{"type":"text","text":(${JSON_STRING})\}\]` +
    String.raw`(?:,"isError":(true|false))?\},"jsonrpc":"2\.0","id":(0|[1-9][0-9]{0,15})\}$`,
);

/**
 * Reads an upstream response line of the layout the SDK writes for a one-text-block tool result
 * without `JSON.parse`: its id and a result deep-equal to what `JSON.parse(line).result` gives
 * (same keys in the same order, the text decoded by JSON's own rules). Undefined for any other
 * line, which is then parsed as usual. On short lines this is several times cheaper than the
 * generic parse, which builds and internalizes every key.
 *
 * @example
 * plainTextResponse('{"result":{"content":[{"type":"text","text":"hi"}]},"jsonrpc":"2.0","id":3}');
 * // { id: 3, result: { content: [{ type: 'text', text: 'hi' }] } }
 */
export function plainTextResponse(
  line: string,
):
  | { id: number; result: { content: { type: 'text'; text: string }[]; isError?: boolean } }
  | undefined {
  if (line.length > PLAIN_TEXT_MAX_LINE) return undefined;
  const m = PLAIN_TEXT_RESPONSE.exec(line);
  if (m === null) return undefined;
  // The id's digits (at most 16, no leading zero), read as Number would: exact below 2^53,
  // and a larger value cannot round down to a safe integer.
  const digits = m[3]!;
  let id = 0;
  for (let i = 0; i < digits.length; i++) id = id * 10 + (digits.charCodeAt(i) - 0x30);
  if (!Number.isSafeInteger(id)) return undefined;
  const literal = m[1]!;
  let text: string;
  if (literal.indexOf('\\') === -1) text = literal.slice(1, -1);
  else {
    try {
      text = JSON.parse(literal) as string; // escapes: JSON's own decoding
    } catch {
      return undefined; // cannot happen for a matched literal; parsed as usual if it did
    }
  }
  const content = [{ type: 'text' as const, text }];
  const isError = m[2];
  const result: WithRaw & { content: typeof content; isError?: boolean } =
    isError === undefined ? { content } : { content, isError: isError === 'true' };
  // What rememberRawResult would note: the line has the SDK layout with the id last.
  result[RAW] = { line, idAt: line.length - 1 - digits.length, owner: result };
  return { id, result };
}
