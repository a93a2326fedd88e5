/**
 * Budgets as bars: tokens per hour and cost per day of the fabric, each pool and each live
 * agent that has a limit, with the warning line and the next reset. Alerts come live from the
 * BUDGETS topic.
 */
import { call } from '../lib/api.js';
import { badge, duration, h, replace } from '../lib/dom.js';

export const id = 'budgets';
export const title = 'Budgets';

function bar(label, usage, warnAt) {
  if (!usage || usage.limit === undefined) return null;
  const limit = usage.limit;
  const used = usage.used ?? 0;
  const reserved = usage.reserved ?? 0;
  const pct = (x) => `${Math.min(100, (x / limit) * 100).toFixed(1)}%`;
  return h(
    'div',
    { class: 'bar-row' },
    h('span', { class: 'bar-label' }, label),
    h(
      'div',
      {
        class: 'bar',
        role: 'meter',
        'aria-valuemin': 0,
        'aria-valuemax': limit,
        'aria-valuenow': used,
        'aria-label': label,
      },
      h('div', { class: 'bar-used', style: { width: pct(used) } }),
      h('div', { class: 'bar-reserved', style: { left: pct(used), width: pct(reserved) } }),
      h('div', {
        class: 'bar-warn',
        style: { left: `${Math.min(100, warnAt)}%` },
        title: `warning at ${warnAt}%`,
      }),
    ),
    h(
      'span',
      { class: 'bar-figure' },
      `${round(used)}${reserved ? ` (+${round(reserved)} reserved)` : ''} / ${round(limit)}`,
    ),
  );
}

function round(x) {
  return Math.round(x * 100) / 100;
}

export function createView(ctx) {
  const alerts = h('ul', { class: 'alerts' });
  const body = h('div', { class: 'budgets' });
  const el = h(
    'section',
    { class: 'view', id: 'view-budgets' },
    h('div', { class: 'toolbar' }, h('h2', {}, title)),
    alerts,
    body,
  );
  const recent = [];

  return {
    el,
    async refresh() {
      const agents = (ctx.agents ?? []).filter((a) => a.status !== 'AGENT_STATUS_TERMINATED');
      const { pools = [] } = await call('FabricService/ListPools', {});
      const scopes = [
        { scope: { fabric: true }, label: 'Fabric' },
        ...pools.map((p) => ({ scope: { poolId: p.poolId }, label: `Pool ${p.name}` })),
        ...agents.map((a) => ({ scope: { agentId: a.agentId }, label: `Agent ${a.name}` })),
      ];
      const statuses = await Promise.all(
        scopes.map(async (s) => ({
          ...s,
          status: (await call('BudgetService/GetBudgetStatus', { scope: s.scope })).status,
        })),
      );
      const cards = statuses
        .filter(
          ({ status }) =>
            status && (status.tokens?.limit !== undefined || status.cost?.limit !== undefined),
        )
        .map(({ label, status }) => {
          const warnAt = status.warnAtPercent ?? 80;
          return h(
            'div',
            { class: 'card', dataset: { scope: status.scope } },
            h(
              'h3',
              {},
              label,
              ' ',
              status.exhausted
                ? badge('exhausted', 'bad')
                : status.warning
                  ? badge('warning', 'warn')
                  : badge(`${round(status.percentUsed ?? 0)}%`, 'ok'),
            ),
            bar('tokens / hour', status.tokens, warnAt),
            bar('cost / day', status.cost, warnAt),
            h(
              'p',
              { class: 'hint' },
              `warning at ${warnAt}% · next reset ${status.resetsAt ? `in ${duration(Math.max(0, Date.parse(status.resetsAt) - Date.now()))} (${new Date(status.resetsAt).toLocaleTimeString()})` : '—'}`,
            ),
          );
        });
      replace(body, cards.length ? cards : h('p', { class: 'empty' }, 'No budget limits are set.'));
    },
    onEvent(event, time) {
      const a = event.budgetAlert;
      if (!a) return;
      recent.unshift(
        `${new Date(time).toLocaleTimeString()} ${a.scope}: ${(a.kind ?? '').replace('BUDGET_ALERT_KIND_', '').toLowerCase()} (${round(a.percentUsed ?? 0)}% of ${(a.limit ?? '').replace('BUDGET_LIMIT_KIND_', '').toLowerCase()})`,
      );
      recent.length = Math.min(recent.length, 10);
      replace(
        alerts,
        recent.map((t) => h('li', {}, t)),
      );
      ctx.schedule('budgets');
    },
  };
}
