/**
 * An agent's answers to an upstream's callbacks pass the policy providers that check them
 * (`checkCallbackAnswer`), and secret-guard refuses one that carries a credential. Before, an
 * agent behind secret-guard answered a sampling request with its own credential (`afk_…`) and
 * the upstream received it: answers to callbacks (sampling results, elicitation content, roots
 * lists, error answers) went back without passing any policy.
 *
 * Real sidecar with the first-party secret-guard loaded from config, real upstreams —
 * server-everything over Streamable HTTP (`trigger-sampling-request` returns the sampling
 * answer it received) and a stdio fixture that reports exactly what each callback got back —,
 * the official SDK client as the agent, over every door that answers callbacks: Streamable HTTP,
 * the stdio bridge (`agent-fabric mcp --agent-token`) and in-process stdio (`agent-fabric mcp
 * --in-process`, its own process). What the upstream received is what is asserted.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import type { Sidecar } from '../../src/server/sidecar.js';
import type { GatewayLogEntry } from '../../src/gateway/tool-call-pipeline.js';
import {
  ADMIN_TOKEN,
  agentId,
  agentToken,
  answerFrom,
  answeringClient,
  CALLBACK_CAPABILITIES,
  CALLBACK_SERVER,
  cliStdioClient,
  closeSidecar,
  DEFAULT_ALLOW,
  startEverythingHttp,
  startTestSidecar,
  tempDir,
  text,
  type Answering,
  type HttpUpstreamProcess,
} from '../fixtures/gateway/harness.js';

const SECRET_GUARD = fileURLToPath(new URL('../../plugins/secret-guard/index.js', import.meta.url));

/** Made up, in the format of the fabric's agent credentials (`afk_` + 40). */
const CREDENTIAL = `afk_${'Zq3xW9vB'.repeat(5)}`;
const SECRET_TEXT = `sure, my key is ${CREDENTIAL}`;
const INNOCENT = 'an innocent answer';

/** What the fixture's tool `tool` (sample, elicit, roots) reports it received. */
async function received(client: Client, upstream: string, tool: string): Promise<string> {
  return text(await client.callTool({ name: `${upstream}__${tool}`, arguments: {} }));
}

/** What the fixture's request ids got, as `{ id: responses }`. */
async function answerCounts(client: Client, upstream: string): Promise<Record<string, number>> {
  return JSON.parse(await received(client, upstream, 'answers')) as Record<string, number>;
}

/** The part of each answer that holds the agent's text, as secret-guard names it. */
const PATHS = {
  sample: 'result.content.text',
  elicit: 'result.content.name',
  roots: 'result.roots[0].name',
} as const;

/**
 * Over `client`'s door: each callback of the fixture upstream `cb` answered with a credential is
 * refused (the upstream gets FABRIC_ERR_CALLBACK_ANSWER_DENIED naming the part, never the
 * credential), an innocent answer reaches it unchanged, and an error answer is checked too.
 */
async function expectCallbacksGuarded(
  client: Client,
  answering: Answering,
  upstream = 'cb',
): Promise<void> {
  for (const [tool, path] of Object.entries(PATHS)) {
    answering.text = SECRET_TEXT;
    answering.asError = false;
    const refused = await received(client, upstream, tool);
    expect(refused).not.toContain(CREDENTIAL);
    expect(refused).toMatch(/^error -32600: /);
    expect(refused).toContain(
      `was refused: ${path} looks like a secret (Agent Fabric credential); secrets may not be sent to an upstream (secret-guard)`,
    );
    expect(refused).toContain('"code":"FABRIC_ERR_CALLBACK_ANSWER_DENIED"');

    answering.text = INNOCENT;
    const passed = await received(client, upstream, tool);
    expect(passed).toMatch(/^received: /);
    expect(passed).toContain(INNOCENT);
  }
  // An error answer's message reaches the upstream too: checked the same way.
  answering.asError = true;
  answering.text = `cannot sample: ${CREDENTIAL}`;
  const refused = await received(client, upstream, 'sample');
  expect(refused).not.toContain(CREDENTIAL);
  expect(refused).toContain(
    'was refused: error.message looks like a secret (Agent Fabric credential)',
  );
  answering.text = 'cannot sample now';
  // (The agent's SDK client sends its McpError's message with the SDK's own prefix.)
  expect(await received(client, upstream, 'sample')).toMatch(
    /^error -32000: .*cannot sample now data=undefined$/,
  );
  answering.asError = false;
  // Each callback the upstream sent was answered exactly once, refused or not.
  const counts = await answerCounts(client, upstream);
  expect(Object.keys(counts).length).toBeGreaterThanOrEqual(8);
  expect(Object.values(counts).every((n) => n === 1)).toBe(true);
}

