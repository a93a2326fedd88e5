/**
 * Transport security of the sidecar's listeners (HTTP and gRPC): the certificate files, and the
 * rule that a listener reachable beyond loopback speaks TLS unless it is explicitly allowed not
 * to — credentials (agent and admin tokens) travel in every request's headers.
 *
 * @module
 */
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { ConfigError, InsecureListenerError } from '../errors.js';

/** Paths of a listener's TLS files (PEM). */
export interface TlsFiles {
  /** The server's certificate chain. */
  cert: string;
  /** The server's private key. */
  key: string;
  /**
   * CA certificate(s) clients must present a certificate from (mutual TLS); without it clients
   * are not asked for one.
   */
  ca?: string | undefined;
}

/** A listener's TLS material, read from {@link TlsFiles}. */
export interface TlsMaterial {
  readonly cert: Buffer;
  readonly key: Buffer;
  readonly ca?: Buffer | undefined;
}

/**
 * Reads a listener's TLS files.
 * @throws ConfigError naming the listener and the file that cannot be read.
 */
export function readTlsFiles(listener: string, files: TlsFiles): TlsMaterial {
  const read = (which: 'cert' | 'key' | 'ca', path: string): Buffer => {
    try {
      return readFileSync(path);
    } catch (error) {
      throw new ConfigError(
        `${listener}.tls.${which}`,
        `cannot be read (${path}): ${error instanceof Error ? error.message : String(error)}`,
        { cause: error },
      );
    }
  };
  return {
    cert: read('cert', files.cert),
    key: read('key', files.key),
    ...(files.ca === undefined ? {} : { ca: read('ca', files.ca) }),
  };
}

/** Whether binding `host` serves only this machine (127.0.0.0/8, ::1, localhost). */
export function isLoopbackHost(host: string): boolean {
  const h = host.startsWith('[') && host.endsWith(']') ? host.slice(1, -1) : host;
  if (h.toLowerCase() === 'localhost') return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  if (isIP(h) === 6) return h === '::1' || /^::ffff:127\./i.test(h);
  return false;
}

/**
 * Refuses a listener on a non-loopback `host` without TLS unless `allowInsecure`.
 * @throws InsecureListenerError naming the listener.
 */
export function checkListenerSecurity(
  listener: string,
  host: string,
  tls: TlsMaterial | undefined,
  allowInsecure: boolean | undefined,
): void {
  if (tls === undefined && allowInsecure !== true && !isLoopbackHost(host)) {
    throw new InsecureListenerError(listener, host);
  }
}
