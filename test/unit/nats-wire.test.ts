/**
 * The hand-written checks of the per-task NATS messages (`asTaskMessage`, `asReport`,
 * `batchReports`) accept exactly what the documented zod schemas accept.
 */
import { createHash, createHmac } from 'node:crypto';
import { describe, expect, it } from 'vitest';
import {
  answerMac,
  genuineReportAnswer,
  heartbeatAnswerMac,
  reportAnswerMac,
  signedReportAnswer,
  asAnswer,
  asEndedNotice,
  endedMac,
  endedNoticeGenuine,
  asReport,
  asTaskMessage,
  batchReports,
  canonicalJson,
  reportContentDigest,
  missingReportFields,
  reportProof,
  reportBatchSchema,
  reportSchema,
  taskMessageSchema,
} from '../../src/transport/nats/wire.js';

const task = {
  v: 1,
  taskId: 't1',
  attempt: 1,
  taskType: 'echo',
  payload: { a: [1, 2] },
  deadline: null,
  timeoutSeconds: 30,
  maxAttempts: 3,
  agentId: null,
  poolId: 'p',
  replyTo: 'fabric.ns.res.x',
  lease: 'L',
};

const report = {
  kind: 'complete',
  taskId: 't1',
  attempt: 2,
  lease: 'L',
  agentId: 'a',
  proof: 'P',
  take: 'w.1',
  counter: 1,
  result: { ok: 1 },
};

/** Variants of `base`: every key dropped, and every key set to each hostile value. */
function variants(base: Record<string, unknown>, extra: unknown[]): unknown[] {
  const values: unknown[] = [
    undefined,
    null,
    0,
    -1,
    1,
    1.5,
    2 ** 53,
    '',
    'x',
    'x'.repeat(65),
    'x'.repeat(100),
    'x'.repeat(101),
    'x'.repeat(201),
    'x'.repeat(256),
    'x'.repeat(257),
    'x'.repeat(10_001),
    true,
    [],
    {},
    [1],
    { code: 'C', message: 'm' },
    { code: '', message: 'm' },
    { code: 'C', message: 'm', details: { k: 1 } },
    { code: 'C', message: 'm', details: [] },
    { code: 'C', message: 'm', details: null },
    { code: 'C', message: 'm', extra: 1 },
    { code: 'C'.repeat(201), message: 'm' },
    { code: 'C', message: 'm'.repeat(10_001) },
    ...extra,
  ];
  const out: unknown[] = [base, null, [], 'x', 1, {}, { ...base, unknown: 1 }];
  out.push(JSON.parse(`{"__proto__":1,${JSON.stringify(base).slice(1)}`));
  for (const k of Object.keys(base)) {
    const { [k]: _, ...rest } = base;
    out.push(rest);
    for (const v of values) out.push({ ...base, [k]: v });
  }
  for (const k of ['result', 'progress', 'error', 'retry', 'take', 'seq', 'nonce', 'counter']) {
    for (const v of values) out.push({ ...base, [k]: v });
  }
  return out;
}

