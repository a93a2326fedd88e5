/**
 * DNS rebinding protection: the `Host` and `Origin` headers of every request are checked against
 * an allow-list before anything else happens.
 *
 * A web page on `evil.example` whose name is re-pointed at 127.0.0.1 makes the browser send
 * requests to the sidecar that carry `Host: evil.example:8765` and `Origin:
 * http://evil.example:8765`; the MCP specification requires servers to refuse them (403). A
 * request is served only when its `Host` names an allowed host (any port, unless the entry
 * names one) and, if it has an `Origin`, that origin is allowed too. Non-browser clients send no
 * `Origin`; that is fine.
 *
 * Allowed hosts: the loopback names (`localhost`, `127.0.0.1`, `[::1]`), the bind address, and
 * `http.allowedHosts`. A wildcard bind (`0.0.0.0`, `::`) serves every interface, so the
 * machine's interface addresses and its host name are allowed too (read once, at start): an IP
 * literal or the machine's own name cannot be an attacker's domain. DNS names that point at the
 * machine (or a proxy in front of it) must be listed. `*` allows any host and turns the
 * protection off.
 *
 * Allowed origins: `http://` and `https://` origins (any port) whose host is an allowed host,
 * plus each exact origin listed in `http.allowedOrigins` (any scheme, e.g. `vscode-webview://…`;
 * `null` for the opaque origin; `*` for any).
 *
 * Header values are parsed strictly (host names of letters, digits, `.`, `-`, `_`; bracketed
 * IPv6 literals; a port up to 65535) and compared case-insensitively, a trailing dot ignored.
 * What does not parse is refused; error messages quote only parsed, normalized names.
 *
 * @module
 */
import type { IncomingMessage } from 'node:http';
import { hostname as osHostname, networkInterfaces } from 'node:os';
import { HostNotAllowedError } from '../errors.js';

/** Host names always allowed. */
export const LOOPBACK_HOSTS: readonly string[] = Object.freeze(['localhost', '127.0.0.1', '[::1]']);

/** Bind addresses that listen on every interface. */
const WILDCARD_BINDS = new Set(['0.0.0.0', '::', '[::]', '0:0:0:0:0:0:0:0']);

/** A parsed `host[:port]`. */
export interface Authority {
  /** Lowercase; IPv6 literals in brackets, compressed (`[::1]`). */
  readonly host: string;
  readonly port: number | undefined;
}

const NAME = /^([A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]+)*)\.?(?::(\d{1,5}))?$/;
const IPV6 = /^\[([0-9A-Fa-f:.]+)\](?::(\d{1,5}))?$/;

/**
 * Parses a `Host` header value (or the authority of an origin): `name[:port]`, `a.b.c.d[:port]`
 * or `[ipv6][:port]`. Undefined when it is anything else.
 */
export function parseAuthority(value: string): Authority | undefined {
  let host: string;
  let port: string | undefined;
  const v6 = IPV6.exec(value);
  if (v6) {
    try {
      host = new URL(`http://[${v6[1]}]`).hostname; // compresses and lowercases
    } catch {
      return undefined;
    }
    port = v6[2];
  } else {
    const name = NAME.exec(value);
    if (!name) return undefined;
    host = name[1]!.toLowerCase();
    port = name[2];
  }
  if (port === undefined) return { host, port: undefined };
  const n = Number(port);
  return n <= 65535 ? { host, port: n } : undefined;
}

