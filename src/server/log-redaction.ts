/**
 * Keeps credentials out of the sidecar's log. Every entry passes through {@link LogRedactor}
 * before it is written, whatever wrote it (the gateway, an upstream's stderr, start-up):
 *
 * - a value under a secret-like key (`authorization`, `token`, `password`, `apiKey`, …) at any
 *   depth is replaced whole — a string, an array, an object alike (`{ password: ['x'] }`,
 *   `{ credentials: { user, pass } }`); only numbers and booleans (`tokens: 5` is a count,
 *   `apiKeySet: true` a flag) and `null` are kept;
 * - in every string (the message included): the secrets the sidecar knows (admin token, agent
 *   credentials, upstream env and header values under secret-like names, what stands under such
 *   names in plugins' options, the values of secret-named flags) and what looks like one —
 *   `Bearer <x>`, the fabric's own token formats (`afk_…`, `afa_…`, `fab_admin_…`),
 *   `--api-key=<x>` style arguments, `SECRET_TOKEN=<x>` style assignments and `?token=<x>` query
 *   parameters.
 *
 * Redaction is by pattern, so it can over-redact; it never under-redacts a secret it was given.
 *
 * @module
 */

/** What replaces a secret. */
export const REDACTED = '[redacted]';

/** Names whose values are secrets. */
const SECRET_NAME =
  /authorization|token|secret|passw(?:or)?d|credential|api[-_]?key|cookie|private[-_]?key|access[-_]?key/i;

/** Secrets shorter than this are not searched for in text (they would match everywhere). */
const MIN_SECRET_LENGTH = 8;

/** A secret-like part of an argument, header, variable or query parameter name. */
const SECRET_PART = /token|secret|passw(?:or)?d|credential|api[-_]?key|private[-_]?key/i;
/** The same for query parameters, where a bare `key` counts too. */
const SECRET_QUERY_PART = /token|key|secret|passw(?:or)?d/i;
/** Already redacted, or a number (`tokens: 5` is a count, not a secret). */
const KEPT_VALUE = /^(?:\[redacted\]|\d+(?:\.\d+)?\b)/;

