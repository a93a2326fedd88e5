import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { ConfigError } from '../../src/errors.js';
import { MAX_USAGE_AMOUNT } from '../../src/budget/budget-manager.js';
import {
  DEFAULT_TOKEN_ESTIMATE,
  TokenEstimates,
  ToolEstimate,
} from '../../src/gateway/token-estimates.js';

describe('TokenEstimates', () => {
  it('starts each (agent, tool) pair at the prior of the first matching glob, else the default', () => {
    const e = new TokenEstimates({ priors: { 'fs__read_*': 2000, 'fs__*': 50, '*': 7 } });
    expect(e.get('a', 'fs__read_text_file').tokens).toBe(2000);
    expect(e.get('a', 'fs__write_file').tokens).toBe(50);
    expect(e.get('a', 'resources/read').tokens).toBe(7);
    expect(new TokenEstimates().get('a', 'x').tokens).toBe(DEFAULT_TOKEN_ESTIMATE);
    expect(new TokenEstimates({ defaultPrior: 3 }).priorOf('x')).toBe(3);
  });

  it('learns per agent: up at once, down by a quarter of the gap', () => {
    const e = new TokenEstimates({ priors: { '*': 2000 } });
    const mine = e.get('a', 'read');
    mine.observe(120);
    expect(mine).toMatchObject({ tokens: 120, observed: true });
    mine.observe(9000);
    expect(mine.tokens).toBe(9000);
    mine.observe(1000);
    expect(mine.tokens).toBe(7000);
    for (let i = 0; i < 40; i++) mine.observe(1000);
    expect(mine.tokens).toBeGreaterThanOrEqual(1000);
    expect(mine.tokens).toBeLessThan(1010);
    // Another agent's large results never move this agent's estimate, nor the reverse.
    expect(e.get('b', 'read')).toMatchObject({ tokens: 2000, observed: false });
    expect(e.get('a', 'read')).toBe(mine);
  });

  it('keeps memory bounded: least recently active agents and forgotten agents start over', () => {
    const e = new TokenEstimates({ maxAgents: 2, priors: { '*': 10 } });
    e.get('a', 't').observe(1);
    e.get('b', 't').observe(1);
    e.get('a', 't'); // a is more recent than b
    e.get('c', 't');
    expect(e.agentCount).toBe(2);
    expect(e.get('a', 't').observed).toBe(true);
    expect(e.get('b', 't').observed).toBe(false); // evicted
    e.forgetAgent('a');
    expect(e.get('a', 't')).toMatchObject({ tokens: 10, observed: false });
    const many = new TokenEstimates();
    for (let i = 0; i < 3000; i++) many.get('a', `tool-${i}`).observe(1);
    // The oldest tools made room (1024 are kept per agent); the newest are kept.
    expect(many.get('a', 'tool-2999').observed).toBe(true);
    expect(many.get('a', 'tool-0').observed).toBe(false);
  });

  it('rejects bad priors and options naming the key', () => {
    expect(() => new TokenEstimates({ priors: { 'fs__*': -1 } })).toThrow(ConfigError);
    expect(() => new TokenEstimates({ priors: { 'fs__*': -1 } })).toThrow('tokenEstimates.fs__*');
    expect(() => new TokenEstimates({ priors: { x: Number.NaN } })).toThrow(ConfigError);
    expect(() => new TokenEstimates({ maxAgents: 0 })).toThrow(ConfigError);
    expect(() => new TokenEstimates({ defaultPrior: Infinity })).toThrow(ConfigError);
    // More than a reservation can hold: every call of the tool failed at its reservation.
    expect(() => new TokenEstimates({ priors: { x: MAX_USAGE_AMOUNT * 2 } })).toThrow(
      'tokenEstimates.x',
    );
    expect(() => new TokenEstimates({ defaultPrior: MAX_USAGE_AMOUNT * 2 })).toThrow(ConfigError);
  });
});

describe('ToolEstimate single flight (a pair with no result yet)', () => {
  beforeEach(() => {
    vi.useFakeTimers();
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it('lets one call hold the flight; the others go on with the learned estimate after its result', async () => {
    const e = new ToolEstimate(4000);
    expect(e.flight(5000)).toBe(true);
    const others = [e.flight(5000), e.flight(5000)];
    expect(others.every((o) => o instanceof Promise)).toBe(true);
    expect(e.waiting).toBe(2);
    e.observe(10);
    expect(await Promise.all(others)).toEqual([false, false]);
    e.land();
    expect(e.tokens).toBe(10);
    expect(e.flight(5000)).toBe(false); // warm: no flight
  });

  it('passes the flight to the next waiter when the holder ends without a result', async () => {
    const e = new ToolEstimate(4000);
    expect(e.flight(5000)).toBe(true);
    const second = e.flight(5000);
    const third = e.flight(5000);
    e.land(); // refused or failed: nothing learned
    expect(await second).toBe(true);
    expect(e.waiting).toBe(1);
    e.observe(99);
    e.land();
    expect(await third).toBe(false);
  });

  it('bounds the wait: after waitMs a waiter goes on with the prior', async () => {
    const e = new ToolEstimate(4000);
    e.flight(1000);
    const waiter = e.flight(1000);
    await vi.advanceTimersByTimeAsync(1000);
    expect(await waiter).toBe(false);
    expect(e.waiting).toBe(0);
  });

  it('ends a wait on cancellation, and never waits with waitMs 0', async () => {
    const e = new ToolEstimate(4000);
    expect(e.flight(0)).toBe(false);
    e.flight(5000);
    const ac = new AbortController();
    const waiter = e.flight(5000, ac.signal);
    ac.abort(new Error('cancelled by the client'));
    await expect(waiter).rejects.toThrow('cancelled by the client');
    expect(e.waiting).toBe(0);
    await expect(e.flight(5000, ac.signal)).rejects.toThrow('cancelled by the client');
    // The holder landing later hands nothing to the cancelled waiter.
    e.land();
    expect(e.flight(5000)).toBe(true);
  });
});