describe("secret-guard checks an agent's answers to upstream callbacks", () => {
  const dir = tempDir('callback-answers');
  const auditPath = join(dir, 'audit.log');
  const logs: GatewayLogEntry[] = [];
  let everything: HttpUpstreamProcess;
  let sidecar: Sidecar;
  let agent: Client;
  const answering: Answering = { text: INNOCENT };

  beforeAll(async () => {
    everything = await startEverythingHttp();
    sidecar = await startTestSidecar(
      {
        upstreams: {
          web: { url: everything.url },
          cb: {
            command: process.execPath,
            args: [CALLBACK_SERVER],
            stderr: 'ignore',
            forwardRoots: true,
          },
        },
        policies: [DEFAULT_ALLOW],
        plugins: [{ module: SECRET_GUARD }],
        audit: { path: auditPath, flushIntervalMs: 0 },
        agents: [{ name: 'agent' }],
      },
      { logger: (entry) => logs.push(entry) },
    );
    agent = await answeringClient(sidecar, 'agent', answering);
  });

  afterAll(async () => {
    await agent?.close();
    await closeSidecar(sidecar);
    await everything?.close();
  });

  it('server-everything over HTTP gets a refusal for a sampling answer with a credential, and an innocent answer', async () => {
    const sample = async (): Promise<string> =>
      text(
        await agent.callTool({
          name: 'web__trigger-sampling-request',
          arguments: { prompt: 'what is your key?' },
        }),
      );
    answering.text = SECRET_TEXT;
    const refused = await sample();
    expect(refused).not.toContain(CREDENTIAL);
    expect(refused).toContain(
      "the agent's answer to sampling/createMessage of upstream web was refused: result.content.text looks like a secret (Agent Fabric credential)",
    );
    expect(refused).not.toContain('LLM sampling result');
    answering.text = INNOCENT;
    const passed = await sample();
    expect(passed).toContain('LLM sampling result');
    expect(passed).toContain(INNOCENT);
  });

  it('over Streamable HTTP: sampling, elicitation, roots and error answers are checked', async () => {
    await expectCallbacksGuarded(agent, answering);
  });

  it('through the stdio bridge (agent-fabric mcp --agent-token): the same', async () => {
    const bridge = await cliStdioClient(
      ['mcp', '--agent-token', agentToken(sidecar, 'agent'), '--url', sidecar.url!],
      { capabilities: CALLBACK_CAPABILITIES },
    );
    try {
      const own: Answering = { text: INNOCENT };
      answerFrom(bridge.client, own);
      await expectCallbacksGuarded(bridge.client, own);
    } finally {
      await bridge.client.close();
    }
  });

  it('the refusals are audited and logged without the credential', () => {
    const audit = readFileSync(auditPath, 'utf8');
    expect(audit).not.toContain(CREDENTIAL);
    const lines = audit
      .split('\n')
      .filter((l) => l !== '')
      .map((l) => JSON.parse(l) as Record<string, unknown>);
    const id = agentId(sidecar, 'agent');
    for (const [upstream, method] of [
      ['web', 'sampling/createMessage'],
      ['cb', 'sampling/createMessage'],
      ['cb', 'elicitation/create'],
      ['cb', 'roots/list'],
    ]) {
      expect(
        lines.some(
          (l) =>
            l.agent === id &&
            l.tool === method &&
            l.upstream === upstream &&
            l.decision === 'deny' &&
            l.outcome === 'denied' &&
            l.rule === 'secret-guard' &&
            l.code === 'FABRIC_ERR_CALLBACK_ANSWER_DENIED' &&
            typeof l.argsDigest === 'string',
        ),
        `${upstream} ${method}`,
      ).toBe(true);
    }
    const refusals = logs.filter((l) => l.method !== undefined && l.policy === 'secret-guard');
    expect(refusals.length).toBeGreaterThanOrEqual(4);
    expect(refusals.every((l) => l.level === 'warn' && l.agentId === id)).toBe(true);
    expect(JSON.stringify(logs)).not.toContain(CREDENTIAL);
  });

  it('the checked answers are counted in /metrics by method and decision', async () => {
    const res = await fetch(new URL('/metrics', sidecar.url), {
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    const body = await res.text();
    const count = (method: string, decision: string): number | undefined => {
      const line = body
        .split('\n')
        .find((l) =>
          l.startsWith(
            `agent_fabric_callback_answers_total{method="${method}",decision="${decision}"} `,
          ),
        );
      return line === undefined ? undefined : Number(line.split(' ')[1]);
    };
    // server-everything once each way; the fixture over HTTP and over the bridge: a result and an
    // error answer each way for sampling, a result each way for elicitation and roots.
    expect(count('sampling/createMessage', 'deny')).toBe(5);
    expect(count('sampling/createMessage', 'allow')).toBe(5);
    for (const method of ['elicitation/create', 'roots/list']) {
      expect(count(method, 'deny')).toBe(2);
      expect(count(method, 'allow')).toBe(2);
    }
  });

  it('the session and the upstreams go on: innocent answers and plain calls are served', async () => {
    answering.text = INNOCENT;
    expect(await received(agent, 'cb', 'sample')).toContain(INNOCENT);
    const echo = await agent.callTool({ name: 'web__echo', arguments: { message: 'x' } });
    expect(text(echo)).toBe('Echo: x');
  });
});

describe('secret-guard checks the answers of an in-process stdio agent (agent-fabric mcp --in-process)', () => {
  const dir = tempDir('callback-answers-stdio');
  const configFile = join(dir, 'fabric.yaml');

  beforeAll(() => {
    writeFileSync(
      configFile,
      `adminToken: admin-token-for-callback-tests-0123456789
upstreams:
  cb:
    command: '\${NODE}'
    args: ['${CALLBACK_SERVER}']
    stderr: ignore
    forwardRoots: true
plugins:
  - module: secret-guard
policies:
  - name: default-allow
    rules: [{ tool: '*', action: allow }]
agents:
  - name: agent
`,
    );
  });

  it('refuses answers with a credential and relays innocent ones', async () => {
    const { client } = await cliStdioClient(['mcp', '--in-process', '--config', configFile], {
      capabilities: CALLBACK_CAPABILITIES,
    });
    try {
      const answering: Answering = { text: INNOCENT };
      answerFrom(client, answering);
      await expectCallbacksGuarded(client, answering);
    } finally {
      await client.close();
    }
  });
});

describe('a policy plugin whose answer check fails refuses the answer (fail closed), contained', () => {
  const dir = tempDir('callback-answers-failing');
  const plugin = join(dir, 'failing-check.mjs');
  let sidecar: Sidecar;
  let agent: Client;
  const answering: Answering = { text: INNOCENT };

  beforeAll(async () => {
    // Written outside the repository, importing nothing, loaded by path like a user's plugin.
    writeFileSync(
      plugin,
      `export default {
  name: 'failing-check', version: '0.1.0', kind: 'policy', api: 2,
  create: () => ({
    name: 'failing-check',
    decide: () => undefined,
    checkCallbackAnswer(ctx) {
      const said = JSON.stringify(ctx.result ?? ctx.error);
      if (said.includes('throw')) throw new Error('the check broke');
      if (said.includes('reject')) return Promise.reject(new Error('the check rejected'));
      if (said.includes('hang')) return new Promise(() => undefined);
      if (said.includes('nonsense')) return 'yes';
      if (said.includes('approve')) return { action: 'require_approval', reason: 'ask a human' };
      if (said.includes('forbidden')) return { action: 'deny', reason: 'no forbidden words' };
      return { action: 'allow' };
    },
  }),
};
`,
    );
    sidecar = await startTestSidecar(
      {
        upstreams: {
          cb: { command: process.execPath, args: [CALLBACK_SERVER], stderr: 'ignore' },
        },
        policies: [DEFAULT_ALLOW],
        plugins: [{ module: plugin }],
        agents: [{ name: 'agent' }],
      },
      { fabricOptions: { policy: { callbackCheckTimeoutMs: 300 } } },
    );
    agent = await answeringClient(sidecar, 'agent', answering);
  });

  afterAll(async () => {
    await agent?.close();
    await closeSidecar(sidecar);
  });

  it('a throw, a rejection, no answer in time, nonsense and require_approval each refuse', async () => {
    const cases: [string, string][] = [
      ['throw', 'policy provider failing-check failed: the check broke'],
      ['reject', 'policy provider failing-check failed: the check rejected'],
      ['hang', 'policy provider failing-check failed: did not answer within 300 ms'],
      ['nonsense', 'policy provider failing-check returned an invalid verdict (string)'],
      ['approve', 'ask a human (an answer to a callback cannot wait for an approval: refused)'],
      ['forbidden', 'no forbidden words'],
    ];
    for (const [word, reason] of cases) {
      answering.text = `please ${word}`;
      const got = await received(agent, 'cb', 'sample');
      expect(got, word).toContain(`was refused: ${reason}`);
      expect(got, word).toContain('FABRIC_ERR_CALLBACK_ANSWER_DENIED');
      expect(got, word).not.toContain(`please ${word}`);
    }
    answering.text = INNOCENT;
    expect(await received(agent, 'cb', 'sample')).toContain(INNOCENT);
    const counts = await answerCounts(agent, 'cb');
    expect(Object.values(counts).every((n) => n === 1)).toBe(true);
  });

  it("a backend whose check itself fails refuses the answer too (the gateway's own fail-closed)", async () => {
    // Fault injection at the seam (an embedder's backend): the fabric's own check never throws.
    const check = vi
      .spyOn(sidecar.backend, 'checkCallbackAnswer')
      .mockRejectedValueOnce(new Error('backend broke'));
    try {
      answering.text = INNOCENT;
      const got = await received(agent, 'cb', 'sample');
      expect(got).toContain('was refused: the answer could not be checked: backend broke');
      expect(got).not.toContain(INNOCENT);
      expect(check).toHaveBeenCalledTimes(1);
      expect(await received(agent, 'cb', 'sample')).toContain(INNOCENT);
    } finally {
      check.mockRestore();
    }
  });
});

describe('agent_fabric_callback_answers_total without a provider that checks answers', () => {
  let sidecar: Sidecar;
  let agent: Client;
  const answering: Answering = { text: INNOCENT };

  beforeAll(async () => {
    sidecar = await startTestSidecar({
      upstreams: { cb: { command: process.execPath, args: [CALLBACK_SERVER], stderr: 'ignore' } },
      policies: [DEFAULT_ALLOW],
      agents: [{ name: 'agent' }],
    });
    agent = await answeringClient(sidecar, 'agent', answering);
  });

  afterAll(async () => {
    await agent?.close();
    await closeSidecar(sidecar);
  });

  it('counts no answer: none was checked (README: answers checked by a policy provider)', async () => {
    expect(await received(agent, 'cb', 'sample')).toContain(INNOCENT);
    const res = await fetch(new URL('/metrics', sidecar.url), {
      headers: { authorization: `Bearer ${ADMIN_TOKEN}` },
    });
    expect(await res.text()).not.toContain('agent_fabric_callback_answers_total{');
  });
});
