/** Agents: health, last heartbeat, load; terminate one. Live from the AGENTS topic. */
import { call, listAll } from '../lib/api.js';
import { age, badge, confirmButton, enumName, h, replace, table } from '../lib/dom.js';

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
  const body = h('div');
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
    body,
  );
  let agents = [];

  function render() {
    const now = Date.now();
    const shown = agents.filter(
      (a) => showEnded.checked || enumName(a.status, 'AGENT_STATUS_') !== 'TERMINATED',
    );
    const rows = shown.map((a) => {
      const live = enumName(a.status, 'AGENT_STATUS_') !== 'TERMINATED';
      const row = [
        h('strong', {}, a.name ?? ''),
        h('code', {}, a.agentId),
        healthBadge(a.status),
        a.poolId || '—',
        age(a.lastHeartbeatAt, now),
        `${a.runningTasks ?? 0} / ${a.queuedTasks ?? 0}`,
        `${a.completedTasks ?? 0} / ${a.failedTasks ?? 0}`,
        live
          ? confirmButton(
              'Terminate',
              async () => {
                await ctx.act(`Terminated ${a.name}`, () =>
                  call('FabricService/TerminateAgent', { agentId: a.agentId }),
                );
              },
              { class: 'danger' },
            )
          : '',
      ];
      row.dataset = { agent: a.agentId, name: a.name ?? '' };
      return row;
    });
    replace(
      body,
      table(
        ['Name', 'Id', 'Health', 'Pool', 'Last heartbeat', 'Running / queued', 'Done / failed', ''],
        rows,
        'No agents.',
      ),
    );
  }

  return {
    el,
    async refresh() {
      agents = await listAll('FabricService/ListAgents', {}, 'agents');
      ctx.agents = agents;
      render();
    },
    tick: render,
    onEvent(event) {
      if (event.agent) ctx.schedule('agents');
    },
  };
}
