import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import {
  ApprovalDecidedError,
  ApprovalLimitError,
  ApprovalNotFoundError,
  ClosedError,
  ConfigError,
  InvalidArgumentError,
  WaitTimeoutError,
} from '../../src/errors.js';
import { ApprovalManager, type Approval } from '../../src/policy/approval-manager.js';
import { MemoryCollection } from '../../src/store/memory-store.js';

const request = { agentId: 'agent-1', tool: 'execute_code', params: { language: 'python' } };

describe('ApprovalManager', () => {
  let approvals: ApprovalManager;
  beforeEach(() => {
    vi.useFakeTimers();
    vi.setSystemTime(new Date('2026-03-02T10:00:00Z'));
    approvals = new ApprovalManager({ defaultTtlSeconds: 300 });
  });
  afterEach(() => {
    approvals.close();
    vi.useRealTimers();
  });

  it('creates pending approvals with expiry and a copy of the params', () => {
    const params = { language: 'python' };
    const a = approvals.create({ ...request, params, policy: 'p', rule: 0, reason: 'why' });
    params.language = 'changed';
    expect(a).toMatchObject({
      status: 'pending',
      agentId: 'agent-1',
      tool: 'execute_code',
      params: { language: 'python' },
      policy: 'p',
      rule: 0,
      reason: 'why',
      createdAt: Date.now(),
      expiresAt: Date.now() + 300_000,
    });
    expect(Object.isFrozen(a)).toBe(true);
    expect(approvals.getApproval(a.id)).toBe(a);
    expect(approvals.create({ ...request, ttlSeconds: 5 }).expiresAt).toBe(Date.now() + 5000);
  });

  it('finds an approval expired when the wall clock passed its expiry before the timer fired (a suspend)', async () => {
    const store = new MemoryCollection<Approval>();
    approvals.close();
    approvals = new ApprovalManager({ defaultTtlSeconds: 300 }, store);
    const a = approvals.create(request);
    const wait = approvals.waitForApproval(a.id);
    // The machine slept ten minutes: the wall clock moved, no timer did.
    vi.setSystemTime(Date.now() + 600_000);
    expect(() => approvals.approve(a.id, { approver: 'alice' })).toThrow(ApprovalDecidedError);
    await expect(wait).resolves.toMatchObject({ status: 'expired', approved: false });
    expect(store.get(a.id)).toMatchObject({ status: 'expired', decidedAt: a.expiresAt });
  });

  it('approve resolves waiters with the approver and reason', async () => {
    const a = approvals.create(request);
    const wait = approvals.waitForApproval(a.id);
    const decided = approvals.approve(a.id, { approver: 'alice', reason: 'looks fine' });
    expect(decided).toMatchObject({
      status: 'approved',
      approver: 'alice',
      decisionReason: 'looks fine',
    });
    await expect(wait).resolves.toMatchObject({
      id: a.id,
      status: 'approved',
      approved: true,
      approver: 'alice',
      reason: 'looks fine',
    });
    // Waiting on a decided approval answers at once.
    await expect(approvals.waitForApproval(a.id)).resolves.toMatchObject({ status: 'approved' });
  });

  it('deny resolves waiters as not approved', async () => {
    const a = approvals.create(request);
    const wait = approvals.waitForApproval(a.id);
    approvals.deny(a.id, { approver: 'bob' });
    await expect(wait).resolves.toMatchObject({
      status: 'denied',
      approved: false,
      approver: 'bob',
    });
  });

  it('expires at the TTL: status expired, not approved, and final', async () => {
    const a = approvals.create({ ...request, ttlSeconds: 60 });
    const wait = approvals.waitForApproval(a.id);
    await vi.advanceTimersByTimeAsync(59_999);
    expect(approvals.getApproval(a.id)?.status).toBe('pending');
    await vi.advanceTimersByTimeAsync(1);
    await expect(wait).resolves.toMatchObject({ status: 'expired', approved: false });
    expect(approvals.getApproval(a.id)).toMatchObject({ status: 'expired', decidedAt: Date.now() });
    expect(() => approvals.approve(a.id, { approver: 'late' })).toThrow(ApprovalDecidedError);
  });

  it('a decision is final', () => {
    const a = approvals.create(request);
    approvals.approve(a.id, { approver: 'alice' });
    let err: unknown;
    try {
      approvals.deny(a.id, { approver: 'bob' });
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(ApprovalDecidedError);
    expect((err as ApprovalDecidedError).details).toEqual({ approvalId: a.id, status: 'approved' });
    expect(approvals.getApproval(a.id)?.approver).toBe('alice');
  });

  it('requires a non-empty approver', () => {
    const a = approvals.create(request);
    expect(() => approvals.approve(a.id, { approver: '' })).toThrow(InvalidArgumentError);
    expect(() => approvals.approve(a.id, { approver: '   ' })).toThrow(/decision.approver/);
    expect(() => approvals.deny(a.id, {} as never)).toThrow(InvalidArgumentError);
    expect(approvals.getApproval(a.id)?.status).toBe('pending');
  });

  it('unknown ids are typed not-found errors', async () => {
    await expect(approvals.waitForApproval('apr_nope')).rejects.toBeInstanceOf(
      ApprovalNotFoundError,
    );
    expect(() => approvals.approve('apr_nope', { approver: 'a' })).toThrow(ApprovalNotFoundError);
    expect(approvals.getApproval('apr_nope')).toBeUndefined();
  });

  it('a wait timeout shorter than expiry rejects with WaitTimeoutError and leaves it pending', async () => {
    const a = approvals.create(request);
    const wait = approvals.waitForApproval(a.id, { timeoutSeconds: 10 });
    const assertion = expect(wait).rejects.toBeInstanceOf(WaitTimeoutError);
    await vi.advanceTimersByTimeAsync(10_000);
    await assertion;
    expect(approvals.getApproval(a.id)?.status).toBe('pending');
    approvals.approve(a.id, { approver: 'alice' });
    expect(approvals.getApproval(a.id)?.status).toBe('approved');
  });

  it('a wait can be aborted', async () => {
    const a = approvals.create(request);
    const controller = new AbortController();
    const wait = approvals.waitForApproval(a.id, { signal: controller.signal });
    controller.abort(new Error('caller gave up'));
    await expect(wait).rejects.toThrow('caller gave up');
    expect(approvals.getApproval(a.id)?.status).toBe('pending');
    await expect(
      approvals.waitForApproval(a.id, { signal: AbortSignal.abort(new Error('already')) }),
    ).rejects.toThrow('already');
  });

  it('lists approvals by status and agent', () => {
    const a = approvals.create(request);
    const b = approvals.create({ ...request, agentId: 'agent-2' });
    approvals.deny(b.id, { approver: 'x' });
    expect(approvals.listApprovals().map((x) => x.id)).toEqual([a.id, b.id]);
    expect(approvals.listApprovals({ status: 'pending' }).map((x) => x.id)).toEqual([a.id]);
    expect(approvals.listApprovals({ agentId: 'agent-2' }).map((x) => x.status)).toEqual([
      'denied',
    ]);
  });

  it('emits typed created and resolved events', () => {
    const seen: [string, Approval][] = [];
    const onCreated = (x: Approval) => seen.push(['created', x]);
    approvals.on('created', onCreated);
    approvals.on('resolved', (x) => seen.push(['resolved', x]));
    const a = approvals.create(request);
    approvals.approve(a.id, { approver: 'alice' });
    approvals.off('created', onCreated);
    approvals.create(request);
    expect(seen.map(([k, x]) => [k, x.status])).toEqual([
      ['created', 'pending'],
      ['resolved', 'approved'],
    ]);
  });

  it('forgets the oldest decided approvals beyond maxResolved, never pending ones', () => {
    const small = new ApprovalManager({ maxResolved: 1 });
    const a = small.create(request);
    const b = small.create(request);
    const c = small.create(request);
    small.deny(a.id, { approver: 'x' });
    small.deny(b.id, { approver: 'x' });
    expect(small.getApproval(a.id)).toBeUndefined();
    expect(small.getApproval(b.id)?.status).toBe('denied');
    expect(small.getApproval(c.id)?.status).toBe('pending');
    small.close();
  });

  it("evicts the flooding agent's own oldest decisions, never another agent's", () => {
    const small = new ApprovalManager({ maxResolved: 4 });
    const victim = small.create({ ...request, agentId: 'victim' });
    small.deny(victim.id, { approver: 'admin' });
    const flood: string[] = [];
    for (let i = 0; i < 20; i++) {
      const a = small.create({ ...request, agentId: 'attacker' });
      small.deny(a.id, { approver: 'admin' });
      flood.push(a.id);
    }
    expect(small.getApproval(victim.id)?.status).toBe('denied');
    expect(small.listApprovals({ agentId: 'attacker' }).map((a) => a.id)).toEqual(flood.slice(-3));
    expect(small.listApprovals()).toHaveLength(4);
    small.close();
  });

  it('caps pending approvals per agent; a decision or expiry frees a slot', async () => {
    const capped = new ApprovalManager({ maxPendingPerAgent: 2, defaultTtlSeconds: 10 });
    const a = capped.create(request);
    capped.create(request);
    expect(() => capped.create(request)).toThrow(ApprovalLimitError);
    expect(() => capped.create(request)).toThrow(/agent-1 already has 2 approvals/);
    // Another agent is not affected.
    expect(capped.create({ ...request, agentId: 'agent-2' }).status).toBe('pending');
    capped.approve(a.id, { approver: 'x' });
    const c = capped.create(request);
    expect(() => capped.create(request)).toThrow(ApprovalLimitError);
    await vi.advanceTimersByTimeAsync(10_000);
    expect(capped.getApproval(c.id)?.status).toBe('expired');
    expect(capped.listApprovals({ status: 'pending', agentId: 'agent-1' })).toHaveLength(0);
    capped.create(request);
    capped.create(request);
    expect(() => capped.create(request)).toThrow(ApprovalLimitError);
    capped.close();
  });

  it('refuses params of more JSON bytes than maxParamsBytes (UTF-8, cycles too); keeps none', () => {
    const small = new ApprovalManager({ maxParamsBytes: 20 });
    expect(small.create({ ...request, params: { m: 'x'.repeat(12) } }).status).toBe('pending'); // 20 bytes
    expect(() => small.create({ ...request, params: { m: 'x'.repeat(13) } })).toThrow(
      /21 bytes of JSON; at most 20 bytes .*approvals\.maxParamsBytes/,
    );
    expect(() => small.create({ ...request, params: { m: 'é'.repeat(7) } })).toThrow(
      ApprovalLimitError,
    ); // 7 characters, 22 bytes
    const cyclic: Record<string, unknown> = {};
    cyclic.self = cyclic;
    expect(() => small.create({ ...request, params: cyclic })).toThrow(/not JSON/);
    expect(small.listApprovals({})).toHaveLength(1);
    expect(() => new ApprovalManager({ maxParamsBytes: 1 })).toThrow(/options.maxParamsBytes/);
    small.close();
  });

  it('close clears timers and rejects waiters; later use throws ClosedError', async () => {
    const a = approvals.create(request);
    const wait = approvals.waitForApproval(a.id);
    approvals.close();
    await expect(wait).rejects.toBeInstanceOf(ClosedError);
    expect(vi.getTimerCount()).toBe(0);
    expect(() => approvals.create(request)).toThrow(ClosedError);
    expect(() => approvals.approve(a.id, { approver: 'a' })).toThrow(ClosedError);
  });

  it('validates options and arguments, naming the field', () => {
    expect(() => new ApprovalManager({ defaultTtlSeconds: 0 })).toThrow(ConfigError);
    expect(() => new ApprovalManager({ defaultTtlSeconds: 0 })).toThrow(
      /options.defaultTtlSeconds/,
    );
    expect(() => new ApprovalManager({ maxResolved: -1 })).toThrow(/options.maxResolved/);
    expect(() => new ApprovalManager({ maxPendingPerAgent: 0 })).toThrow(
      /options.maxPendingPerAgent/,
    );
    expect(() => new ApprovalManager({ ttl: 1 } as never)).toThrow(/options.ttl/);
    expect(() => approvals.create({ ...request, ttlSeconds: Number.NaN })).toThrow(
      /request.ttlSeconds/,
    );
    expect(() => approvals.create({ ...request, agentId: '' })).toThrow(/request.agentId/);
    const a = approvals.create(request);
    return expect(approvals.waitForApproval(a.id, { timeoutSeconds: -1 })).rejects.toThrow(
      /options.timeoutSeconds/,
    );
  });

  describe('over a store (restart)', () => {
    it('re-arms the expiry of restored pending approvals and keeps decided ones in order', async () => {
      const store = new MemoryCollection<Approval>();
      const before = new ApprovalManager({ defaultTtlSeconds: 300, maxResolved: 2 }, store);
      const old = before.create(request);
      before.deny(old.id, { approver: 'bob' });
      vi.advanceTimersByTime(1_000);
      const pending = before.create(request);
      before.close();
      vi.advanceTimersByTime(100_000); // the process was down for a while
      const after = new ApprovalManager({ defaultTtlSeconds: 300, maxResolved: 2 }, store);
      try {
        const waited = after.waitForApproval(pending.id);
        expect(after.getApproval(pending.id)).toMatchObject({ status: 'pending', orphaned: true });
        vi.advanceTimersByTime(pending.expiresAt - Date.now() - 1);
        expect(after.getApproval(pending.id)?.status).toBe('pending');
        vi.advanceTimersByTime(1);
        expect(await waited).toMatchObject({ status: 'expired', decidedAt: pending.expiresAt });
        expect(store.get(pending.id)?.status).toBe('expired');
        // Retention counts the restored decided approvals, oldest decision first.
        const next = after.create(request);
        after.approve(next.id, { approver: 'alice' });
        expect(store.get(old.id)).toBeUndefined();
        expect(after.listApprovals().map((a) => a.id)).toEqual([pending.id, next.id]);
      } finally {
        after.close();
      }
    });

    it('refuses a stored record that is not an approval, naming it', () => {
      const store = new MemoryCollection<Approval>();
      store.put('apr_bad', { id: 'apr_bad', status: 'maybe' } as never);
      expect(() => new ApprovalManager({}, store)).toThrow(/store\.approvals\["apr_bad"\]/);
    });
  });
});