/** Each whole name (`--api-key`, `GITHUB_TOKEN`, `x-auth-token`), never a part of one. */
const NAME = /(?<![A-Za-z0-9_-])[A-Za-z0-9_-]+/g;
/** After a flag: `=x` or ` x` (`--token x`). */
const FLAG_VALUE = /(=|\s+)([^\s"',]+)/y;
/** After any name: `=x`, `: x`, `": "x` (JSON). */
const ASSIGNED_VALUE = /("?\s*[:=]\s*"?)([^\s"',;&]+)/y;
/** A query parameter's name and `=` (`?token=`, `&access_token=`). */
const QUERY_NAME = /[?&]([A-Za-z0-9_]*)=/g;
const QUERY_VALUE = /[^&\s"']+/y;

/**
 * Patterns that need no look at what they matched. The name-and-value forms below are scanned
 * instead of matched with one regular expression: the obvious `[\w-]*(?:token|…)[\w-]*=\S+`
 * backtracks over every split of a long name and starts again at each of its characters —
 * cubic in a name of repeated `-token`, which an agent can get into the log (a 12 KB one held
 * the event loop for 9 s). The scans take each whole name once, so they run in linear time.
 */
const PATTERNS: readonly [RegExp, string][] = [
  [/\b(Bearer|Basic)\s+[^\s"',;]+/gi, `$1 ${REDACTED}`],
  [/\b(?:af[ka]|fab_admin)_[A-Za-z0-9_-]{8,}/g, REDACTED],
];

/** `text` with the value after each name `secret(name)` accepts replaced (see the callers). */
function redactValues(
  text: string,
  names: RegExp,
  secret: (name: string) => boolean,
  valueAfter: (name: string, at: number) => { start: number; end: number } | undefined,
): string {
  let out = '';
  let copied = 0;
  names.lastIndex = 0;
  for (let m = names.exec(text); m !== null; m = names.exec(text)) {
    const end = m.index + m[0].length;
    if (!secret(m[1] ?? m[0])) continue;
    const v = valueAfter(m[0], end);
    if (v === undefined) continue;
    out += text.slice(copied, v.start) + REDACTED;
    copied = v.end;
    names.lastIndex = v.end;
  }
  return copied === 0 ? text : out + text.slice(copied);
}

/** The value a sticky `pattern` finds at `at` (its last group), unless `kept` says keep it. */
function stickyValue(
  pattern: RegExp,
  text: string,
  at: number,
  kept: (value: string) => boolean,
): { start: number; end: number } | undefined {
  pattern.lastIndex = at;
  const m = pattern.exec(text);
  if (m === null) return undefined;
  const value = m[m.length - 1]!;
  if (kept(value)) return undefined;
  const end = at + m[0].length;
  return { start: end - value.length, end };
}

const startsRedacted = (value: string): boolean => value.startsWith(REDACTED);
const keptValue = (value: string): boolean => KEPT_VALUE.test(value);

/** `--api-key=x`, `--token x`, `GITHUB_TOKEN=x`, `"apiKey": "x"`, `x-auth-token: x`. */
function redactNamed(text: string): string {
  return redactValues(
    text,
    NAME,
    (name) => SECRET_PART.test(name),
    (name, at) =>
      (name.startsWith('-') ? stickyValue(FLAG_VALUE, text, at, startsRedacted) : undefined) ??
      stickyValue(ASSIGNED_VALUE, text, at, keptValue),
  );
}

/** `?token=x&access_token=x` */
function redactQuery(text: string): string {
  return redactValues(
    text,
    QUERY_NAME,
    (name) => SECRET_QUERY_PART.test(name),
    (_name, at) => stickyValue(QUERY_VALUE, text, at, startsRedacted),
  );
}

/**
 * False for what a value under a secret-like name can be without being a secret: numbers are
 * counts (`tokens`, `maxTokensPerHour`), booleans flags, `null`/`undefined` nothing. Anything
 * else (a string, an array, an object) is replaced whole.
 */
function mayHoldSecret(v: unknown): boolean {
  return !(
    v === null ||
    v === undefined ||
    typeof v === 'number' ||
    typeof v === 'bigint' ||
    typeof v === 'boolean'
  );
}

/** True when `name` names a secret. */
export function isSecretName(name: string): boolean {
  return SECRET_NAME.test(name);
}

/** Redacts log entries; learns secrets as the sidecar makes them. */
export class LogRedactor {
  readonly #secrets = new Set<string>();

  /** Adds secrets to search for in text (short or empty ones are ignored). */
  add(...secrets: (string | undefined)[]): void {
    for (const s of secrets) {
      if (s !== undefined && s.length >= MIN_SECRET_LENGTH) this.#secrets.add(s);
    }
  }

  /**
   * Adds every string under a secret-like name in `value`, at any depth (all the strings of a
   * secret-named object or array): the secrets of config whose shape the sidecar does not know,
   * such as a plugin's options (`env: { SERVICE_API_KEY }`, `authToken`, `metadata`) or the
   * collector's headers. At most 32 levels are looked at.
   */
  addNamed(value: unknown, named = false, depth = 0): void {
    if (typeof value === 'string') {
      if (named) this.add(value);
      return;
    }
    if (value === null || typeof value !== 'object' || depth >= 32) return;
    for (const [k, v] of Object.entries(value)) {
      this.addNamed(v, named || (!Array.isArray(value) && isSecretName(k)), depth + 1);
    }
  }

  /**
   * Adds the values of the secret-named flags of a command line: `--api-key=<x>`, `--token <x>`
   * (an upstream's or an agent process's arguments, which it may print back bare).
   */
  addArguments(args: readonly string[]): void {
    for (const [i, arg] of args.entries()) {
      const flag = /^--?([A-Za-z0-9_-]+)(?:=([^]*))?$/.exec(arg);
      if (flag === null || !SECRET_PART.test(flag[1]!)) continue;
      this.add(flag[2] ?? args[i + 1]);
    }
  }

  /** `text` with every known secret and secret-looking token replaced. */
  text(text: string): string {
    let out = text;
    for (const s of this.#secrets) if (out.includes(s)) out = out.split(s).join(REDACTED);
    for (const [pattern, replacement] of PATTERNS) out = out.replace(pattern, replacement);
    return redactQuery(redactNamed(out));
  }

  /** A copy of `value` with secrets redacted (at most 32 levels deep; deeper is dropped). */
  value(value: unknown, depth = 0): unknown {
    if (typeof value === 'string') return this.text(value);
    if (value === null || typeof value !== 'object') return value;
    if (depth >= 32) return '[too deep]';
    if (value instanceof Error) return this.text(value.message);
    if (Array.isArray(value)) return value.map((v) => this.value(v, depth + 1));
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) {
      out[k] = isSecretName(k) && mayHoldSecret(v) ? REDACTED : this.value(v, depth + 1);
    }
    return out;
  }
}
