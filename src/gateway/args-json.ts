/**
 * A tool call's arguments serialized once: the text that goes upstream is the text the audit
 * log digests.
 *
 * The audit record's `argsDigest` is the SHA-256 of `JSON.stringify(args)`, and a `tools/call`
 * forwarded over stdio carries the same `JSON.stringify(args)` inside its request line. Both
 * serialized the arguments afresh; the first one now remembers its text on the arguments object
 * and the second one reuses it. What the upstream gets stays the serialization of the parsed
 * object policy decided on (never the agent's raw bytes: a duplicate key or an escape could
 * make a raw line read differently upstream), and the digest stays defined as before — the
 * text is the same `JSON.stringify` of the same object, made earlier.
 *
 * @module
 */

interface ArgsText {
  readonly json: string;
  /** The object this text is of: a copy made by spreading it carries the key but is not it. */
  readonly owner: object;
}

/**
 * Where the text is kept: a symbol-keyed property of the arguments (invisible to JSON, `for…in`
 * and `Object.keys`), as raw-results.ts keeps a result's upstream line.
 */
const TEXT = Symbol('agent-fabric.argumentsJson');

type WithText = { [TEXT]?: ArgsText };

/**
 * `JSON.stringify(args)`, made once per object: a second call returns the first one's text
 * (callers must not change `args` in between; the audit log already requires it). Objects that
 * cannot take a property (frozen) are serialized each time.
 *
 * @throws whatever `JSON.stringify` throws (a BigInt, a cycle, nesting too deep).
 * @example
 * const args = { path: '/tmp/a' };
 * argumentsJson(args); // '{"path":"/tmp/a"}', remembered
 */
export function argumentsJson(args: object): string {
  const known = (args as WithText)[TEXT];
  if (known !== undefined && known.owner === args) return known.json;
  const json = JSON.stringify(args);
  if (Object.isExtensible(args)) (args as WithText)[TEXT] = { json, owner: args };
  return json;
}
