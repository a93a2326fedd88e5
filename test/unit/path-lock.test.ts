import { describe, expect, it } from 'vitest';
import { PathLock } from '../../src/gateway/path-lock.js';

const FREE = { shared: 0, exclusive: false, waiting: 0 };

describe('PathLock', () => {
  it('shares among shared holders, excludes an exclusive one, and releases idempotently', () => {
    const lock = new PathLock();
    const a = lock.tryAcquire(false)!;
    const b = lock.tryAcquire(false)!;
    expect(lock.state).toEqual({ shared: 2, exclusive: false, waiting: 0 });
    expect(lock.tryAcquire(true)).toBeUndefined();
    a();
    a(); // a second release gives nothing back twice
    expect(lock.state.shared).toBe(1);
    b();
    const x = lock.tryAcquire(true)!;
    expect(lock.tryAcquire(false)).toBeUndefined();
    expect(lock.tryAcquire(true)).toBeUndefined();
    x();
    expect(lock.state).toEqual(FREE);
  });

  it('admits waiters in arrival order: a waiting exclusive call holds back later shared ones', async () => {
    const lock = new PathLock();
    const never = new AbortController().signal;
    const order: string[] = [];
    const r1 = lock.tryAcquire(false)!;
    const w = lock.wait(true, never).then((rel) => (order.push('x'), rel));
    // Shared would fit now, but an exclusive call waits before it.
    expect(lock.tryAcquire(false)).toBeUndefined();
    const s = lock.wait(false, never).then((rel) => (order.push('s'), rel));
    expect(lock.state).toEqual({ shared: 1, exclusive: false, waiting: 2 });
    r1();
    const xr = await w;
    expect(order).toEqual(['x']);
    expect(lock.state).toEqual({ shared: 0, exclusive: true, waiting: 1 });
    xr();
    (await s)();
    expect(order).toEqual(['x', 's']);
    expect(lock.state).toEqual(FREE);
  });

  it('a cancelled waiter leaves the queue holding nothing, and lets the shared calls behind it in', async () => {
    const lock = new PathLock();
    const never = new AbortController().signal;
    const r1 = lock.tryAcquire(false)!;
    const cancel = new AbortController();
    const w = lock.wait(true, cancel.signal);
    const s = lock.wait(false, never);
    cancel.abort(new Error('cancelled by the client'));
    await expect(w).rejects.toThrow('cancelled by the client');
    const sr = await s; // admitted beside r1 once the exclusive waiter left
    expect(lock.state).toEqual({ shared: 2, exclusive: false, waiting: 0 });
    r1();
    sr();
    expect(lock.state).toEqual(FREE);
    const already = new AbortController();
    already.abort('gone');
    const x = lock.tryAcquire(true)!;
    await expect(lock.wait(false, already.signal)).rejects.toThrow('gone');
    x();
    expect(lock.state).toEqual(FREE);
  });
});
