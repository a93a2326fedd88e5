/**
 * Runs the README's "Policies and approvals" and "Budgets" examples, and checks that the README
 * still shows exactly this code (import lines aside), so the two cannot drift apart.
 */
import { readFileSync } from 'node:fs';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { BudgetManager } from '../../src/budget/index.js';
import { PolicyEngine } from '../../src/policy/index.js';

const readme = readFileSync(new URL('../../README.md', import.meta.url), 'utf8');
const self = readFileSync(new URL(import.meta.url), 'utf8');

function readmeExample(section: string): string {
  const start = readme.indexOf(`## ${section}\n`);
  expect(start).toBeGreaterThanOrEqual(0);
  const body = readme.slice(start + section.length + 4);
  const block = /```ts\n([\s\S]*?)```/.exec(body.slice(0, body.indexOf('\n## ')));
  expect(block).not.toBeNull();
  return normalize(block![1]!);
}

function ownExample(name: string): string {
  const start = self.indexOf(`// <${name}>\n`);
  const end = self.indexOf(`// </${name}>`);
  expect(start).toBeGreaterThanOrEqual(0);
  return normalize(
    self
      .slice(start + name.length + 5, end)
      .split('\n')
      .map((l) => l.replace(/^ {4}/, ''))
      .join('\n'),
  );
}

function normalize(code: string): string {
  return code
    .split('\n')
    .filter((l) => !l.startsWith('import '))
    .join('\n')
    .trim();
}

describe('README examples', () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it('Policies and approvals', async () => {
    expect(ownExample('policy')).toBe(readmeExample('Policies and approvals'));
    // <policy>
    const engine = new PolicyEngine(); // when no rule matches: deny (option `defaultAction`)

    // Define policy
    engine.addPolicy({
      name: 'code-execution',
      rules: [
        { tool: 'execute_code', action: 'require_approval', conditions: { language: 'python' } },
        { tool: 'file_write', action: 'deny', conditions: { path: '/etc/*' } },
      ],
    });

    // An approval UI listens for new approvals; this one approves everything.
    engine.approvals.on('created', (a) => engine.approvals.approve(a.id, { approver: 'alice' }));

    // Check access
    const decision = await engine.evaluate({
      agentId: 'agent-1',
      tool: 'execute_code',
      params: { language: 'python', code: '...' },
    });
    if (decision.action === 'require_approval') {
      // Wait for human approval
      const result = await engine.approvals.waitForApproval(decision.approvalId!);
      if (!result.approved) throw new Error(`not approved: ${result.status}`);
    }

    const write = engine.evaluateSync({
      agentId: 'agent-1',
      tool: 'file_write',
      params: { path: '/tmp/../etc/passwd' },
    });
    // write.action === 'deny', write.policy === 'code-execution', write.rule === 1
    // </policy>
    expect(decision.action).toBe('require_approval');
    expect(engine.approvals.getApproval(decision.approvalId!)).toMatchObject({
      status: 'approved',
      approver: 'alice',
    });
    expect(write).toMatchObject({ action: 'deny', policy: 'code-execution', rule: 1 });
    engine.close();
  });

  it('Budgets', () => {
    vi.useFakeTimers();
    vi.setSystemTime(Date.parse('2026-03-02T10:00:00Z'));
    const log = vi.spyOn(console, 'log').mockImplementation(() => {});
    expect(ownExample('budget')).toBe(readmeExample('Budgets'));
    // <budget>
    const budget = new BudgetManager();

    // Set budget for agent
    budget.setBudget('agent-1', {
      maxTokensPerHour: 100_000,
      maxCostPerDay: 10.0,
      warnAtPercent: 80,
    });
    budget.on('warning', (alert) =>
      console.warn(`${alert.scope} at ${alert.percentUsed}% of ${alert.limit}`),
    );

    // Record usage
    budget.recordUsage('agent-1', { tokens: 1500, cost: 0.05 });

    // Check status
    const status = budget.getStatus('agent-1');
    console.log(`Tokens used: ${status.tokensUsed}/${status.tokensLimit}`);
    console.log(`Cost: $${status.costUsed.toFixed(2)}/$${status.costLimit.toFixed(2)}`);

    // Around a call: reserve an estimate (throws BudgetExceededError if it does not fit), then settle.
    const reservation = budget.reserve('agent-1', { tokens: 2_000, cost: 0.1 });
    budget.settle(reservation, { tokens: 1_800, cost: 0.08 });
    // </budget>
    expect(log.mock.calls).toEqual([['Tokens used: 1500/100000'], ['Cost: $0.05/$10.00']]);
    expect(budget.getStatus('agent-1')).toMatchObject({ tokensUsed: 3300, costUsed: 0.13 });
  });
});
