/** Hooks (GUPP): status, branch and age; reassign an ABANDONED one to another agent. */
import { ApiError, call, listAll } from '../lib/api.js';
import { badge, button, enumName, h, KeyedTable, replace, since } from '../lib/dom.js';

export const id = 'hooks';
export const title = 'Hooks';

const KIND = { ACTIVE: 'ok', PENDING: 'warn', COMPLETED: 'muted', FAILED: 'bad', ABANDONED: 'bad' };

export function createView(ctx) {
  const body = h('div');
  const el = h(
    'section',
    { class: 'view', id: 'view-hooks' },
    h('div', { class: 'toolbar' }, h('h2', {}, title)),
    body,
  );

  const rows = new KeyedTable(
    ['Id', 'Status', 'Agent', 'Branch', 'Age', 'Last progress', 'Note', 'Reassigned', ''],
    'No hooks.',
  );
  /** Agents that may take a hook: alive and not draining. */
  const healthy = () =>
    (ctx.agents ?? []).filter(
      (a) => !['AGENT_STATUS_TERMINATED', 'AGENT_STATUS_DRAINING'].includes(a.status),
    );

  function reassign(hook) {
    const live = healthy().filter((a) => a.agentId !== hook.agentId);
    if (live.length === 0) return h('span', { class: 'hint' }, 'no live agent to take it');
    const select = h(
      'select',
      { 'aria-label': `new agent for ${hook.hookId}` },
      live.map((a) => h('option', { value: a.agentId }, a.name)),
    );
    return h(
      'span',
      { class: 'inline' },
      select,
      button('Reassign', () =>
        ctx.act(`Reassigned ${hook.hookId}`, () =>
          call('FabricService/ReassignHook', { hookId: hook.hookId, agentId: select.value }),
        ),
      ),
    );
  }

  return {
    el,
    async refresh() {
      let hooks;
      try {
        // The view shows no work item or result: the summary leaves them out (each may be
        // up to maxWorkItemBytes, and every hook is read every few seconds).
        hooks = await listAll('FabricService/ListHooks', { summary: true }, 'hooks');
      } catch (error) {
        if (error instanceof ApiError && error.status !== 401) {
          replace(body, h('p', { class: 'empty' }, `Hooks are not available: ${error.message}`));
          return;
        }
        throw error;
      }
      const names = new Map((ctx.agents ?? []).map((a) => [a.agentId, a.name]));
      const candidates = healthy().map((a) => a.agentId);
      rows.update(
        hooks.map((k) => {
          const status = enumName(k.status, 'HOOK_STATUS_');
          return {
            key: k.hookId,
            sig: JSON.stringify([k, names.get(k.agentId), status === 'ABANDONED' ? candidates : 0]),
            dataset: { hook: k.hookId },
            cells: () => [
              h('code', {}, k.hookId),
              badge(status, KIND[status]),
              names.get(k.agentId) ?? k.agentId,
              k.branch ? h('code', {}, k.branch) : '—',
              since(k.createdAt),
              since(k.lastProgressAt),
              k.progressNote || k.abandonReason || '',
              String(k.reassignments ?? 0),
              status === 'ABANDONED' ? reassign(k) : '',
            ],
          };
        }),
      );
      replace(body, rows.el);
    },
    onEvent(event) {
      if (event.agent) ctx.schedule('hooks');
    },
  };
}
