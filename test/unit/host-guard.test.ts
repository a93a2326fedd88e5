import type { IncomingMessage } from 'node:http';
import { describe, expect, it } from 'vitest';
import { ConfigFileError } from '../../src/errors.js';
import { parseSidecarConfig } from '../../src/server/config-file.js';
import { HostGuard, parseAuthority, parseOrigin } from '../../src/server/host-guard.js';

/** A request with just these headers (all the guard reads). */
const req = (headers: Record<string, string>): IncomingMessage =>
  ({ headers }) as unknown as IncomingMessage;

const allowed = (guard: HostGuard, host: string, origin?: string): boolean =>
  guard.check(req({ host, ...(origin === undefined ? {} : { origin }) })) === undefined;

describe('HostGuard (DNS rebinding allow-lists)', () => {
  it('parses Host values strictly and normalizes case, trailing dots and IPv6', () => {
    expect(parseAuthority('LocalHost.:8765')).toEqual({ host: 'localhost', port: 8765 });
    expect(parseAuthority('[0:0:0:0:0:0:0:1]')).toEqual({ host: '[::1]', port: undefined });
    for (const bad of [
      '',
      ':80',
      'a b',
      'a@b',
      'a/b',
      'host:',
      'host:65536',
      '[::1',
      '[zz]',
      'a..b',
    ]) {
      expect(parseAuthority(bad), bad).toBeUndefined();
    }
    expect(parseOrigin('HTTPS://Example.COM:443')).toMatchObject({ text: 'https://example.com' });
    expect(parseOrigin('http://x:80/')).toBeUndefined();
    expect(parseOrigin('null')).toBe('null');
  });

  it('allows loopback names and the bind address by default, any port', () => {
    const guard = new HostGuard({ bindHost: '10.1.2.3' });
    for (const h of ['localhost', '127.0.0.1:1', '[::1]:8765', '10.1.2.3:8765']) {
      expect(allowed(guard, h), h).toBe(true);
    }
    for (const h of ['10.1.2.4', 'example.com', '127.0.0.2'])
      expect(allowed(guard, h), h).toBe(false);
    expect(new HostGuard({ bindHost: '::1' }).describe()).toContain('[::1]');
  });

  it('on a wildcard bind, allows the machine addresses and name but not other names', () => {
    const guard = new HostGuard({
      bindHost: '0.0.0.0',
      machine: () => ({ addresses: ['192.168.7.9', '[fe80::1]'], hostname: 'Build-Box' }),
    });
    for (const h of ['192.168.7.9:8765', '[fe80::1]:8765', 'build-box:8765', 'localhost']) {
      expect(allowed(guard, h), h).toBe(true);
    }
    expect(allowed(guard, 'evil.example')).toBe(false);
    expect(allowed(guard, '0.0.0.0')).toBe(false);
  });

  it('honours ports in entries, * for any host, and listed origins exactly', () => {
    const guard = new HostGuard({
      bindHost: '127.0.0.1',
      allowedHosts: ['mcp.example.test:8443'],
      allowedOrigins: ['https://app.example.test', 'null'],
    });
    expect(allowed(guard, 'mcp.example.test:8443')).toBe(true);
    expect(allowed(guard, 'mcp.example.test:8444')).toBe(false);
    expect(allowed(guard, 'localhost', 'https://app.example.test:443')).toBe(true);
    expect(allowed(guard, 'localhost', 'https://app.example.test:8443')).toBe(false);
    expect(allowed(guard, 'localhost', 'null')).toBe(true);
    const open = new HostGuard({ bindHost: '127.0.0.1', allowedHosts: ['*'] });
    expect(allowed(open, 'anything.example')).toBe(true);
    expect(open.allowsAnyHost).toBe(true);
    expect(allowed(open, 'anything.example', 'http://anything.example')).toBe(false);
  });

  it('re-checks when the Host or Origin changes after an accepted one (the cache is one value)', () => {
    const guard = new HostGuard({ bindHost: '127.0.0.1' });
    expect(allowed(guard, 'localhost')).toBe(true);
    expect(allowed(guard, 'evil.example')).toBe(false);
    expect(allowed(guard, 'localhost')).toBe(true);
    expect(guard.check(req({}))).toMatchObject({ code: 'FABRIC_ERR_HOST_NOT_ALLOWED' });
    expect(allowed(guard, 'localhost', 'http://localhost:3000')).toBe(true);
    expect(allowed(guard, 'localhost', 'http://evil.example')).toBe(false);
    expect(allowed(guard, 'localhost', 'http://evil.example')).toBe(false);
    expect(allowed(guard, 'localhost', 'http://localhost:3000')).toBe(true);
  });

  it('rejects bad allow-list entries and timeouts in the config, naming the key', () => {
    const parse = (http: unknown) =>
      parseSidecarConfig(JSON.stringify({ http }), 'fabric.json', { env: {} });
    expect(() => parse({ allowedHosts: ['http://x'] })).toThrow(ConfigFileError);
    expect(() => parse({ allowedHosts: ['http://x'] })).toThrow(/http\.allowedHosts/);
    expect(() => parse({ allowedOrigins: ['localhost'] })).toThrow(/http\.allowedOrigins/);
    expect(() => parse({ headersTimeoutSeconds: 9, requestTimeoutSeconds: 5 })).toThrow(
      /http\.headersTimeoutSeconds/,
    );
    expect(() => parse({ maxSessionsPerAgent: 0 })).toThrow(/http\.maxSessionsPerAgent/);
    const config = parse(undefined);
    expect(config.http).toMatchObject({
      allowedHosts: [],
      maxSessionsPerAgent: 32,
      maxInflightPerAgent: 256,
      maxBatchMessages: 100,
      headersTimeoutSeconds: 10,
      requestTimeoutSeconds: 60,
      bodyTimeoutSeconds: 30,
    });
  });
});
