/**
 * What policy sees of a resource URI: resource reads, subscriptions and template completions
 * pass the same policy check as a tool call (see `ToolGateway`), matched on the URI as the
 * upstream will read it and on the path a `file:` URI names.
 *
 * @module
 */
import { fileURLToPath } from 'node:url';
import { markHoldsUnresolved, UnresolvedPath } from '../policy/unresolved-path.js';
import { messageOf } from './map-error.js';

/**
 * Policy parameters of a resource read, subscription or template completion: the URI, and the
 * path it names. The URI is parsed as the WHATWG URL parser (and so an upstream using
 * `new URL`) reads it: leading and trailing C0 controls and spaces are dropped, tabs and
 * newlines anywhere are removed, the scheme is case-insensitive (`FILE:`, ` file:`). `uri` is
 * the serialized URL, what an SDK-based upstream looks the resource up by (`new URL(uri)
 * .toString()`): scheme lower-cased, `.` and `..` segments resolved — so `DEMO://x/./a` or
 * `demo://x/b/../a` is matched as `demo://x/a`, the resource the upstream serves for it. A
 * `file:` URL gets its decoded path (`file:///etc/%2e%2e/etc/passwd` → `/etc/passwd`), which the
 * gateway then resolves like a tool's path parameter. A URI that is not a URL gets an
 * {@link UnresolvedPath} marker as `uri` and `path`, a `file:` URL that cannot be decoded (`%2F`
 * in a segment, a remote host, invalid UTF-8) as `path`: deny rules on them match, allow rules
 * do not. Other schemes get no `path`.
 */
export function resourceParams(uri: string): Record<string, unknown> {
  let url: URL;
  try {
    url = new URL(uri);
  } catch {
    return withMarker(uri, 'is not a URL', undefined);
  }
  if (url.protocol !== 'file:') return { uri: url.href };
  try {
    return { uri: url.href, path: fileURLToPath(url) };
  } catch (error) {
    const why = `is a file: URL that cannot be decoded (${messageOf(error)})`;
    return withMarker(uri, why, url.href);
  }
}

/** `path` an unresolved marker, and `uri` too when it is no URL (`href` undefined). */
function withMarker(
  uri: string,
  reason: string,
  href: string | undefined,
): Record<string, unknown> {
  const marker = new UnresolvedPath(uri, reason);
  const params = { uri: href ?? marker, path: marker };
  markHoldsUnresolved(params);
  return params;
}
