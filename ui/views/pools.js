/** Pools: size against min/max, queue depth, health; scale one. */
import { call } from '../lib/api.js';
import { badge, button, enumName, h, KeyedTable } from '../lib/dom.js';

export const id = 'pools';
export const title = 'Pools';

export function createView(ctx) {
  const rows = new KeyedTable(
    [
      'Name',
      'Id',
      'Status',
      'Size (min–max)',
      'Healthy',
      'Queue depth',
      'Running',
      'Done / failed',
      'Scale',
    ],
    'No pools.',
  );
  const el = h(
    'section',
    { class: 'view', id: 'view-pools' },
    h('div', { class: 'toolbar' }, h('h2', {}, title)),
    rows.el,
  );

  function scaleControl(pool) {
    const input = h('input', {
      type: 'number',
      min: pool.minAgents ?? 0,
      max: pool.maxAgents ?? 0,
      value: (pool.agentIds ?? []).length,
      class: 'narrow',
      'aria-label': `target size of ${pool.name}`,
    });
    return h(
      'span',
      { class: 'inline' },
      input,
      button('Scale', async () => {
        await ctx.act(`Scaled ${pool.name} to ${input.value}`, () =>
          call('FabricService/ScalePool', { poolId: pool.poolId, targetSize: Number(input.value) }),
        );
      }),
    );
  }

  return {
    el,
    async refresh() {
      const [{ pools = [] }, stats] = await Promise.all([
        call('FabricService/ListPools', {}),
        call('FabricService/GetStats', {}),
      ]);
      const figures = stats.pools ?? {};
      rows.update(
        pools.map((p) => {
          const s = figures[p.poolId] ?? {};
          const status = enumName(p.status, 'POOL_STATUS_');
          return {
            key: p.poolId,
            sig: JSON.stringify([p, s]),
            dataset: { pool: p.poolId },
            cells: () => [
              h('strong', {}, p.name ?? ''),
              h('code', {}, p.poolId),
              badge(status || 'UNKNOWN', status === 'ACTIVE' ? 'ok' : 'warn'),
              `${(p.agentIds ?? []).length} (${p.minAgents ?? 0}–${p.maxAgents ?? 0})`,
              `${s.healthyAgents ?? 0}`,
              h('span', { class: 'queue' }, String(s.queuedTasks ?? 0)),
              `${s.runningTasks ?? 0}`,
              `${s.completedTasks ?? 0} / ${s.failedTasks ?? 0}`,
              status === 'ACTIVE' ? scaleControl(p) : '',
            ],
          };
        }),
      );
    },
    onEvent(event) {
      if (event.agent || event.task) ctx.schedule('pools');
    },
  };
}
