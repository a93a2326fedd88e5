/** Tasks by status and priority; cancel one that has not ended. */
import { call, listAll } from '../lib/api.js';
import { badge, confirmButton, enumName, h, KeyedTable, replace, since } from '../lib/dom.js';

export const id = 'tasks';
export const title = 'Tasks';

const STATUSES = ['PENDING', 'SCHEDULED', 'RUNNING', 'COMPLETED', 'FAILED', 'TIMEOUT', 'CANCELLED'];
const OPEN = new Set(['PENDING', 'SCHEDULED', 'RUNNING']);
const KIND = {
  COMPLETED: 'ok',
  RUNNING: 'ok',
  FAILED: 'bad',
  TIMEOUT: 'bad',
  CANCELLED: 'muted',
  PENDING: 'warn',
  SCHEDULED: 'warn',
};
const PRIORITY_ORDER = { CRITICAL: 0, HIGH: 1, NORMAL: 2, LOW: 3 };

export function createView(ctx) {
  const counts = h('div', { class: 'counts' });
  const filter = h(
    'select',
    { 'aria-label': 'status filter' },
    h('option', { value: '' }, 'all statuses'),
    STATUSES.map((s) => h('option', { value: s }, s.toLowerCase())),
  );
  filter.addEventListener('change', () => render());
  const rows = new KeyedTable(
    ['Id', 'Type', 'Status', 'Priority', 'Agent', 'Pool', 'Attempt', 'Created', 'Error', ''],
    'No tasks.',
  );
  const el = h(
    'section',
    { class: 'view', id: 'view-tasks' },
    h('div', { class: 'toolbar' }, h('h2', {}, title), filter),
    counts,
    rows.el,
  );
  let tasks = [];

  function render() {
    const byStatus = Object.fromEntries(STATUSES.map((s) => [s, 0]));
    for (const t of tasks)
      byStatus[enumName(t.status, 'TASK_STATUS_')] =
        (byStatus[enumName(t.status, 'TASK_STATUS_')] ?? 0) + 1;
    replace(
      counts,
      STATUSES.map((s) =>
        h('span', { class: 'count' }, badge(s.toLowerCase(), KIND[s]), ` ${byStatus[s]}`),
      ),
    );
    const shown = tasks
      .filter((t) => !filter.value || enumName(t.status, 'TASK_STATUS_') === filter.value)
      .sort(
        (a, b) =>
          (PRIORITY_ORDER[enumName(a.priority, 'TASK_PRIORITY_')] ?? 9) -
            (PRIORITY_ORDER[enumName(b.priority, 'TASK_PRIORITY_')] ?? 9) ||
          Date.parse(b.createdAt ?? 0) - Date.parse(a.createdAt ?? 0),
      );
    rows.update(
      shown.slice(0, 500).map((t) => {
        const status = enumName(t.status, 'TASK_STATUS_');
        return {
          key: t.taskId,
          sig: JSON.stringify(t),
          dataset: { task: t.taskId },
          cells: () => [
            h('code', {}, t.taskId),
            t.taskType,
            badge(status, KIND[status]),
            enumName(t.priority, 'TASK_PRIORITY_') || 'NORMAL',
            t.assignedAgentId || t.agentId || '—',
            t.poolId || '—',
            `${t.attempt ?? 0}/${t.maxAttempts ?? 0}`,
            since(t.createdAt),
            t.error ? h('span', { class: 'error' }, `${t.error.code}: ${t.error.message}`) : '',
            OPEN.has(status)
              ? confirmButton(
                  'Cancel',
                  () =>
                    ctx.act(`Cancelled ${t.taskId}`, () =>
                      call('FabricService/CancelTask', {
                        taskId: t.taskId,
                        reason: 'cancelled from the dashboard',
                      }),
                    ),
                  { class: 'danger' },
                )
              : '',
          ],
        };
      }),
    );
  }

  return {
    el,
    async refresh() {
      // The view shows no payload, result or progress: the summary leaves them out (a result
      // may be a megabyte, and up to 5,000 tasks are read every few seconds).
      tasks = await listAll('FabricService/ListTasks', { summary: true }, 'tasks');
      render();
    },
    onEvent(event) {
      if (event.task) ctx.schedule('tasks');
    },
  };
}