describe('NATS wire checks', () => {
  it('asTaskMessage agrees with taskMessageSchema', () => {
    const cases = variants(task, []);
    let accepted = 0;
    for (const c of cases) {
      const zod = taskMessageSchema.safeParse(c).success;
      expect([c, asTaskMessage(c) !== undefined]).toEqual([c, zod]);
      if (zod) accepted++;
    }
    expect(accepted).toBeGreaterThan(10);
  });

  it('asReport agrees with reportSchema', () => {
    const cases = [
      ...variants(report, ['start', 'progress', 'fail', 'done']),
      ...variants({ ...report, kind: 'start', take: 'w.1' }, []),
      ...variants({ ...report, kind: 'start', take: 'w.1', seq: 7 }, [2 ** 53 - 1]),
      ...variants({ ...report, kind: 'fail', error: { code: 'E', message: 'm' }, retry: true }, []),
    ];
    let accepted = 0;
    for (const c of cases) {
      const zod = reportSchema.safeParse(c).success;
      expect([c, asReport(c) !== undefined]).toEqual([c, zod]);
      if (zod) accepted++;
    }
    expect(accepted).toBeGreaterThan(30);
  });

  it('missingReportFields names the take-up and counter a report lacks, and nothing else', () => {
    const { take: _t, counter: _c, ...old } = report;
    expect(missingReportFields(old)).toEqual(['take', 'counter']);
    expect(missingReportFields({ ...old, take: 'w.1' })).toEqual(['counter']);
    expect(missingReportFields({ ...old, counter: 1 })).toEqual(['take']);
    expect(missingReportFields(report)).toBeUndefined(); // a report: nothing missing
    // Not a report for another reason as well: not said to lack them.
    expect(missingReportFields({ ...old, proof: 'P'.repeat(101) })).toBeUndefined();
    expect(missingReportFields({ ...old, counter: 0 })).toBeUndefined();
    expect(missingReportFields({ ...old, extra: 1 })).toBeUndefined();
    expect(missingReportFields([old])).toBeUndefined();
  });

  it('batchReports agrees with reportBatchSchema', () => {
    const cases: Record<string, unknown>[] = [
      { v: 1, reports: [report] },
      { v: 1, reports: [1, 'x', null] },
      { v: 1, reports: [] },
      { v: 1, reports: Array.from({ length: 1024 }, () => report) },
      { v: 1, reports: Array.from({ length: 1025 }, () => report) },
      { v: 2, reports: [report] },
      { reports: [report] },
      { v: 1, reports: { 0: report } },
      { v: 1, reports: [report], more: 1 },
    ];
    for (const c of cases) {
      const zod = reportBatchSchema.safeParse(c).success;
      expect([c.v, batchReports(c) !== undefined]).toEqual([c.v, zod]);
    }
  });

  it('asEndedNotice takes only a notice with a bounded task id, and never throws', () => {
    const notice = {
      taskId: 't1',
      attempt: 2,
      code: 'FABRIC_ERR_CANCELLED',
      message: 'm',
      mac: endedMac('lease', 't1', 2),
    };
    expect(asEndedNotice(notice)).toEqual(notice);
    expect(endedNoticeGenuine(notice, 'lease')).toBe(true);
    for (const changed of [
      { taskId: 't2' },
      { attempt: 3 },
      { mac: notice.mac.replace(/^./, (c) => (c === 'A' ? 'B' : 'A')) },
    ]) {
      expect([changed, endedNoticeGenuine({ ...notice, ...changed }, 'lease')]).toEqual([
        changed,
        false,
      ]);
    }
    expect(endedNoticeGenuine(notice, 'other lease')).toBe(false);
    for (const bad of [
      null,
      1,
      'x',
      [],
      {},
      { ...notice, taskId: '' },
      { ...notice, taskId: 'x'.repeat(257) },
      { ...notice, taskId: { toString: 1 } },
      { ...notice, attempt: 0 },
      { ...notice, attempt: '1' },
      { ...notice, code: null },
      { ...notice, message: { toString: 1 } },
      { ...notice, mac: undefined },
      { ...notice, mac: '' },
      { ...notice, mac: 'x'.repeat(101) },
    ]) {
      expect([bad, asEndedNotice(bad)]).toEqual([bad, undefined]);
    }
  });

  it('asAnswer takes only an answer', () => {
    expect(asAnswer({ ok: true })).toEqual({ ok: true });
    expect(asAnswer({ ok: false, code: 'C', message: 'm' })).toEqual({
      ok: false,
      code: 'C',
      message: 'm',
    });
    for (const bad of [null, 1, [], {}, { ok: 'true' }, { ok: false }, { ok: false, code: 1 }]) {
      expect([bad, asAnswer(bad)]).toEqual([bad, undefined]);
    }
  });

  it('answer MACs cover the text the README spells out, and bind kind, ids and answer', () => {
    const mac = (key: string, text: string) =>
      createHmac('sha256', key).update(text).digest('base64url');
    // Strings with '%' and ':' escaped (no ':' left in them), numbers, booleans, null, absent.
    expect(answerMac('k', ['start', 'a:b%3a', 'é', 7, true, null, undefined, ''])).toBe(
      mac('k', 'answer:start:a%3ab%253a:é:7:true:~::'),
    );
    const r = { kind: 'start', agentId: 'a', taskId: 't', attempt: 1, lease: 'L', take: 'x.1' };
    const ok = { ok: true as const };
    expect(reportAnswerMac(r as never, ok)).toBe(mac('L', 'answer:start:a:t:1:x.1:true::'));
    const stale = { ok: false as const, code: 'C', message: 'm 1' };
    expect(reportAnswerMac(r as never, stale)).toBe(mac('L', 'answer:start:a:t:1:x.1:false:C:m 1'));
    expect(heartbeatAnswerMac('K', 'a', 5, { ok: true, status: 'HEALTHY', poolId: null })).toBe(
      mac('K', 'answer:hb:a:5:true:::HEALTHY:~'),
    );
    // A string never reads as null: a pool named '~' is not "no pool" (and '~' in any string
    // is escaped, where the two texts were the same).
    expect(answerMac('k', ['~', 'a~b'])).toBe(mac('k', 'answer:%7e:a%7eb'));
    const inPool = (poolId: string | null) =>
      heartbeatAnswerMac('K', 'a', 5, { ok: true, status: 'HEALTHY', poolId });
    expect(inPool('~')).not.toBe(inPool(null));
    // Genuine only for its own report, unchanged.
    const signed = signedReportAnswer(r as never, ok);
    expect(genuineReportAnswer(signed, r as never)).toEqual({ ok: true });
    const refusal = signedReportAnswer(r as never, stale);
    expect(genuineReportAnswer(refusal, r as never)).toEqual(stale);
    for (const other of [
      { ...r, kind: 'complete' },
      { ...r, taskId: 't2' },
      { ...r, attempt: 2 },
      { ...r, take: 'x.2' },
      { ...r, agentId: 'b' },
      { ...r, lease: 'M' },
      { ...r, nonce: 'n1' },
    ]) {
      expect(genuineReportAnswer(signed, other as never)).toBeUndefined();
    }
    expect(
      genuineReportAnswer({ ...signed, ok: false, code: 'C', message: 'm' }, r as never),
    ).toBeUndefined();
    expect(genuineReportAnswer({ ok: true }, r as never)).toBeUndefined();
    expect(genuineReportAnswer({ ok: true, mac: 5 }, r as never)).toBeUndefined();
    // A report's nonce is the last field, after the answer; none adds nothing (the text of
    // workers that send none). One report's answer is not another's of the same take-up.
    const n1 = { ...r, kind: 'progress', nonce: 'n:1' };
    expect(reportAnswerMac(n1 as never, ok)).toBe(
      mac('L', 'answer:progress:a:t:1:x.1:true:::n%3a1'),
    );
    const progressOk = signedReportAnswer(n1 as never, ok);
    expect(genuineReportAnswer(progressOk, n1 as never)).toEqual({ ok: true });
    expect(genuineReportAnswer(progressOk, { ...n1, nonce: 'n:2' } as never)).toBeUndefined();
    expect(genuineReportAnswer(progressOk, { ...n1, nonce: undefined } as never)).toBeUndefined();
    expect(genuineReportAnswer(progressOk, { ...n1, nonce: '' } as never)).toBeUndefined();
  });
});

