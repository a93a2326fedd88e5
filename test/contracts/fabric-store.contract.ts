/**
 * The contract every FabricStore keeps, for the collections it persists (tasks, agents, pools)
 * and its BudgetStore. `runFabricStoreContract({ name, create, reopen })` registers the tests; each
 * store's test file calls it. `reopen` (durable stores only) closes a store and opens a new one
 * on the same backing, as a restart would: everything written must be there again.
 */
import { afterEach, describe, expect, it } from 'vitest';
import type { BudgetScopeSnapshot, BudgetStore } from '../../src/budget/budget-store.js';
import { BudgetManager } from '../../src/budget/budget-manager.js';
import { AgentStatus } from '../../src/agent.js';
import { LifecycleManager, type AgentRecord } from '../../src/lifecycle/lifecycle-manager.js';
import { TaskRecord } from '../../src/scheduler/task-record.js';
import { ApprovalManager, type Approval } from '../../src/policy/approval-manager.js';
import type { FabricStore } from '../../src/store/store.js';
import { Priority, TaskStatus } from '../../src/task.js';

/** A store under test, with the budget store it carries (or one made for it). */
export type StoreUnderTest = FabricStore<unknown, AgentRecord, { poolId: string; n: number }> & {
  readonly budgets: BudgetStore;
};

export interface FabricStoreContract {
  name: string;
  create(): Promise<StoreUnderTest>;
  /** Closes `store` and opens its backing again (durable stores only). */
  reopen?: (store: StoreUnderTest) => Promise<StoreUnderTest>;
}

function agentRecord(id: string, extra: Partial<AgentRecord> = {}): AgentRecord {
  return {
    id,
    name: `agent-${id}`,
    model: 'm',
    capabilities: ['a'],
    isolation: {},
    budget: undefined,
    poolId: undefined,
    executor: 'remote',
    heartbeatMode: 'manual',
    labels: { team: 'x' },
    status: AgentStatus.HEALTHY,
    createdAt: 1,
    lastHeartbeat: 2,
    terminatedAt: undefined,
    credentialHash: 'f'.repeat(64),
    ...extra,
  };
}

/** A task record with every field set, as the scheduler would have it mid-life. */
function taskRecord(id: string): TaskRecord {
  const t = new TaskRecord(
    id,
    'review',
    { files: ['a.ts'], nested: { n: 1 } },
    Priority.HIGH,
    'agent-1',
    'pool-1',
    true,
    'tenant-a',
    2_000_000_000_000,
    30_000,
    4,
    17,
    1_700_000_000_000,
  );
  t.notBefore = 1_700_000_000_500;
  t.status = TaskStatus.RUNNING;
  t.attempt = 2;
  t.assignedAgentId = 'agent-1';
  t.startedAt = 1_700_000_001_000;
  t.error = { code: 'FABRIC_ERR_TASK_EXECUTION', message: 'first attempt failed' };
  t.progress = { pct: 50 };
  return t;
}

/** A stored approval record, as the ApprovalManager writes it. */
function approvalRecord(id: string, extra: Partial<Approval> = {}): Approval {
  return {
    id,
    agentId: 'a',
    tool: 'execute_code',
    params: { code: 'x' },
    policy: 'p',
    rule: 0,
    status: 'pending',
    createdAt: 1_000,
    expiresAt: Date.now() + 3_600_000,
    ...extra,
  };
}

/** A budget state source whose snapshot the test controls. */
function source(spent: number): { snap: BudgetScopeSnapshot; toJSON(): BudgetScopeSnapshot } {
  const snap: BudgetScopeSnapshot = {
    version: 1,
    config: null,
    tokens: { windowMs: 1000, bucketMs: 100, buckets: [] } as never,
    cost: { spent } as never,
    alerts: {
      tokensWarned: false,
      tokensExhausted: false,
      costWarned: false,
      costExhausted: false,
    },
  };
  return { snap, toJSON: () => structuredClone(snap) };
}

