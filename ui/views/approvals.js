/**
 * The approvals inbox: pending approvals (agent, tool, arguments with secrets masked, the rule,
 * time left) with Approve / Deny and a reason; the decided ones with their approver. Live from
 * the APPROVALS topic; a browser notification on a new one when the user allowed them.
 */
import { call } from '../lib/api.js';
import {
  badge,
  button,
  clock,
  codePoint,
  confirmButton,
  enumName,
  h,
  KeyedTable,
  markLookalikes,
  replace,
  since,
  table,
  visible,
} from '../lib/dom.js';
import { maskSecrets } from '../lib/mask.js';

export const id = 'approvals';
export const title = 'Approvals';

/** Decided approvals shown (the newest). */
const SHOWN_DECIDED = 100;
const STATUS = { APPROVED: 'ok', DENIED: 'bad', EXPIRED: 'muted', PENDING: 'warn' };

function ruleOf(a) {
  if (!a.policy) return a.reason || '—';
  return `${a.policy}${a.rule !== undefined ? ` #${a.rule}` : ''}${a.reason ? `: ${a.reason}` : ''}`;
}

/**
 * The arguments with secrets masked; when the mask hid something in a pending one, a note and a button that shows
 * the arguments as sent (and masks them again): the mask guesses what a secret is, and what it
 * hides — `cat Bearer ../../etc/shadow` — may be what the call does. In a pending one, letters
 * outside ASCII among ASCII ones are marked and named below the box ({@link markLookalikes}).
 */
function args(a, decided = false) {
  const params = a.params ?? {};
  const masked = JSON.stringify(maskSecrets(params), null, 2);
  // A decided one needs no decision (and its table is rebuilt on each refresh).
  if (decided) return h('pre', { class: 'args decided' }, masked);
  const box = h('pre', { class: 'args' });
  const note = h('p', { class: 'hint lookalikes' });
  const show = (text) => {
    const { nodes, found, more } = markLookalikes(text);
    replace(box, nodes);
    note.hidden = found.length === 0;
    const named = found.slice(0, 20).map((c) => `${c} ${codePoint(c)}`);
    replace(
      note,
      found.length === 0
        ? []
        : `Not ASCII among ASCII letters, may imitate one: ${named.join(', ')}${more || found.length > named.length ? ', and more' : ''}`,
    );
  };
  show(masked);
  const whole = JSON.stringify(params, null, 2);
  if (whole === masked) return h('div', {}, box, note);
  let revealed = false;
  const reveal = button(
    'Show masked values',
    async () => {
      revealed = !revealed;
      show(revealed ? whole : masked);
      reveal.textContent = revealed ? 'Mask secrets' : 'Show masked values';
    },
    { class: 'reveal' },
  );
  return h('div', {}, box, note, h('span', { class: 'hint' }, 'Some values are masked. '), reveal);
}

/** A tool name with its look-alike letters marked (an upstream chose it). */
function toolName(tool) {
  return h('code', {}, markLookalikes(tool ?? '').nodes);
}

