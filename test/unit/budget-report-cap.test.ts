/**
 * `BudgetManager.recordUsage` charges the shared scopes (pool, fabric) at most what the
 * reporting agent's own limit had left, per limit; an honest report counts the same everywhere.
 */
import { describe, expect, it } from 'vitest';
import { BudgetManager } from '../../src/budget/budget-manager.js';

describe('recordUsage and the shared scopes', () => {
  it('counts a report within the agent limit in full everywhere, to the limit exactly', () => {
    const b = new BudgetManager({ bootId: undefined });
    b.setBudget('a', { maxCostPerDay: 1, maxTokensPerHour: 100 });
    for (let i = 0; i < 10; i++) {
      expect(b.recordUsage('a', { tokens: 10, cost: 0.1 }, { poolId: 'p' })).toBeNull();
    }
    expect(b.getFabricStatus()).toMatchObject({ tokensUsed: 100 });
    expect(b.getFabricStatus().costUsed).toBeCloseTo(1, 12);
    expect(b.getPoolStatus('p').costUsed).toBeCloseTo(1, 12);
    expect(b.getStatus('a').exhausted).toBe(true);
  });

  it('charges the pool and the fabric only what the agent had left, per limit and per window', () => {
    const b = new BudgetManager({ bootId: undefined });
    b.setBudget('a', { maxCostPerDay: 2, maxTokensPerHour: 100 });
    b.setFabricBudget({ maxCostPerDay: 10 });
    expect(b.recordUsage('a', { tokens: 30, cost: 1.5 }, { poolId: 'p' })).toBeNull();
    const unshared = b.recordUsage('a', { tokens: 40, cost: 1e15 }, { poolId: 'p' });
    expect(unshared).toEqual({
      scope: 'agent:a',
      limit: 'cost',
      used: 1e15 + 1.5,
      max: 2,
      recorded: { tokens: 40, cost: 1e15 },
      shared: { tokens: 40, cost: 0.5 },
    });
    expect(b.getStatus('a')).toMatchObject({ tokensUsed: 70, costUsed: 1e15 + 1.5 });
    for (const s of [b.getPoolStatus('p'), b.getFabricStatus()]) {
      expect(s).toMatchObject({ tokensUsed: 70, costUsed: 2, exhausted: false });
    }
    // Nothing is left of the agent's cost: a later report charges the shared scopes no cost.
    expect(b.recordUsage('a', { tokens: 500, cost: 3 }, { poolId: 'p' })).toMatchObject({
      limit: 'tokens',
      shared: { tokens: 30, cost: 0 },
    });
    expect(b.getFabricStatus()).toMatchObject({ tokensUsed: 100, costUsed: 2 });
    // Another agent of the pool still has the fabric's room.
    expect(b.check('other', { cost: 7 }, { poolId: 'p' })).toEqual({ allowed: true });
  });

  it('does not cap an agent without a limit of that kind', () => {
    const b = new BudgetManager({ bootId: undefined });
    b.setBudget('a', { maxTokensPerHour: 100 });
    expect(b.recordUsage('a', { cost: 50 })).toBeNull();
    expect(b.getFabricStatus().costUsed).toBe(50);
  });
});
