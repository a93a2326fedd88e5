/**
 * policy-grpc's `checkCallbackAnswers`: a REAL Python policy service (grpcio, stubs generated
 * from proto/fabric/v1/policy_provider.proto at test time) is asked `CheckCallbackAnswer` about
 * every answer an agent gives to an upstream's callback, behind a real sidecar, with the official
 * SDK client as the agent and a stdio upstream (test/fixtures/gateway/callback-server.mjs) that
 * reports exactly what each callback got back. What the upstream received is what is asserted:
 * a refused answer never reaches it. Also: off by default (the service is never asked), fails
 * closed (an error status, UNIMPLEMENTED from a service without the method, a missed deadline, an
 * unusable decision, an answer too deep or too big to send), and a check given up mid-call is
 * cancelled.
 */
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { McpError } from '@modelcontextprotocol/sdk/types.js';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { AgentFabric } from '../../src/fabric.js';
import { PluginHost } from '../../src/plugins/plugin-host.js';
import type { Sidecar } from '../../src/server/sidecar.js';
import { FIRST_PARTY } from '../contracts/load-plugin.js';
import {
  agentId,
  answeringClient,
  CALLBACK_SERVER,
  closeSidecar,
  DEFAULT_ALLOW,
  startTestSidecar,
  text,
  type Answering,
} from '../fixtures/gateway/harness.js';
import {
  EXAMPLE_SERVICE,
  pythonGrpc,
  startPythonPolicyService,
  type PythonPolicyService,
} from '../fixtures/grpc/python-policy-service.js';

const PLUGIN = FIRST_PARTY('policy-grpc');
const TOKEN = 'py-answer-token-51c2';
const runs = pythonGrpc || process.env.CI !== undefined;

/** The error an agent's client answers a callback with while `asError`: its text as data too. */
const said = (text: string): McpError => new McpError(-32001, text, { said: text });

/**
 * A sidecar with the callback upstream `cb`, policy-grpc loaded with `options`, one agent. The
 * plugin sits below the allow-all rule, so the tool calls themselves are allowed whatever the
 * service's `Decide` says: only its `CheckCallbackAnswer` is under test.
 */
function sidecarWith(options: Record<string, unknown>): Promise<Sidecar> {
  return startTestSidecar({
    upstreams: {
      cb: { command: process.execPath, args: [CALLBACK_SERVER], stderr: 'ignore' },
    },
    policies: [DEFAULT_ALLOW],
    plugins: [
      { module: PLUGIN, options: { insecure: true, deadlineMs: 1000, priority: -1, ...options } },
    ],
    agents: [{ name: 'agent', labels: { tier: 'gold' } }],
  });
}

describe.runIf(runs)("policy-grpc checks agents' answers to upstream callbacks", () => {
  let service: PythonPolicyService;
  let sidecar: Sidecar;
  let agent: Client;
  const answering: Answering = { text: 'hello' };

  /** What the fixture's `tool` (sample, elicit, roots) reports it received. */
  const received = async (tool: string, client = agent): Promise<string> =>
    text(await client.callTool({ name: `cb__${tool}`, arguments: {} }));

  beforeAll(async () => {
    service = await startPythonPolicyService(undefined, [TOKEN]);
    sidecar = await sidecarWith({
      target: service.address,
      authToken: TOKEN,
      checkCallbackAnswers: true,
    });
    agent = await answeringClient(sidecar, 'agent', answering, said);
  });

  afterAll(async () => {
    await agent?.close();
    await closeSidecar(sidecar);
    await service?.close();
  });

  it('an allowed answer reaches the upstream unchanged; the service got the agent, upstream, method, request and answer', async () => {
    answering.text = 'hello upstream';
    const before = service.answers.length;
    const got = await received('sample');
    expect(got).toMatch(/^received: /);
    expect(got).toContain('hello upstream');
    const asked = service.answers.slice(before);
    expect(asked).toHaveLength(1);
    expect(asked[0]).toMatchObject({
      agent: agentId(sidecar, 'agent'),
      labels: { tier: 'gold' },
      upstream: 'cb',
      method: 'sampling/createMessage',
      error: null,
      authorized: true,
    });
    expect(JSON.parse(asked[0]!.params)).toMatchObject({
      messages: [{ role: 'user', content: { type: 'text', text: 'say something' } }],
    });
    expect(JSON.parse(asked[0]!.result!)).toMatchObject({
      role: 'assistant',
      content: { type: 'text', text: 'hello upstream' },
    });
  });

  it('DENY: sampling, elicitation and roots answers are refused; the upstream gets the reason, never the answer', async () => {
    for (const [tool, method] of [
      ['sample', 'sampling/createMessage'],
      ['elicit', 'elicitation/create'],
      ['roots', 'roots/list'],
    ] as const) {
      answering.text = `deny-me: the secret plan ${tool}`;
      const refused = await received(tool);
      expect(refused).toMatch(/^error -32600: /);
      expect(refused).toContain(
        `the agent's answer to ${method} of upstream cb was refused: python refuses ${agentId(sidecar, 'agent')}'s answer`,
      );
      expect(refused).toContain('"policy":"policy-grpc"');
      expect(refused).toContain('"code":"FABRIC_ERR_CALLBACK_ANSWER_DENIED"');
      expect(refused).not.toContain('secret plan');
      answering.text = `fine ${tool}`;
      expect(await received(tool)).toContain(`fine ${tool}`);
    }
  });

  it("an agent's error answer is checked too: the service sees its code, message and data", async () => {
    answering.asError = true;
    try {
      answering.text = 'deny-me in an error';
      const before = service.answers.length;
      const refused = await received('sample');
      expect(refused).toContain('FABRIC_ERR_CALLBACK_ANSWER_DENIED');
      expect(refused).not.toContain('deny-me in an error');
      const [asked] = service.answers.slice(before);
      expect(asked!.result).toBeNull();
      expect(asked!.error).toMatchObject({ code: -32001, data: '{"said":"deny-me in an error"}' });
      expect(asked!.error!.message).toContain('deny-me in an error');
      answering.text = 'cannot sample now';
      expect(await received('sample')).toMatch(/^error -32001: .*cannot sample now/);
    } finally {
      answering.asError = false;
    }
  });

  it('ABSTAIN lets the answer through; REQUIRE_APPROVAL refuses it (nobody can approve in time)', async () => {
    answering.text = 'abstain-me';
    expect(await received('elicit')).toContain('abstain-me');
    answering.text = 'approve-me';
    const refused = await received('elicit');
    expect(refused).toContain('FABRIC_ERR_CALLBACK_ANSWER_DENIED');
    expect(refused).toContain('a human should see this (an answer to a callback cannot wait');
    expect(refused).not.toContain('approve-me');
  });

  it('fails closed: an error status, a missed deadline or an unusable decision refuses the answer', async () => {
    for (const [word, why] of [
      ['error-me', /could not decide \(INTERNAL: answer checker down\); denied, failing closed/],
      ['slow-me', /could not decide \(DEADLINE_EXCEEDED: .*\); denied, failing closed/],
      ['unspecified-me', /unusable decision \(0\)/],
    ] as const) {
      answering.text = word;
      const refused = await received('roots');
      expect(refused).toContain('FABRIC_ERR_CALLBACK_ANSWER_DENIED');
      expect(refused).toMatch(why);
      expect(refused).not.toContain(`"name":"${word}"`);
    }
    answering.text = 'after the failures';
    expect(await received('roots')).toContain('after the failures');
  });
});

