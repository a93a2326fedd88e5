/** Agents: health, last heartbeat, load; terminate one. Live from the AGENTS topic. */
import { call, listAll } from '../lib/api.js';
import { badge, confirmButton, enumName, h, KeyedTable, since } from '../lib/dom.js';

export const id = 'agents';
export const title = 'Agents';

const HEALTH = {
  HEALTHY: 'ok',
  STARTING: 'muted',
  DEGRADED: 'warn',
  DRAINING: 'warn',
  UNHEALTHY: 'bad',
  TERMINATED: 'muted',
};

export function healthBadge(status) {
  const s = enumName(status, 'AGENT_STATUS_');
  return badge(s || 'UNKNOWN', HEALTH[s] ?? 'muted');
}

export function createView(ctx) {
  const rows = new KeyedTable(
    ['Name', 'Id', 'Health', 'Pool', 'Last heartbeat', 'Running / queued', 'Done / failed', ''],
    'No agents.',
  );
  const showEnded = h('input', { type: 'checkbox' });
  showEnded.addEventListener('change', () => render());
  const el = h(
    'section',
    { class: 'view', id: 'view-agents' },
    h(
      'div',
      { class: 'toolbar' },
      h('h2', {}, title),
      h('label', {}, showEnded, ' show terminated'),
    ),
    rows.el,
  );
  let agents = [];

  function render() {
    const shown = agents.filter(
      (a) => showEnded.checked || enumName(a.status, 'AGENT_STATUS_') !== 'TERMINATED',
    );
    rows.update(
      shown.map((a) => {
        const { lastHeartbeatAt, ...rest } = a;
        return {
          key: a.agentId,
          sig: JSON.stringify(rest),
          dataset: { agent: a.agentId, name: a.name ?? '' },
          times: [lastHeartbeatAt],
          cells: () => {
            const live = enumName(a.status, 'AGENT_STATUS_') !== 'TERMINATED';
            return [
              h('strong', {}, a.name ?? ''),
              h('code', {}, a.agentId),
              healthBadge(a.status),
              a.poolId || '—',
              since(lastHeartbeatAt),
              `${a.runningTasks ?? 0} / ${a.queuedTasks ?? 0}`,
              `${a.completedTasks ?? 0} / ${a.failedTasks ?? 0}`,
              live
                ? confirmButton(
                    'Terminate',
                    () =>
                      ctx.act(`Terminated ${a.name}`, () =>
                        call('FabricService/TerminateAgent', { agentId: a.agentId }),
                      ),
                    { class: 'danger' },
                  )
                : '',
            ];
          },
        };
      }),
    );
  }

  return {
    el,
    async refresh() {
      agents = await listAll('FabricService/ListAgents', {}, 'agents');
      ctx.agents = agents;
      render();
    },
    onEvent(event) {
      if (event.agent) ctx.schedule('agents');
    },
  };
}
