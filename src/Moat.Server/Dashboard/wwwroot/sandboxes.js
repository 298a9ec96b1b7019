// The sandboxes list: live state, tier, template, age and CPU/memory sparklines, refreshed every 5 s.
import { h, fill, table, errorBox, stateBadge, age, bytes } from './dom.js';
import { api, optional, enc } from './api.js';
import { sparkline } from './charts.js';

const REFRESH_MS = 5000;

function draw(canvas, values, color) {
  sparkline(canvas, values, color);
  canvas.dataset.drawn = String(values.length);
}

export function render(main) {
  const filter = h('select', { id: 'state-filter', 'aria-label': 'State' },
    h('option', { value: 'creating,running,paused,stopping' }, 'alive'),
    h('option', { value: '' }, 'all'),
    h('option', { value: 'running' }, 'running'),
    h('option', { value: 'paused' }, 'paused'),
    h('option', { value: 'stopped,failed' }, 'ended'));
  const body = h('div', { id: 'sandboxes' }, h('p', { class: 'muted' }, 'Loading…'));
  const updated = h('span', { class: 'muted' });
  fill(main, h('h1', {}, 'Sandboxes'), h('div', { class: 'toolbar' }, h('label', {}, 'Show', filter), updated), body);
  let stopped = false;
  let timer;
  const load = async () => {
    clearTimeout(timer);
    try {
      const state = filter.value;
      const list = await api('/v1/sandboxes' + (state ? `?state=${enc(state)}` : ''));
      if (stopped) return;
      const rows = list.sandboxes;
      const sparks = new Map();
      const spark = (id, kind) => {
        const c = h('canvas', { class: 'spark', width: 110, height: 24, dataset: { spark: kind } });
        sparks.set(`${id}:${kind}`, c);
        return c;
      };
      fill(body, table([
        { title: 'Id', cell: s => h('a', { href: `#/sandboxes/${enc(s.id)}`, class: 'mono', dataset: { id: s.id } }, s.id) },
        { title: 'State', cell: s => stateBadge(s.state) },
        { title: 'Tier', cell: s => s.isolation },
        { title: 'Template', cell: s => s.template },
        { title: 'Age', cell: s => age(s.createdAt) },
        { title: 'Memory limit', num: true, cell: s => bytes((s.resources?.memoryMiB ?? 0) * 1048576) },
        { title: 'CPU', cell: s => spark(s.id, 'cpu') },
        { title: 'Memory', cell: s => spark(s.id, 'memory') },
      ], rows, 'No sandboxes. Create one with the API, the CLI (moat sandbox create) or an SDK.'));
      fill(updated, `updated ${new Date().toLocaleTimeString()}`);
      const since = new Date(Date.now() - 5 * 60_000).toISOString();
      await Promise.all(rows.filter(s => s.state === 'running' || s.state === 'paused').slice(0, 50).map(async s => {
        let samples = [];
        try {
          samples = (await optional(`/v1/sandboxes/${enc(s.id)}/metrics?since=${enc(since)}`))?.samples ?? [];
        } catch { /* shown as no data */ }
        if (stopped) return;
        draw(sparks.get(`${s.id}:cpu`), samples.map(x => x.cpuPercent), '#1d4ed8');
        draw(sparks.get(`${s.id}:memory`), samples.map(x => x.memoryBytes), '#c2410c');
      }));
      for (const c of sparks.values()) if (!c.dataset.drawn) draw(c, []);
    } catch (err) {
      if (!stopped) fill(body, errorBox(err));
    }
    if (!stopped) timer = setTimeout(load, REFRESH_MS);
  };
  filter.addEventListener('change', load);
  load();
  return () => { stopped = true; clearTimeout(timer); };
}
