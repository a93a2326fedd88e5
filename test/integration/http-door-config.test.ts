/**
 * The operator API's stream caps come from the config (`http.apiMaxStreams`,
 * `http.apiMaxBufferedMessages`): a real sidecar started with small values enforces them with
 * their typed errors, and values the door cannot use are refused at start-up naming the key and
 * its line.
 */
import { request, type IncomingMessage } from 'node:http';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { ConfigFileError, type ConfigFileProblem } from '../../src/errors.js';
import { parseSidecarConfig } from '../../src/server/config-file.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { postJson } from '../fixtures/api.js';
import { ADMIN_TOKEN, closeSidecar, startTestSidecar } from '../fixtures/gateway/harness.js';

type ErrorBody = { code: string; kind: string; message: string; details?: { limit?: number } };

describe('http.apiMaxStreams / http.apiMaxBufferedMessages', () => {
  it('refuses values the door cannot use, naming the key and its line', () => {
    for (const [key, value, why] of [
      ['apiMaxStreams', '0', 'too_small'],
      ['apiMaxStreams', '-3', 'too_small'],
      ['apiMaxStreams', '1.5', 'invalid_type'],
      ['apiMaxStreams', '"64"', 'invalid_type'],
      ['apiMaxStreams', '1000000', 'too_big'],
      ['apiMaxBufferedMessages', '0', 'too_small'],
      ['apiMaxBufferedMessages', '2.5', 'invalid_type'],
      ['apiMaxBufferedMessages', '100000000', 'too_big'],
    ] as const) {
      const yaml = `state: memory\nhttp:\n  port: 0\n  ${key}: ${value}\n`;
      let error: unknown;
      try {
        parseSidecarConfig(yaml, 'f.yaml', { env: {} });
      } catch (e) {
        error = e;
      }
      expect(error, `${key}: ${value}`).toBeInstanceOf(ConfigFileError);
      const problems = (error as ConfigFileError).details.problems as ConfigFileProblem[];
      expect(problems.map((p) => [p.path, p.line])).toEqual([[`http.${key}`, 4]]);
      expect((error as ConfigFileError).message, why).toContain(`f.yaml:4: http.${key}`);
    }
  });

  it('defaults to 64 streams and 1024 buffered messages', () => {
    const config = parseSidecarConfig('state: memory\n', 'f.yaml', { env: {} });
    expect(config.http).toMatchObject({ apiMaxStreams: 64, apiMaxBufferedMessages: 1024 });
  });

  describe('a sidecar with apiMaxStreams 1 and apiMaxBufferedMessages 4', () => {
    let sidecar: Sidecar;
    let base: URL;
    let agentId: string;

    beforeAll(async () => {
      sidecar = await startTestSidecar({
        upstreams: {},
        http: { apiMaxStreams: 1, apiMaxBufferedMessages: 4 },
      });
      base = new URL('/api/', sidecar.url);
      agentId = (await sidecar.fabric!.spawn({ model: 'm', name: 'watched', executor: 'remote' }))
        .id;
    });
    afterAll(() => closeSidecar(sidecar));

    /** Listeners an approval watch holds on the fabric. */
    const listeners = (): number => sidecar.fabric!.approvals.listenerCount('created');

    /** Opens ApprovalService/Watch with node:http; the response is paused (nothing is read). */
    function openPaused(): Promise<IncomingMessage> {
      return new Promise((resolve, reject) => {
        const req = request(new URL('fabric.v1.ApprovalService/Watch', base), {
          method: 'POST',
          headers: { 'content-type': 'application/json', authorization: `Bearer ${ADMIN_TOKEN}` },
        });
        req.once('response', (res) => {
          res.pause();
          resolve(res);
        });
        req.once('error', reject);
        req.end('{}');
      });
    }

    it('serves one stream; a second is 429 FABRIC_ERR_STREAM_LIMIT naming the cap, and opens nothing', async () => {
      const before = listeners();
      const first = await openPaused();
      expect(first.statusCode).toBe(200);
      await vi.waitFor(() => expect(listeners()).toBe(before + 1));
      const refused = await Promise.all(
        Array.from({ length: 5 }, () =>
          postJson(new URL('fabric.v1.EventService/Watch', base), {}, ADMIN_TOKEN),
        ),
      );
      for (const res of refused) {
        expect(res.status).toBe(429);
        const body = (await res.json()) as ErrorBody;
        expect(body.code).toBe('FABRIC_ERR_STREAM_LIMIT');
        expect(body.message).toContain('1 streams are open');
        expect(body.details?.limit).toBe(1);
      }
      // Nothing subscribed for the refused calls.
      expect(listeners()).toBe(before + 1);
      first.destroy();
      await vi.waitFor(() => expect(listeners()).toBe(before));
      // Its slot is free again.
      const again = await postJson(new URL('fabric.v1.EventService/Watch', base), {}, ADMIN_TOKEN, {
        signal: AbortSignal.timeout(60_000),
      });
      expect(again.status).toBe(200);
      await again.body?.cancel();
      await vi.waitFor(() => expect(listeners()).toBe(before));
    });

    it('ends a stream whose client stops reading with FABRIC_ERR_STREAM_OVERFLOW at 4 waiting messages, every earlier one delivered in order', async () => {
      const before = listeners();
      const slow = await openPaused();
      await vi.waitFor(() => expect(listeners()).toBe(before + 1));
      // ~8 KiB events with I/O turns in between, until the socket's buffers are full and the
      // door's own buffer (4 messages) overflows: the door then ends the stream and unsubscribes.
      const big = 'x'.repeat(8 * 1024);
      const fabric = sidecar.fabric!;
      for (let i = 0; i < 5_000 && listeners() > before; i++) {
        const a = fabric.approvals.create({ agentId, tool: 'deploy', params: { i, big } });
        fabric.approvals.deny(a.id, { approver: 'test' });
        await new Promise((r) => setImmediate(r));
      }
      expect(listeners()).toBe(before);
      // Now read everything the door sent.
      let text = '';
      slow.setEncoding('utf8');
      slow.on('data', (chunk: string) => (text += chunk));
      slow.resume();
      await new Promise((r) => slow.once('end', r));
      const lines = text
        .split('\n')
        .filter((l) => l !== '')
        .map(
          (l) => JSON.parse(l) as { message?: { sequence?: string }; end?: { error?: ErrorBody } },
        );
      const last = lines.at(-1)!;
      expect(last.end?.error?.code).toBe('FABRIC_ERR_STREAM_OVERFLOW');
      expect(last.end?.error?.message).toContain('4 messages were waiting');
      const sequences = lines.slice(0, -1).map((l) => Number(l.message?.sequence));
      expect(sequences.length).toBeGreaterThan(4);
      expect(sequences).toEqual(sequences.map((_, i) => i + 1));
    });
  });
});
