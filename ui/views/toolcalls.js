/**
 * Recent tool calls with their decision and deciding rule, from the TOOL_CALLS topic of
 * EventService/Watch (the calls that ended since the page opened; the newest first).
 */
import { badge, clock, h, replace, table } from '../lib/dom.js';

export const id = 'toolcalls';
export const title = 'Tool calls';

const KEEP = 200;
const DECISION = {
  allow: 'ok',
  approved: 'ok',
  deny: 'bad',
  budget: 'bad',
  error: 'bad',
  require_approval: 'warn',
};
const OUTCOME = {
  ok: 'ok',
  tool_error: 'warn',
  denied: 'bad',
  error: 'bad',
  cancelled: 'muted',
  withheld: 'bad',
};

export function createView(ctx) {
  const body = h('div');
  const el = h(
    'section',
    { class: 'view', id: 'view-toolcalls' },
    h(
      'div',
      { class: 'toolbar' },
      h('h2', {}, title),
      h('span', { class: 'hint' }, `the last ${KEEP} calls since this page opened`),
    ),
    body,
  );
  const calls = [];

  function render() {
    const names = new Map((ctx.agents ?? []).map((a) => [a.agentId, a.name]));
    const rows = calls.map(({ time, call }) => {
      const row = [
        clock(time),
        names.get(call.agentId) ?? call.agentId,
        h('code', {}, call.tool),
        badge(call.decision ?? '', DECISION[call.decision] ?? 'muted'),
        call.rule || '—',
        badge(call.outcome ?? '', OUTCOME[call.outcome] ?? 'muted'),
        call.errorCode || '',
        `${Math.round(call.durationMs ?? 0)} ms`,
      ];
      row.dataset = { tool: call.tool, outcome: call.outcome ?? '' };
      return row;
    });
    replace(
      body,
      table(
        ['Time', 'Agent', 'Tool', 'Decision', 'Rule', 'Outcome', 'Code', 'Took'],
        rows,
        'No tool calls since this page opened.',
      ),
    );
  }

  // Calls come in bursts (thousands a second on a busy sidecar): the table is rebuilt at most
  // once per frame, not once per call, and not at all while the page is hidden.
  let drawing = false;
  function draw() {
    if (drawing) return;
    drawing = true;
    requestAnimationFrame(() => {
      drawing = false;
      render();
    });
  }

  render();
  return {
    el,
    async refresh() {
      draw();
    },
    onEvent(event, time) {
      if (!event.toolCall) return;
      calls.unshift({ time, call: event.toolCall });
      if (calls.length > KEEP) calls.length = KEEP;
      draw();
    },
  };
}
