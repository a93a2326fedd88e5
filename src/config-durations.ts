/**
 * Zod numbers for timed settings: a delay past setTimeout's limit (2^31 - 1 ms, about 24.8 days)
 * fires after 1 ms, so a call timeout, an interval or a grace past it is refused at load with the
 * key and the limit, never taken as "at once" (see {@link MAX_TIMER_MS}).
 *
 * @module
 */
import { z } from 'zod';
import { MAX_TIMER_MS, MAX_TIMER_SECONDS, timerLimitMessage } from './scheduler/task-waiters.js';

/** A number of seconds at most {@link MAX_TIMER_SECONDS}. */
export function timerSeconds(): z.ZodNumber {
  return z.number().max(MAX_TIMER_SECONDS, { error: timerLimitMessage('seconds') });
}

/** A number of milliseconds at most {@link MAX_TIMER_MS}. */
export function timerMs(): z.ZodNumber {
  return z.number().max(MAX_TIMER_MS, { error: timerLimitMessage('ms') });
}
