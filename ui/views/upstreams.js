/** Upstream health (and the sidecar's other readiness checks), from `GET /readyz`. */
import { readiness } from '../lib/api.js';
import { badge, h, replace, table } from '../lib/dom.js';

export const id = 'upstreams';
export const title = 'Upstreams';

export function createView() {
  const summary = h('p');
  const body = h('div');
  const el = h(
    'section',
    { class: 'view', id: 'view-upstreams' },
    h('div', { class: 'toolbar' }, h('h2', {}, title)),
    summary,
    body,
  );
  return {
    el,
    async refresh() {
      const r = await readiness();
      const checks = Object.entries(r.checks ?? {});
      const upstreams = checks.filter(([name]) => name.startsWith('upstream/'));
      const others = checks.filter(([name]) => !name.startsWith('upstream/'));
      replace(
        summary,
        'Sidecar ',
        r.ready ? badge('ready', 'ok') : badge('not ready', 'bad'),
        ' · ',
        others.map(([name, ok]) =>
          h('span', { class: 'count' }, `${name} `, badge(ok ? 'ok' : 'down', ok ? 'ok' : 'bad')),
        ),
      );
      const rows = upstreams.map(([name, ok]) => {
        const row = [
          h('strong', {}, name.slice('upstream/'.length)),
          badge(ok ? 'connected' : 'down', ok ? 'ok' : 'bad'),
        ];
        row.dataset = { upstream: name.slice('upstream/'.length) };
        return row;
      });
      replace(body, table(['Upstream', 'Health'], rows, 'No upstreams configured.'));
    },
    onEvent() {},
  };
}
