/**
 * Telling a monotonic time as wall-clock time, for plugins that keep their own times on the
 * monotonic clock (so a step of the wall clock neither empties nor refills what they count) and
 * tell a moment to a caller as epoch ms (`retryAt`). The first-party rate-limit and loop-guard
 * policies import it from `agent-fabric`.
 *
 * @module
 */

/**
 * Tells a monotonic time (`now`'s clock) as epoch ms: by an offset to the wall clock, kept while
 * the wall clock keeps pace (so the same instant reads the same `retryAt` call after call) and
 * taken afresh when the wall clock stepped away from it by more than a second.
 *
 * @param now - the monotonic clock (ms), e.g. `() => performance.now()`
 * @param wall - the wall clock (epoch ms), e.g. `Date.now`
 * @returns a function from a time on `now`'s clock to epoch ms (rounded up)
 */
export function epochOf(now: () => number, wall: () => number): (t: number) => number {
  let offset = wall() - now();
  return (t) => {
    const w = wall();
    if (Math.abs(w - (now() + offset)) > 1000) offset = w - now();
    return Math.ceil(t + offset);
  };
}