export function runFabricStoreContract(contract: FabricStoreContract): void {
  describe(`FabricStore contract: ${contract.name}`, () => {
    const open: StoreUnderTest[] = [];
    afterEach(async () => {
      for (const s of open.splice(0)) await s.close();
    });
    const create = async (): Promise<StoreUnderTest> => {
      const s = await contract.create();
      open.push(s);
      return s;
    };
    const reopen = async (s: StoreUnderTest): Promise<StoreUnderTest> => {
      open.splice(open.indexOf(s), 1);
      const again = await contract.reopen!(s);
      open.push(again);
      return again;
    };

    it('starts empty', async () => {
      const s = await create();
      expect(s.tasks.size).toBe(0);
      expect(s.agents.size).toBe(0);
      expect(s.pools.size).toBe(0);
      expect(s.agents.get('nope')).toBeUndefined();
      expect([...s.agents.values()]).toEqual([]);
      expect(s.budgets.load('agent:nope')).toBeUndefined();
    });

    it('puts, replaces, lists and deletes records', async () => {
      const s = await create();
      s.agents.put('a', agentRecord('a'));
      s.agents.put('b', agentRecord('b'));
      s.agents.put('a', agentRecord('a', { model: 'replaced' }));
      expect(s.agents.size).toBe(2);
      expect(s.agents.get('a')?.model).toBe('replaced');
      expect([...s.agents.values()].map((r) => r.id).sort()).toEqual(['a', 'b']);
      expect(s.agents.delete('a')).toBe(true);
      expect(s.agents.delete('a')).toBe(false);
      expect(s.agents.get('a')).toBeUndefined();
      expect(s.agents.size).toBe(1);
      s.pools.put('p', { poolId: 'p', n: 1 });
      expect(s.pools.get('p')).toEqual({ poolId: 'p', n: 1 });
    });

    it('returns the record last put, so a manager can change it and put it again', async () => {
      const s = await create();
      const rec = agentRecord('a');
      s.agents.put('a', rec);
      const held = s.agents.get('a')!;
      held.status = AgentStatus.DEGRADED;
      s.agents.put('a', held);
      expect(s.agents.get('a')?.status).toBe(AgentStatus.DEGRADED);
    });

    it('keeps task records: the record last put, changed and put again; delete forgets it', async () => {
      const s = await create();
      const tasks = s.tasks as FabricStore<TaskRecord>['tasks'];
      const t = taskRecord('t1');
      tasks.put('t1', t);
      tasks.put('t2', taskRecord('t2'));
      t.status = TaskStatus.COMPLETED;
      t.finishedAt = 1_700_000_002_000;
      t.result = { ok: true };
      tasks.put('t1', t);
      expect(tasks.get('t1')).toBe(t);
      expect(tasks.size).toBe(2);
      expect(tasks.delete('t2')).toBe(true);
      expect(tasks.get('t2')).toBeUndefined();
      expect([...tasks.values()]).toEqual([t]);
    });

    it('keeps budget state: load sees the latest change, delete forgets it', async () => {
      const s = await create();
      const src = source(1);
      s.budgets.changed('agent:a', src);
      expect(s.budgets.load('agent:a')).toEqual(src.snap);
      src.snap.cost = { spent: 2 } as never;
      s.budgets.changed('agent:a', src);
      expect(s.budgets.load('agent:a')).toEqual(src.snap);
      s.budgets.delete('agent:a');
      expect(s.budgets.load('agent:a')).toBeUndefined();
    });

    it('keeps approvals as plain records: put, replace, list, delete', async () => {
      const s = await create();
      expect(s.approvals.size).toBe(0);
      s.approvals.put('apr_1', approvalRecord('apr_1'));
      s.approvals.put('apr_2', approvalRecord('apr_2'));
      s.approvals.put('apr_1', approvalRecord('apr_1', { status: 'denied', approver: 'bob' }));
      expect(s.approvals.get('apr_1')).toMatchObject({ status: 'denied', approver: 'bob' });
      expect([...s.approvals.values()].map((a) => a.id).sort()).toEqual(['apr_1', 'apr_2']);
      expect(s.approvals.delete('apr_2')).toBe(true);
      expect(s.approvals.delete('apr_2')).toBe(false);
      expect(s.approvals.size).toBe(1);
    });

    it('serves an ApprovalManager: every create and decision is a record in the store', async () => {
      const s = await create();
      const m = new ApprovalManager({ maxResolved: 1 }, s.approvals);
      try {
        const a = m.create({ agentId: 'a', tool: 'execute_code', params: { code: '1' } });
        expect(s.approvals.get(a.id)).toEqual(a);
        m.approve(a.id, { approver: 'alice', reason: 'ok' });
        expect(s.approvals.get(a.id)).toMatchObject({
          status: 'approved',
          approver: 'alice',
          decisionReason: 'ok',
        });
        // Retention: the oldest decided approval beyond maxResolved leaves the store too.
        const b = m.create({ agentId: 'a', tool: 'execute_code' });
        m.deny(b.id, { approver: 'bob' });
        expect(s.approvals.get(a.id)).toBeUndefined();
        expect(s.approvals.get(b.id)?.status).toBe('denied');
        expect(s.approvals.size).toBe(1);
      } finally {
        m.close();
      }
    });

    it('serves a BudgetManager: usage recorded is what it loads again', async () => {
      const s = await create();
      const first = new BudgetManager({ store: s.budgets });
      first.setBudget('a', { maxCostPerDay: 5 });
      first.recordUsage('a', { tokens: 0, cost: 5 });
      expect(first.check('a', { tokens: 0, cost: 1 }).allowed).toBe(false);
      const second = new BudgetManager({ store: s.budgets });
      expect(second.check('a', { tokens: 0, cost: 1 }).allowed).toBe(false);
      expect(second.check('b', { tokens: 0, cost: 1 }).allowed).toBe(true);
    });

    if (contract.reopen === undefined) return;

    describe('across a reopen (durable)', () => {
      it('keeps every record put and none deleted, including changes made just before close', async () => {
        let s = await create();
        s.agents.put('a', agentRecord('a'));
        s.agents.put('b', agentRecord('b'));
        s.pools.put('p', { poolId: 'p', n: 1 });
        await Promise.resolve();
        s.agents.delete('b');
        const a = s.agents.get('a')!;
        a.status = AgentStatus.TERMINATED;
        a.terminatedAt = 42;
        s.agents.put('a', a);
        // no turn passes: close must commit these
        s = await reopen(s);
        expect([...s.agents.values()].map((r) => r.id)).toEqual(['a']);
        expect(s.agents.get('a')).toEqual({
          ...agentRecord('a'),
          status: 'TERMINATED',
          terminatedAt: 42,
        });
        expect(s.pools.get('p')).toEqual({ poolId: 'p', n: 1 });
      });

      it('keeps a task record as its plain data, from which the same task is rebuilt', async () => {
        let s = await create();
        const t = taskRecord('t1');
        s.tasks.put('t1', t);
        await Promise.resolve();
        s.tasks.put('gone', taskRecord('gone'));
        t.status = TaskStatus.COMPLETED;
        t.finishedAt = 1_700_000_002_000;
        t.result = { ok: [1, 2] };
        s.tasks.put('t1', t);
        s.tasks.delete('gone');
        // no turn passes: close must commit these
        s = await reopen(s);
        expect(s.tasks.size).toBe(1);
        const loaded = s.tasks.get('t1');
        // Plain data — every field needed to rebuild, nothing of the runtime (heap slots, flow).
        expect(loaded).not.toBeInstanceOf(TaskRecord);
        expect(loaded).toEqual(JSON.parse(JSON.stringify(t.toJSON())));
        expect(Object.keys(loaded as object)).not.toContain('qIndex');
        const rebuilt = TaskRecord.fromData(loaded);
        expect(rebuilt.snapshot()).toEqual(t.snapshot());
        expect(rebuilt.toJSON()).toEqual(t.toJSON());
      });

      it('keeps approvals: a pending one keeps its expiry and can be decided after the reopen', async () => {
        let s = await create();
        const before = new ApprovalManager({ defaultTtlSeconds: 3600 }, s.approvals);
        const a = before.create({ agentId: 'a', tool: 'execute_code', params: { code: 'rm' } });
        const decided = before.create({ agentId: 'a', tool: 't' });
        before.deny(decided.id, { approver: 'bob' });
        before.close();
        s = await reopen(s);
        const after = new ApprovalManager({ defaultTtlSeconds: 3600 }, s.approvals);
        try {
          const restored = after.getApproval(a.id)!;
          expect(restored).toEqual({ ...a, orphaned: true });
          expect(after.getApproval(decided.id)).toMatchObject({
            status: 'denied',
            approver: 'bob',
          });
          expect(after.listApprovals({ status: 'pending' }).map((x) => x.id)).toEqual([a.id]);
          const approved = after.approve(a.id, { approver: 'alice' });
          expect(approved).toMatchObject({ status: 'approved', approver: 'alice', orphaned: true });
          expect(s.approvals.get(a.id)).toEqual(approved);
        } finally {
          after.close();
        }
      });

      it('expires on reopen what expired while closed, at its expiry', async () => {
        let s = await create();
        const expiresAt = Date.now() - 5_000;
        s.approvals.put('apr_old', approvalRecord('apr_old', { expiresAt }));
        s = await reopen(s);
        const m = new ApprovalManager({}, s.approvals);
        try {
          expect(m.getApproval('apr_old')).toMatchObject({
            status: 'expired',
            decidedAt: expiresAt,
          });
          expect(s.approvals.get('apr_old')?.status).toBe('expired');
          expect(() => m.approve('apr_old', { approver: 'alice' })).toThrow(/already expired/);
        } finally {
          m.close();
        }
        s = await reopen(s);
        expect(s.approvals.get('apr_old')?.status).toBe('expired');
      });

      it('counts restored pending approvals against maxPendingPerAgent', async () => {
        let s = await create();
        const before = new ApprovalManager({ maxPendingPerAgent: 2 }, s.approvals);
        before.create({ agentId: 'a', tool: 't' });
        before.create({ agentId: 'a', tool: 't' });
        before.close();
        s = await reopen(s);
        const after = new ApprovalManager({ maxPendingPerAgent: 2 }, s.approvals);
        try {
          expect(() => after.create({ agentId: 'a', tool: 't' })).toThrow(
            expect.objectContaining({ code: 'FABRIC_ERR_APPROVAL_LIMIT' }),
          );
          expect(after.create({ agentId: 'b', tool: 't' }).status).toBe('pending');
          expect(s.approvals.size).toBe(3);
        } finally {
          after.close();
        }
      });

      it('keeps budget usage: an agent at its limit is still refused', async () => {
        let s = await create();
        const before = new BudgetManager({ store: s.budgets });
        before.setBudget('a', { maxCostPerDay: 3 });
        before.recordUsage('a', { tokens: 0, cost: 3 });
        s = await reopen(s);
        const after = new BudgetManager({ store: s.budgets });
        const check = after.check('a', { tokens: 0, cost: 1 });
        expect(check.allowed).toBe(false);
        expect(after.getStatus('a').costUsed).toBe(3);
      });

      it('keeps credentials (as hashes only): a credential issued before authenticates after', async () => {
        let s = await create();
        const lm = new LifecycleManager({ agents: s.agents });
        const spawned = lm.spawnSync({ name: 'w', model: 'm', executor: 'remote' });
        const gone = lm.spawnSync({ name: 'g', model: 'm', executor: 'remote' });
        await lm.terminate(gone.id, { drainTimeoutSeconds: 0 });
        await lm.close();
        for (const r of s.agents.values()) {
          expect(JSON.stringify(r)).not.toContain(spawned.credential);
          expect(JSON.stringify(r)).not.toContain(gone.credential);
        }
        s = await reopen(s);
        const again = new LifecycleManager({ agents: s.agents });
        try {
          expect(again.authenticate(spawned.credential).id).toBe(spawned.id);
          expect(() => again.authenticate(gone.credential)).toThrow(/revoked/);
          expect(again.peek(gone.id)?.status).toBe(AgentStatus.TERMINATED);
          expect(again.activeAgents).toBe(1);
        } finally {
          await again.close();
        }
      });
    });
  });
}
