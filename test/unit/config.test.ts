import { describe, expect, it } from 'vitest';
import { DEFAULT_FABRIC_CONFIG, parseFabricConfig } from '../../src/config.js';
import { ConfigError } from '../../src/errors.js';

describe('parseFabricConfig', () => {
  it('uses the Fabric Guide defaults', () => {
    const c = parseFabricConfig();
    expect(c).toMatchObject({
      maxQueueDepth: 1000,
      defaultTimeoutSeconds: 300,
      heartbeatIntervalSeconds: 30,
      maxConcurrentAgents: 100,
      maxConcurrentTasksPerAgent: 5,
    });
    expect(Object.isFrozen(c)).toBe(true);
    expect(c).toEqual(DEFAULT_FABRIC_CONFIG);
  });

  it('merges overrides', () => {
    expect(parseFabricConfig({ maxQueueDepth: 7 }).maxQueueDepth).toBe(7);
  });

  it.each([
    ['maxQueueDepth', -1],
    ['maxQueueDepth', 1.5],
    ['maxQueueDepth', Number.NaN],
    ['defaultTimeoutSeconds', 0],
    ['defaultTimeoutSeconds', Number.POSITIVE_INFINITY],
    ['heartbeatIntervalSeconds', '30'],
    ['maxConcurrentAgents', null],
    ['maxConcurrentTasksPerAgent', 0],
  ])('rejects %s = %s with a ConfigError naming the field', (field, value) => {
    const attempt = () => parseFabricConfig({ [field]: value } as never);
    expect(attempt).toThrow(ConfigError);
    expect(attempt).toThrow(`options.${field}`);
  });

  it('gives one tenant three quarters of the queue by default and refuses a share above the queue', () => {
    expect(parseFabricConfig().maxQueueDepthPerTenant).toBe(750);
    expect(parseFabricConfig({ maxQueueDepth: 40 }).maxQueueDepthPerTenant).toBe(30);
    expect(parseFabricConfig({ maxQueueDepth: 1 }).maxQueueDepthPerTenant).toBe(1);
    expect(parseFabricConfig({ maxQueueDepthPerTenant: 1000 }).maxQueueDepthPerTenant).toBe(1000);
    expect(() => parseFabricConfig({ maxQueueDepth: 10, maxQueueDepthPerTenant: 11 })).toThrow(
      /options\.maxQueueDepthPerTenant.*at most maxQueueDepth \(10\)/,
    );
  });

  it('rejects unknown keys', () => {
    expect(() => parseFabricConfig({ maxQueueDepht: 3 } as never)).toThrow(/maxQueueDepht/);
  });
});
