/**
 * What a message dropped for its size was, told from its first and last characters only.
 *
 * An upstream's message longer than `maxMessageBytes` is never held whole (a stdio line, an SSE
 * event): the reader skips it to its end keeping its start and its last characters, and the
 * call waiting for it must still fail at once — alone, not with every other call on the
 * connection. The start names `method` and `id` when they come first (`{"jsonrpc":"2.0","id":7,
 * "result":…`, as the Python SDK writes it), the end names `id` when it comes last
 * (`…},"jsonrpc":"2.0","id":7}`: the TypeScript SDK's order). What neither names is `unknown`:
 * guessing could fail another agent's call. An upstream that names the wrong id gains nothing:
 * it could answer any call of its own with an error anyway.
 *
 * @module
 */

/** Characters of a dropped message's start that are read: its leading scalar members. */
export const DROPPED_HEAD_LENGTH = 1024;
/** Characters kept from the end of a dropped message: enough for `,"jsonrpc":"2.0","id":…}`. */
export const DROPPED_TAIL_LENGTH = 256;

/** What a dropped message was. */
export type DroppedMessage =
  | { kind: 'answer'; id: string | number; idText: string }
  | { kind: 'request'; method: string; id: string | number; idText: string }
  | { kind: 'notification'; method: string }
  | { kind: 'unknown' };

/**
 * Tells a dropped message from its start (`head`, at least its first characters) and its last
 * characters (`tail`). An answer must lead with `result` or `error` (after scalar members such
 * as `jsonrpc` and `id`); a request or notification with `method`.
 */
export function droppedMessage(head: string, tail: string): DroppedMessage {
  const lead = leadingMembers(head);
  const end = lead.id === undefined ? trailingId(tail) : undefined;
  const id = lead.id ?? end?.id;
  const idText = lead.idText ?? end?.idText ?? '';
  if (lead.method !== undefined) {
    const method = lead.method.slice(0, 100);
    return id === undefined
      ? { kind: 'notification', method }
      : { kind: 'request', method, id, idText };
  }
  if (id !== undefined && (lead.first === 'result' || lead.first === 'error')) {
    return { kind: 'answer', id, idText };
  }
  return { kind: 'unknown' };
}

/** The error answer that stands in for a dropped answer to call `id`. */
export function droppedAnswer(
  id: string | number,
  bound: string,
): { jsonrpc: '2.0'; id: string | number; error: { code: number; message: string } } {
  return {
    jsonrpc: '2.0',
    id,
    error: {
      code: -32603,
      message: `the upstream's answer was longer than ${bound} (maxMessageBytes) and was dropped`,
    },
  };
}

/** One top-level member at the start of a JSON object: its name and a scalar or `{`/`[`. */
const LEADING_MEMBER =
  /\s*"([A-Za-z_$]{1,32})"\s*:\s*("(?:[^"\\\n]|\\.){0,200}"|-?\d{1,20}|null|true|false|[{[])\s*,?/y;

/** What the start of an over-long line says about the message. */
interface LeadingMembers {
  /** `method` when it leads with one (a request or notification). */
  method?: string;
  /** The `id` when it comes before the first object or array member. */
  id?: string | number;
  idText?: string;
  /** Name of the first member whose value is an object or array (`result`, `params` …). */
  first?: string;
}

/**
 * Reads the scalar members a JSON object starts with, up to its first object or array member,
 * from at most the first 1,024 characters of `head`. Only top-level members can come before
 * the first nested value, so a name found here is the message's own, never one inside its result.
 */
function leadingMembers(head: string): LeadingMembers {
  const text = head.length > 1024 ? head.slice(0, 1024) : head;
  const open = /^\s*\{/.exec(text);
  const found: LeadingMembers = {};
  if (open === null) return found;
  LEADING_MEMBER.lastIndex = open[0].length;
  for (let m = LEADING_MEMBER.exec(text); m !== null; m = LEADING_MEMBER.exec(text)) {
    const [, name, raw] = m as unknown as [string, string, string];
    if (raw === '{' || raw === '[') {
      found.first = name;
      break;
    }
    let value: unknown;
    try {
      value = JSON.parse(raw);
    } catch {
      break;
    }
    if (name === 'method' && typeof value === 'string') found.method = value;
    if (name === 'id' && (typeof value === 'string' || typeof value === 'number')) {
      found.id = value;
      found.idText = raw.slice(0, 100);
    }
  }
  return found;
}

/**
 * The last member of a JSON object when it is `"id"` with a number or string, and ends the
 * text (`…,"id":7}`). In valid JSON this can only be the object's own member: the digits or
 * string before the final `}` are its last value, and a `"` after `,` is not escaped, so it
 * opens the key `"id"` (a quote closing a string there would leave `id` bare).
 */
export function trailingId(tail: string): { id: string | number; idText: string } | undefined {
  const m = TRAILING_ID.exec(tail);
  if (m === null) return undefined;
  let id: unknown;
  try {
    id = JSON.parse(m[1]!);
  } catch {
    return undefined;
  }
  return typeof id === 'number' || typeof id === 'string'
    ? { id, idText: m[1]!.slice(0, 100) }
    : undefined;
}

const TRAILING_ID = /,\s*"id"\s*:\s*(-?\d{1,20}|"(?:[^"\\\n]|\\.){0,200}")\s*\}\s*$/;
