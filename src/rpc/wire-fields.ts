/**
 * A bound on a protobuf request's width, checked on its bytes before it is decoded.
 *
 * protobuf-es decodes a message into objects synchronously: a 4 MiB `CompleteTaskRequest` whose
 * result is a `ListValue` of a million nulls is a million `Value` objects built in one turn of
 * the event loop (about a second, and hundreds of MB of heap) before any check of the decoded
 * message can refuse it. The recursion limit bounds depth only. {@link countFieldsOver} walks
 * the wire format with the message's descriptor instead — varints and lengths, no allocation —
 * counting every field it meets, nested messages included, and stops as soon as the bound is
 * passed.
 *
 * @module
 */
import type { DescField, DescMessage } from '@bufbuild/protobuf';

/** Field numbers of a message to the message type of each message-valued field. */
const NESTED = new WeakMap<DescMessage, ReadonlyMap<number, DescMessage | MapEntry>>();

/** A map field's entry on the wire: key = 1, value = 2 (a message when `value` is set). */
class MapEntry {
  constructor(readonly value: DescMessage | undefined) {}
}

function nestedOf(schema: DescMessage): ReadonlyMap<number, DescMessage | MapEntry> {
  let m = NESTED.get(schema);
  if (m === undefined) {
    const built = new Map<number, DescMessage | MapEntry>();
    for (const f of schema.fields) {
      const t = nestedType(f);
      if (t !== undefined) built.set(f.number, t);
    }
    NESTED.set(schema, (m = built));
  }
  return m;
}

function nestedType(f: DescField): DescMessage | MapEntry | undefined {
  switch (f.fieldKind) {
    case 'message':
      return f.message;
    case 'list':
      return f.listKind === 'message' ? f.message : undefined;
    case 'map':
      return new MapEntry(f.mapKind === 'message' ? f.message : undefined);
    default:
      return undefined;
  }
}

/** State of one walk: the bytes and how many fields are left before the bound is passed. */
interface Walk {
  readonly bytes: Uint8Array;
  left: number;
}

/**
 * True when `bytes`, read as a `schema` message, holds more than `max` fields in all (each
 * field occurrence counts once, at any depth; a packed repeated scalar counts once). Malformed
 * bytes, groups and nesting deeper than `maxDepth` end the walk with `false`: the decoder that
 * runs next refuses them with its own error.
 */
export function countFieldsOver(
  schema: DescMessage,
  bytes: Uint8Array,
  max: number,
  maxDepth: number,
): boolean {
  const w: Walk = { bytes, left: max };
  return walkMessage(w, nestedOf(schema), 0, bytes.length, 0, maxDepth) === OVER;
}

const OVER = 1;
const DONE = 0;
const STOP = 2; // malformed or too deep: left to the decoder

function walkMessage(
  w: Walk,
  nested: ReadonlyMap<number, DescMessage | MapEntry> | undefined,
  start: number,
  end: number,
  depth: number,
  maxDepth: number,
): number {
  if (depth > maxDepth) return STOP;
  const b = w.bytes;
  let i = start;
  while (i < end) {
    // The tag: a varint of at most 5 bytes.
    let tag = 0;
    let shift = 0;
    for (;;) {
      if (i >= end || shift > 28) return STOP;
      const c = b[i++]!;
      tag += (c & 0x7f) * 2 ** shift;
      if (c < 0x80) break;
      shift += 7;
    }
    if (--w.left < 0) return OVER;
    const wire = tag % 8;
    const number = Math.floor(tag / 8);
    switch (wire) {
      case 0: // varint
        for (let n = 0; ; n++) {
          if (i >= end || n >= 10) return STOP;
          if (b[i++]! < 0x80) break;
        }
        break;
      case 1: // fixed64
        i += 8;
        break;
      case 5: // fixed32
        i += 4;
        break;
      case 2: {
        let len = 0;
        shift = 0;
        for (;;) {
          if (i >= end || shift > 28) return STOP;
          const c = b[i++]!;
          len += (c & 0x7f) * 2 ** shift;
          if (c < 0x80) break;
          shift += 7;
        }
        const to = i + len;
        if (to > end) return STOP;
        const t = nested?.get(number);
        if (t !== undefined) {
          const inner =
            t instanceof MapEntry
              ? t.value === undefined
                ? undefined
                : entryTable(t.value)
              : nestedOf(t);
          const r = walkMessage(w, inner, i, to, depth + 1, maxDepth);
          if (r !== DONE) return r;
        }
        i = to;
        break;
      }
      default: // groups (3, 4) and invalid wire types
        return STOP;
    }
  }
  return i === end ? DONE : STOP;
}

/** The nested-type table of a map entry whose value (field 2) is a `value` message. */
const ENTRIES = new WeakMap<DescMessage, ReadonlyMap<number, DescMessage>>();
function entryTable(value: DescMessage): ReadonlyMap<number, DescMessage> {
  let m = ENTRIES.get(value);
  if (m === undefined) ENTRIES.set(value, (m = new Map([[2, value]])));
  return m;
}