const DEFAULT_PORTS: Readonly<Record<string, number>> = { http: 80, https: 443 };
const ORIGIN = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/([^/?#@]+)$/;

/** A parsed origin: lowercase scheme, authority with the scheme's default port filled in. */
interface ParsedOrigin {
  readonly scheme: string;
  readonly host: string;
  readonly port: number | undefined;
  /** `scheme://host[:port]`, the default port left out. */
  readonly text: string;
}

/** Parses an `Origin` value (`scheme://host[:port]`); `null` stays `null`. */
export function parseOrigin(value: string): ParsedOrigin | 'null' | undefined {
  if (value === 'null') return 'null';
  const m = ORIGIN.exec(value);
  if (!m) return undefined;
  const authority = parseAuthority(m[2]!);
  if (!authority) return undefined;
  const scheme = m[1]!.toLowerCase();
  const port = authority.port ?? DEFAULT_PORTS[scheme];
  const shown = port === undefined || port === DEFAULT_PORTS[scheme] ? '' : `:${port}`;
  return { scheme, host: authority.host, port, text: `${scheme}://${authority.host}${shown}` };
}

/** Options of a {@link HostGuard}. */
export interface HostGuardOptions {
  /** The address the server binds: allowed as a host; a wildcard also allows the machine's. */
  bindHost: string;
  /** Further hosts, `name` (any port) or `name:port`; `*` allows any host. @default [] */
  allowedHosts?: readonly string[] | undefined;
  /** Further exact origins (`scheme://host[:port]`, `null`); `*` allows any. @default [] */
  allowedOrigins?: readonly string[] | undefined;
  /** The machine's interface addresses and host name (for wildcard binds; tests inject it). */
  machine?: () => { addresses: readonly string[]; hostname: string };
}

function machineNames(): { addresses: string[]; hostname: string } {
  const addresses: string[] = [];
  for (const list of Object.values(networkInterfaces())) {
    for (const a of list ?? []) {
      // A zone id (fe80::1%eth0) cannot appear in a Host header; the address alone can.
      addresses.push(a.family === 'IPv6' ? `[${a.address.split('%')[0]}]` : a.address);
    }
  }
  return { addresses, hostname: osHostname() };
}

/**
 * The allow-lists of one HTTP server, parsed once. {@link check} costs a string comparison when
 * the `Host` (and `Origin`, if any) is the one last accepted: a few ns in the usual case.
 */
export class HostGuard {
  /** Allowed host → allowed ports (`undefined`: any port). */
  readonly #hosts = new Map<string, Set<number> | undefined>();
  readonly #origins = new Set<string>();
  readonly #anyHost: boolean;
  readonly #anyOrigin: boolean;
  readonly #nullOrigin: boolean;
  #lastHost: string | undefined;
  #lastOrigin: string | undefined;

  /** @throws Error naming the entry when an allow-list entry does not parse. */
  constructor(options: HostGuardOptions) {
    const hosts = options.allowedHosts ?? [];
    const origins = options.allowedOrigins ?? [];
    this.#anyHost = hosts.includes('*');
    this.#anyOrigin = origins.includes('*');
    this.#nullOrigin = origins.includes('null');
    for (const h of LOOPBACK_HOSTS) this.#allowHost(h);
    const bind = options.bindHost.trim().toLowerCase();
    if (WILDCARD_BINDS.has(bind)) {
      const machine = (options.machine ?? machineNames)();
      for (const a of machine.addresses) this.#allowHost(a);
      if (parseAuthority(machine.hostname)) this.#allowHost(machine.hostname);
    } else {
      this.#allowHost(bind.includes(':') && !bind.startsWith('[') ? `[${bind}]` : bind);
    }
    for (const h of hosts) {
      if (h === '*') continue;
      if (!this.#allowHost(h)) throw new Error(`allowedHosts: ${JSON.stringify(h)} is not a host`);
    }
    for (const o of origins) {
      if (o === '*' || o === 'null') continue;
      const parsed = parseOrigin(o);
      if (parsed === undefined || parsed === 'null') {
        throw new Error(`allowedOrigins: ${JSON.stringify(o)} is not an origin (scheme://host)`);
      }
      this.#origins.add(parsed.text);
    }
  }

  #allowHost(value: string): boolean {
    const a = parseAuthority(value);
    if (!a) return false;
    if (a.port === undefined) {
      this.#hosts.set(a.host, undefined);
    } else if (!this.#hosts.has(a.host) || this.#hosts.get(a.host) !== undefined) {
      const ports = this.#hosts.get(a.host) ?? new Set<number>();
      ports.add(a.port);
      this.#hosts.set(a.host, ports);
    }
    return true;
  }

  #hostAllowed(a: Authority): boolean {
    if (!this.#hosts.has(a.host)) return false;
    const ports = this.#hosts.get(a.host);
    return ports === undefined || (a.port !== undefined && ports.has(a.port));
  }

  /** The allowed hosts, for a start-up log line. */
  describe(): string {
    if (this.#anyHost) return '* (any host: DNS rebinding protection is off)';
    return [...this.#hosts]
      .map(([h, ports]) =>
        ports === undefined ? h : [...ports].map((p) => `${h}:${p}`).join(', '),
      )
      .join(', ');
  }

  /** True when `*` turned the Host check off. */
  get allowsAnyHost(): boolean {
    return this.#anyHost;
  }

  /** The refusal for a request whose `Host` or `Origin` is not allowed; undefined if allowed. */
  check(req: IncomingMessage): HostNotAllowedError | undefined {
    const host = req.headers.host;
    if (host !== this.#lastHost || host === undefined) {
      const refusal = this.#checkHost(host);
      if (refusal) return refusal;
      this.#lastHost = host;
    }
    const origin = req.headers.origin;
    if (origin === undefined || origin === this.#lastOrigin) return undefined;
    const refusal = this.#checkOrigin(origin);
    if (!refusal) this.#lastOrigin = origin;
    return refusal;
  }

  #checkHost(value: string | undefined): HostNotAllowedError | undefined {
    if (this.#anyHost) return undefined;
    if (value === undefined || value === '') {
      return new HostNotAllowedError('host', 'the request has no Host header');
    }
    const a = parseAuthority(value);
    if (!a) return new HostNotAllowedError('host', 'the Host header is malformed');
    if (this.#hostAllowed(a)) return undefined;
    return new HostNotAllowedError(
      'host',
      `Host ${a.host}${a.port === undefined ? '' : `:${a.port}`} is not served here; if it ` +
        'names this server, add it to http.allowedHosts (DNS rebinding protection)',
      { host: a.host },
    );
  }

  #checkOrigin(value: string): HostNotAllowedError | undefined {
    if (this.#anyOrigin) return undefined;
    const o = parseOrigin(value);
    if (o === 'null') {
      return this.#nullOrigin
        ? undefined
        : new HostNotAllowedError('origin', 'Origin null is not allowed (http.allowedOrigins)');
    }
    if (!o) return new HostNotAllowedError('origin', 'the Origin header is malformed');
    if (this.#origins.has(o.text)) return undefined;
    if ((o.scheme === 'http' || o.scheme === 'https') && this.#hosts.has(o.host)) return undefined;
    return new HostNotAllowedError(
      'origin',
      `Origin ${o.text} is not allowed; if it is yours, add it to http.allowedOrigins ` +
        '(DNS rebinding protection)',
      { origin: o.text },
    );
  }
}
