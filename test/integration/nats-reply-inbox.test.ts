/**
 * ReplyInbox (requests answered on one wildcard subscription) against a real nats-server: an
 * answer reaches its own request, nobody listening is told apart from nobody answering in time,
 * and closing ends every open request.
 */
import { afterEach, expect, it, vi } from 'vitest';
import { connect } from '@nats-io/transport-node';
import type { Msg } from '@nats-io/transport-node';
import type { NoAnswer } from '../../src/transport/nats/reply-inbox.js';
import { ReplyInbox } from '../../src/transport/nats/reply-inbox.js';
import { describeNats, natsServerPerSuite } from '../fixtures/nats-server.js';

const text = new TextEncoder();
const ask = (inbox: ReplyInbox, subject: string, body: string, timeoutMs = 5000) =>
  new Promise<{ msg: Msg | undefined; why: NoAnswer | undefined }>((resolve) =>
    inbox.request(subject, text.encode(body), timeoutMs, (msg, why) => resolve({ msg, why })),
  );

describeNats('ReplyInbox', () => {
  const server = natsServerPerSuite();
  afterEach(() => {
    vi.useRealTimers();
  });

  it('gives each request its own answer, and tells no responders from a timeout', async () => {
    const nc = await connect({ servers: server().url });
    // A responder that answers "echo:<body>", the second request first.
    const held: Msg[] = [];
    nc.subscribe('svc.echo', {
      callback: (_err, m) => {
        held.push(m);
        if (held.length === 2) for (const h of [...held].reverse()) h.respond(`echo:${h.string()}`);
      },
    });
    nc.subscribe('svc.silent', { callback: () => undefined });
    await nc.flush();
    const inbox = new ReplyInbox(nc, 20);
    const [a, b] = await Promise.all([ask(inbox, 'svc.echo', 'a'), ask(inbox, 'svc.echo', 'b')]);
    expect(a.msg?.string()).toBe('echo:a');
    expect(b.msg?.string()).toBe('echo:b');
    expect(await ask(inbox, 'svc.nobody', 'x')).toEqual({ msg: undefined, why: 'no-responders' });
    expect(await ask(inbox, 'svc.silent', 'x', 100)).toEqual({ msg: undefined, why: 'timeout' });
    expect(inbox.size).toBe(0);
    // Close ends what is open; a request after close is told at once.
    const open = ask(inbox, 'svc.silent', 'x');
    inbox.close();
    expect(await open).toEqual({ msg: undefined, why: 'closed' });
    expect(await ask(inbox, 'svc.echo', 'y')).toEqual({ msg: undefined, why: 'closed' });
    await nc.close();
  });

  it('keeps a request open past a message its callback says is not the answer', async () => {
    const nc = await connect({ servers: server().url });
    // Two answers to each request: a forgery first, then the real one.
    nc.subscribe('svc.twice', {
      callback: (_err, m) => {
        m.respond('forged');
        m.respond('real');
      },
    });
    await nc.flush();
    const inbox = new ReplyInbox(nc, 20);
    const seen: string[] = [];
    const answer = await new Promise<string>((resolve) =>
      inbox.request('svc.twice', text.encode('x'), 5000, (msg) => {
        const body = msg?.string() ?? 'none';
        seen.push(body);
        if (body === 'forged') return false;
        resolve(body);
        return true;
      }),
    );
    expect(answer).toBe('real');
    expect(seen).toEqual(['forged', 'real']);
    expect(inbox.size).toBe(0);
    // Nothing but forgeries: the request ends at its deadline.
    nc.subscribe('svc.forger', { callback: (_err, m) => void m.respond('forged') });
    await nc.flush();
    const why = await new Promise<NoAnswer | undefined>((resolve) =>
      inbox.request('svc.forger', text.encode('x'), 200, (msg, noAnswer) => {
        if (msg !== undefined) return false;
        resolve(noAnswer);
        return true;
      }),
    );
    expect(why).toBe('timeout');
    inbox.close();
    await nc.close();
  });

  it('times requests out by elapsed time, however the wall clock steps', async () => {
    const nc = await connect({ servers: server().url });
    nc.subscribe('svc.silent', { callback: () => undefined });
    await nc.flush();
    // The test's Date and performance.now; the sweep (every 20 ms) runs on real timers.
    vi.useFakeTimers({ toFake: ['Date', 'performance'] });
    const inbox = new ReplyInbox(nc, 20);
    const long = ask(inbox, 'svc.silent', 'long', 60_000);
    // A day ahead (no time passes): a 1 ms request that times out shows a sweep ran since.
    vi.setSystemTime(Date.now() + 86_400_000);
    const short = ask(inbox, 'svc.silent', 'short', 1);
    vi.advanceTimersByTime(1);
    expect(await short).toEqual({ msg: undefined, why: 'timeout' });
    expect(inbox.size).toBe(1);
    // Two days back, then the minute passes: the long one times out now, not a day later.
    vi.setSystemTime(Date.now() - 2 * 86_400_000);
    vi.advanceTimersByTime(60_000);
    expect(await long).toEqual({ msg: undefined, why: 'timeout' });
    inbox.close();
    await nc.close();
  });
});
