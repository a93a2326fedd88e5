/**
 * Keeps credentials out of the sidecar's log. Every entry passes through {@link LogRedactor}
 * before it is written, whatever wrote it (the gateway, an upstream's stderr, start-up):
 *
 * - a value under a secret-like key (`authorization`, `token`, `password`, `apiKey`, …) at any
 *   depth is replaced whole;
 * - in every string (the message included): the secrets the sidecar knows (admin token, agent
 *   credentials, upstream env and header values under secret-like names) and what looks like
 *   one — `Bearer <x>`, the fabric's own token formats (`afk_…`, `fab_admin_…`), `--api-key=<x>`
 *   style arguments, `SECRET_TOKEN=<x>` style assignments and `?token=<x>` query parameters.
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

const PATTERNS: readonly [RegExp, string][] = [
  [/\b(Bearer|Basic)\s+[^\s"',;]+/gi, `$1 ${REDACTED}`],
  [/\b(?:afk|fab_admin)_[A-Za-z0-9_-]{8,}/g, REDACTED],
  // --api-key=x, --token x, -password=x
  [
    /(--?[A-Za-z0-9_-]*(?:token|secret|passw(?:or)?d|credential|api[-_]?key|private[-_]?key)[A-Za-z0-9_-]*)(=|\s+)(?!\[redacted\])[^\s"',]+/gi,
    `$1$2${REDACTED}`,
  ],
  // GITHUB_TOKEN=x, "apiKey": "x", password: x (not a number: `tokens: 5` is a count)
  [
    /(\b[A-Za-z0-9_]*(?:token|secret|passw(?:or)?d|credential|api[-_]?key|private[-_]?key)[A-Za-z0-9_]*"?\s*[:=]\s*"?)(?!\[redacted\]|\d+(?:\.\d+)?\b)[^\s"',;&]+/gi,
    `$1${REDACTED}`,
  ],
  // ?token=x&access_token=x
  [/([?&][A-Za-z0-9_]*(?:token|key|secret|passw(?:or)?d)=)[^&\s"']+/gi, `$1${REDACTED}`],
];

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

  /** `text` with every known secret and secret-looking token replaced. */
  text(text: string): string {
    let out = text;
    for (const s of this.#secrets) if (out.includes(s)) out = out.split(s).join(REDACTED);
    for (const [pattern, replacement] of PATTERNS) out = out.replace(pattern, replacement);
    return out;
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
      // Numbers under such names are counts (`tokens`, `maxTokensPerHour`), not secrets.
      out[k] = isSecretName(k) && typeof v === 'string' ? REDACTED : this.value(v, depth + 1);
    }
    return out;
  }
}
