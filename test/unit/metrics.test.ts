import { describe, expect, it } from 'vitest';
import { DURATION_BUCKETS, GatewayMetrics, renderMetrics } from '../../src/gateway/metrics.js';

describe('GatewayMetrics', () => {
  it('counts requests by tool, decision and outcome, with a cumulative duration histogram', () => {
    const m = new GatewayMetrics();
    m.recordCall('ev__echo', 'allow', 'ok', 0.2);
    m.recordCall('ev__echo', 'allow', 'ok', 3);
    m.recordCall('ev__echo', 'deny', 'denied', 0.1);
    m.recordCall('(unknown)', 'none', 'error', 0.05);
    const text = renderMetrics(m.families());
    expect(text).toContain('# TYPE agent_fabric_requests_total counter\n');
    expect(text).toContain(
      'agent_fabric_requests_total{tool="ev__echo",decision="allow",outcome="ok"} 2\n',
    );
    expect(text).toContain(
      'agent_fabric_requests_total{tool="ev__echo",decision="deny",outcome="denied"} 1\n',
    );
    expect(text).toContain(
      'agent_fabric_requests_total{tool="(unknown)",decision="none",outcome="error"} 1\n',
    );
    // 0.2 ms and 3 ms: buckets are cumulative and end at +Inf = count.
    const bucket = (le: string): number =>
      Number(
        new RegExp(
          `agent_fabric_request_duration_seconds_bucket\\{outcome="ok",le="${le.replace('+', '\\+')}"\\} (\\S+)`,
        ).exec(text)?.[1],
      );
    expect(bucket('0.0005')).toBe(1);
    expect(bucket('0.0025')).toBe(1);
    expect(bucket('0.005')).toBe(2);
    expect(bucket('60')).toBe(2);
    expect(bucket('+Inf')).toBe(2);
    expect(text).toContain('agent_fabric_request_duration_seconds_count{outcome="ok"} 2\n');
    expect(text).toMatch(/agent_fabric_request_duration_seconds_sum\{outcome="ok"\} 0\.0032\d*\n/);
    const okBuckets = text.match(/_bucket\{outcome="ok"/g) ?? [];
    expect(okBuckets).toHaveLength(DURATION_BUCKETS.length + 1);
  });

  it('escapes label values and renders special numbers as Prometheus does', () => {
    const text = renderMetrics([
      {
        name: 'x',
        help: 'a \\ b\nc',
        type: 'gauge',
        samples: [
          { labels: { v: 'q"uote\\back\nline' }, value: Number.NaN },
          { value: Number.POSITIVE_INFINITY },
          { value: 1.5 },
        ],
      },
    ]);
    expect(text).toBe(
      '# HELP x a \\\\ b\\nc\n' +
        '# TYPE x gauge\n' +
        'x{v="q\\"uote\\\\back\\nline"} NaN\n' +
        'x +Inf\n' +
        'x 1.5\n',
    );
  });
});