export function createView(ctx) {
  const pendingRows = new KeyedTable(
    ['Agent', 'Tool', 'Arguments', 'Rule', 'Time left', 'Decision'],
    'No approval is waiting.',
  );
  const decidedBody = h('div');
  const notify = button('Enable notifications', async () => {
    if ('Notification' in window) await Notification.requestPermission();
    notify.hidden = !('Notification' in window) || Notification.permission !== 'default';
  });
  notify.hidden = !('Notification' in window) || Notification.permission !== 'default';
  const el = h(
    'section',
    { class: 'view', id: 'view-approvals' },
    h('div', { class: 'toolbar' }, h('h2', {}, 'Pending approvals'), notify),
    pendingRows.el,
    h('h2', {}, 'Decided'),
    decidedBody,
  );
  let pending = [];
  const names = () => new Map((ctx.agents ?? []).map((a) => [a.agentId, a.name]));

  function decide(a, verb) {
    return async (reasonInput) => {
      const reason = reasonInput.value.trim();
      await ctx.act(`${verb === 'Approve' ? 'Approved' : 'Denied'} ${a.tool}`, () =>
        call(`ApprovalService/${verb}`, { id: a.id, reason }),
      );
    };
  }

  function renderPending() {
    const agentNames = names();
    pendingRows.update(
      pending.map((a) => ({
        key: a.id,
        sig: JSON.stringify([a, agentNames.get(a.agentId)]),
        dataset: { approval: a.id, tool: a.tool },
        cells: () => {
          const reason = h('input', {
            type: 'text',
            placeholder: 'reason (optional)',
            class: 'reason',
            'aria-label': `reason for ${a.id}`,
          });
          return [
            agentNames.get(a.agentId) ?? a.agentId,
            toolName(a.tool),
            args(a),
            ruleOf(a),
            since(a.expiresAt),
            h(
              'div',
              {},
              // Its caller left (or the sidecar restarted): a decision is recorded, nothing runs.
              a.orphaned
                ? h(
                    'p',
                    { class: 'hint orphaned' },
                    'No call waits for this approval any more (its caller left or the sidecar restarted): approving it runs nothing — the agent must call again.',
                  )
                : null,
              h(
                'span',
                { class: 'inline' },
                reason,
                // Two clicks: when an approval above leaves (it expired — the agent chose when — or
                // another operator decided it), the next one moves up under the pointer, and a
                // click aimed at the first must not approve it.
                confirmButton('Approve', () => decide(a, 'Approve')(reason), { class: 'approve' }),
                button('Deny', () => decide(a, 'Deny')(reason), { class: 'danger' }),
              ),
            ),
          ];
        },
      })),
    );
  }

  function notifyNew(a) {
    if (!('Notification' in window) || Notification.permission !== 'granted') return;
    const n = new Notification('Approval needed', {
      body: visible(`${names().get(a.agentId) ?? a.agentId} wants to call ${a.tool}`),
      tag: a.id,
    });
    n.onclick = () => {
      window.focus();
      ctx.show('approvals');
    };
  }

  return {
    el,
    async refresh() {
      // The page shows the arguments from `params` (masked, or as sent on request): their copy
      // as base64 `paramsJson` is left out, as it would double what each refresh reads.
      const p = await call('ApprovalService/ListApprovals', {
        status: 'APPROVAL_STATUS_PENDING',
        omitParamsJson: true,
      });
      pending = p.approvals ?? [];
      // The newest SHOWN_DECIDED decided ones are among the newest SHOWN_DECIDED + pending: not
      // the whole history (up to maxResolved approvals, each with its call's arguments).
      const all = await call('ApprovalService/ListApprovals', {
        limit: SHOWN_DECIDED + pending.length,
        omitParamsJson: true,
      });
      ctx.badge('approvals', pending.length);
      renderPending();
      const agentNames = names();
      const decided = (all.approvals ?? [])
        .filter((a) => a.status !== 'APPROVAL_STATUS_PENDING')
        .reverse()
        .slice(0, SHOWN_DECIDED);
      replace(
        decidedBody,
        table(
          ['Decided', 'Agent', 'Tool', 'Arguments', 'Status', 'Approver', 'Reason'],
          decided.map((a) => {
            const status = enumName(a.status, 'APPROVAL_STATUS_');
            const row = [
              clock(a.decidedAt),
              agentNames.get(a.agentId) ?? a.agentId,
              h('code', {}, a.tool),
              args(a, true),
              a.orphaned
                ? h('span', {}, badge(status, STATUS[status]), ' (no call waited: nothing ran)')
                : badge(status, STATUS[status]),
              a.approver || '—',
              a.decisionReason || '',
            ];
            row.dataset = { approval: a.id, status };
            return row;
          }),
          'Nothing decided yet.',
        ),
      );
    },
    onEvent(event) {
      const e = event.approval;
      if (!e) return;
      if (e.kind === 'APPROVAL_EVENT_KIND_REQUESTED' && !e.existing && e.approval)
        notifyNew(e.approval);
      ctx.schedule('approvals');
    },
  };
}