describe.runIf(runs)('policy-grpc callback-answer checks: opt-in, and fail closed', () => {
  let service: PythonPolicyService;

  beforeAll(async () => {
    service = await startPythonPolicyService();
  });

  afterAll(async () => {
    await service?.close();
  });

  it('off by default: the service is never asked, and answers pass as before', async () => {
    const sidecar = await sidecarWith({ target: service.address });
    const agent = await answeringClient(sidecar, 'agent', { text: 'deny-me, if anyone asked' });
    try {
      const before = service.answers.length;
      const got = text(await agent.callTool({ name: 'cb__sample', arguments: {} }));
      expect(got).toContain('deny-me, if anyone asked');
      expect(service.answers.length).toBe(before);
    } finally {
      await agent.close();
      await closeSidecar(sidecar);
    }
  });

  it('a service without CheckCallbackAnswer (UNIMPLEMENTED) refuses every answer', async () => {
    const example = await startPythonPolicyService(EXAMPLE_SERVICE);
    const sidecar = await sidecarWith({ target: example.address, checkCallbackAnswers: true });
    const agent = await answeringClient(sidecar, 'agent', { text: 'an innocent answer' });
    try {
      const refused = text(await agent.callTool({ name: 'cb__sample', arguments: {} }));
      expect(refused).toContain('FABRIC_ERR_CALLBACK_ANSWER_DENIED');
      expect(refused).toMatch(/could not decide \(UNIMPLEMENTED/);
      expect(refused).not.toContain('an innocent answer');
    } finally {
      await agent.close();
      await closeSidecar(sidecar);
      await example.close();
    }
  });

  describe('through the library (AgentFabric.checkCallbackAnswer)', () => {
    let fabric: AgentFabric;
    let host: PluginHost;
    let id: string;

    beforeAll(async () => {
      fabric = new AgentFabric();
      host = new PluginHost(fabric);
      await host.load(PLUGIN, {
        target: service.address,
        insecure: true,
        deadlineMs: 5000,
        checkCallbackAnswers: true,
      });
      id = (await fabric.spawn({ model: 'm', name: 'a', executor: 'remote' })).id;
    });

    afterAll(async () => {
      await host?.close();
      await fabric?.close();
    });

    const check = (result: Record<string, unknown>, signal = new AbortController().signal) =>
      fabric.checkCallbackAnswer(
        { agentId: id, upstream: 'u', method: 'sampling/createMessage', params: {}, result },
        signal,
      );

    it('an answer too deep or too big is refused without asking the service', async () => {
      let deep: Record<string, unknown> = { leaf: 'x' };
      for (let i = 0; i < 200; i++) deep = { d: deep };
      const before = service.answers.length;
      const a = await check(deep);
      expect(a).toMatchObject({ allowed: false, policy: 'policy-grpc' });
      expect(a.allowed === false && a.reason).toMatch(/deeper than 64 levels.*failing closed/);
      const b = await check({ blob: 'x'.repeat(1_100_000) });
      expect(b.allowed === false && b.reason).toMatch(/exceed maxArgumentsBytes 1048576/);
      expect((await check({ fine: 'yes' })).allowed).toBe(true);
      // The service prints its line before it answers, but the line may reach us after the
      // answer; a line of the two refused checks would come before it.
      await vi.waitFor(() => expect(service.answers.length).toBeGreaterThan(before));
      expect(service.answers.length).toBe(before + 1);
      expect(service.answers.at(-1)!.result).toBe('{"fine":"yes"}');
    });

    it('a check given up while the service thinks is cancelled: it rejects with the reason, deciding nothing', async () => {
      const giveUp = new AbortController();
      const pending = check({ text: 'slow-me' }, giveUp.signal);
      const reason = new Error('the upstream cancelled its request');
      setTimeout(() => giveUp.abort(reason), 200);
      await expect(pending).rejects.toBe(reason);
      // The channel still answers afterwards.
      expect((await check({ text: 'after the cancel' })).allowed).toBe(true);
    });
  });
});