describe('report proofs', () => {
  const key = 'k'.repeat(64);
  const r = {
    kind: 'progress' as const,
    agentId: 'a:1',
    taskId: 't~1',
    attempt: 2,
    take: 'take-1',
    seq: 7,
    nonce: 'n-1',
    progress: { step: 1 },
  };
  const b64 = (text: string): string => createHmac('sha256', key).update(text).digest('base64url');
  const hashOf = (text: string): string =>
    createHash('sha256').update(text, 'utf8').digest('base64url');

  it('cover the text the README spells out: ids, take-up, copy, nonce and content digest', () => {
    const content = hashOf('{"progress":{"step":1}}');
    expect(reportContentDigest(r)).toBe(content);
    expect(reportProof(key, r)).toBe(b64(`report:progress:a%3a1:t%7e1:2:take-1:7:n-1:${content}`));
    // A start carries no content: the digest of `{}`; absent fields are empty.
    expect(reportProof(key, { kind: 'start', agentId: 'a', taskId: 't', attempt: 1 })).toBe(
      b64(`report:start:a:t:1::::${hashOf('{}')}`),
    );
    // The take-up counter, when the report has one, last (none adds nothing).
    expect(reportProof(key, { ...r, counter: 12 })).toBe(
      b64(`report:progress:a%3a1:t%7e1:2:take-1:7:n-1:${content}:12`),
    );
  });

  it('change with every field the sidecar acts on', () => {
    const proof = reportProof(key, r);
    const others = [
      { ...r, kind: 'complete' as const },
      { ...r, agentId: 'a:2' },
      { ...r, taskId: 't~2' },
      { ...r, attempt: 3 },
      { ...r, take: 'take-2' },
      { ...r, take: undefined },
      { ...r, seq: 8 },
      { ...r, seq: undefined },
      { ...r, nonce: 'n-2' },
      { ...r, counter: 1 },
      { ...r, counter: 2 },
      { ...r, progress: { step: 2 } },
      { ...r, progress: undefined },
      { ...r, result: 1 },
      { ...r, retry: false },
      { ...r, error: { code: 'E', message: 'm' } },
      // Field boundaries cannot shift: a `:` in one field is not a separator.
      { ...r, take: 'take-1:7', seq: undefined },
    ].map((o) => reportProof(key, o));
    expect(new Set([proof, ...others]).size).toBe(others.length + 1);
  });

  it('the content is canonical: the same value however its JSON was written', () => {
    const a = JSON.parse(
      '{"b":[1.0,1e21,1e-7,-0],"a":"\\u00e9\\u001f","\\ud83d\\ude00":1,"\\ufb01":2}',
    );
    expect(canonicalJson(a)).toBe('{"a":"é\\u001f","b":[1,1e+21,1e-7,0],"\ud83d\ude00":1,"ﬁ":2}');
    const b = JSON.parse(
      '{ "\\ufb01" : 2, "\\ud83d\\ude00":1, "b":[1,1E21,0.0000001,0],"a":"é\\u001F"}',
    );
    expect(reportContentDigest({ result: a })).toBe(reportContentDigest({ result: b }));
    // Nested deeper than the call stack goes (JSON.parse reads it, so the sidecar must too).
    const n = 100_000;
    const deep = JSON.parse(`${'['.repeat(n)}${']'.repeat(n)}`) as unknown;
    expect(canonicalJson(deep)).toHaveLength(2 * n);
  });
});
