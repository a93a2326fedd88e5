/**
 * `nats.sidecarKey`: the secret the sidecars of a namespace share to authenticate vouch answers.
 * Checked in the sidecar config and `FabricOptions.nats` alike, never echoed in an error; the
 * MAC of a vouch answer covers the nonce, the question and the answer.
 */
import { describe, expect, it } from 'vitest';
import { ConfigError, ConfigFileError } from '../../src/errors.js';
import { parseSidecarConfig } from '../../src/server/config-file.js';
import { parseNatsOptions } from '../../src/transport/nats/nats-options.js';
import type { Vouch } from '../../src/transport/nats/wire.js';
import { vouchMac, vouchSchema } from '../../src/transport/nats/wire.js';

const KEY = 'a-sidecar-key-of-enough-length-0123456789';

describe('nats.sidecarKey', () => {
  it('is read from ${env:NAME} in the sidecar config', () => {
    const yaml = 'nats:\n  url: nats://127.0.0.1:4222\n  sidecarKey: "${env:FABRIC_TEST_SK}"\n';
    const config = parseSidecarConfig(yaml, 'f.yaml', { env: { FABRIC_TEST_SK: KEY } });
    expect(config.nats?.sidecarKey).toBe(KEY);
    expect(parseNatsOptions({ url: 'nats://x:4222' }).sidecarKey).toBeUndefined();
  });

  it('refuses a short or non-printable key, naming the field and not the value', () => {
    const short = 'short-secret-value';
    let error: unknown;
    try {
      parseSidecarConfig(
        `nats:\n  url: nats://127.0.0.1:4222\n  sidecarKey: ${short}\n`,
        'f.yaml',
        {
          env: {},
        },
      );
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigFileError);
    const text = JSON.stringify({
      message: (error as Error).message,
      details: (error as ConfigFileError).details,
    });
    expect(text).toContain('nats.sidecarKey');
    expect(text).toContain('at least 32');
    expect(text).not.toContain(short);
    expect(() => parseNatsOptions({ url: 'nats://x:4222', sidecarKey: short })).toThrow(
      ConfigError,
    );
    expect(() =>
      parseNatsOptions({ url: 'nats://x:4222', sidecarKey: `${KEY} with spaces` }),
    ).toThrow(/options\.nats\.sidecarKey/);
  });
});

describe('vouchMac', () => {
  const v: Vouch = {
    agentId: 'agent-1',
    kind: 'start',
    taskId: 'task-1',
    attempt: 2,
    take: 'take-1',
    seq: 7,
    reportNonce: 'report-1',
    counter: 1,
    content: 'content-1',
    proof: 'proof-1',
    nonce: 'nonce-0123456789abcdef',
  };

  it('changes with the key, the namespace, every field of the question and the answer', () => {
    const mac = vouchMac(KEY, 'ns', v, true, 'p');
    expect(mac).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(vouchMac(KEY, 'ns', v, true, 'p')).toBe(mac);
    const others = [
      vouchMac(`${KEY}x`, 'ns', v, true, 'p'),
      vouchMac(KEY, 'ns2', v, true, 'p'),
      vouchMac(KEY, 'ns', { ...v, nonce: 'nonce-0123456789abcdeg' }, true, 'p'),
      vouchMac(KEY, 'ns', { ...v, agentId: 'agent-2' }, true, 'p'),
      vouchMac(KEY, 'ns', { ...v, kind: 'complete' }, true, 'p'),
      vouchMac(KEY, 'ns', { ...v, taskId: 'task-2' }, true, 'p'),
      vouchMac(KEY, 'ns', { ...v, attempt: 3 }, true, 'p'),
      vouchMac(KEY, 'ns', { ...v, proof: 'proof-2' }, true, 'p'),
      vouchMac(KEY, 'ns', { ...v, take: 'take-2' }, true, 'p'),
      vouchMac(KEY, 'ns', { ...v, counter: 2 }, true, 'p'),
      vouchMac(KEY, 'ns', { ...v, seq: 8 }, true, 'p'),
      vouchMac(KEY, 'ns', { ...v, reportNonce: 'report-2' }, true, 'p'),
      vouchMac(KEY, 'ns', { ...v, content: 'content-2' }, true, 'p'),
      vouchMac(KEY, 'ns', v, true, 'q'),
      vouchMac(KEY, 'ns', v, true, null),
      vouchMac(KEY, 'ns', v, false, null),
    ];
    expect(new Set([mac, ...others]).size).toBe(others.length + 1);
    // Field boundaries cannot shift: ids with the separator of a naive join differ.
    expect(vouchMac(KEY, 'ns', { ...v, agentId: 'a:b', kind: 'start' }, true, 'p')).not.toBe(
      vouchMac(KEY, 'ns', { ...v, agentId: 'a', taskId: `b:${v.taskId}` }, true, 'p'),
    );
  });

  it('a vouch request needs a nonce, the take-up and its counter', () => {
    const { nonce: _nonce, ...withoutNonce } = v;
    expect(vouchSchema.safeParse(v).success).toBe(true);
    expect(vouchSchema.safeParse(withoutNonce).success).toBe(false);
    for (const k of ['take', 'counter'] as const) {
      const { [k]: _k, ...without } = v;
      expect(vouchSchema.safeParse(without).success).toBe(false);
    }
    expect(vouchSchema.safeParse({ ...v, nonce: 'short' }).success).toBe(false);
  });
});
