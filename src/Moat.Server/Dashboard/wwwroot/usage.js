// Usage per UTC day, in the units Moat meters (and the operator's prices, if configured).
import { h, fill, table, errorBox, num } from './dom.js';
import { api, enc } from './api.js';
import { barChart } from './charts.js';

const metrics = [
  ['vcpuSeconds', 'vCPU-seconds', 2],
  ['memoryGiBSeconds', 'Memory GiB-seconds', 2],
  ['diskGiBHours', 'Disk GiB-hours', 4],
  ['sandboxSeconds', 'Sandbox-seconds', 1],
  ['cost', 'Cost', 4],
];

export function render(main) {
  const today = new Date().toISOString().slice(0, 10);
  const from = h('input', { id: 'usage-from', type: 'date', value: new Date(Date.now() - 29 * 86400_000).toISOString().slice(0, 10), 'aria-label': 'From' });
  const to = h('input', { id: 'usage-to', type: 'date', value: today, 'aria-label': 'To' });
  const body = h('div', { id: 'usage' }, h('p', { class: 'muted' }, 'Loading…'));
  const csv = h('button', { type: 'button', id: 'usage-csv' }, 'Export CSV');
  fill(main, h('h1', {}, 'Usage per day'),
    h('form', { class: 'toolbar', on: { submit: e => { e.preventDefault(); load(); } } },
      h('label', {}, 'From', from), h('label', {}, 'To', to), h('button', { type: 'submit' }, 'Show'), csv),
    body);
  const query = () => `from=${enc(from.value)}&to=${enc(to.value)}`;
  csv.addEventListener('click', async () => {
    try {
      const response = await api(`/v1/usage?${query()}&format=csv`, { raw: true });
      const url = URL.createObjectURL(await response.blob());
      const a = h('a', { href: url, download: `moat-usage-${from.value}-${to.value}.csv`, hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    } catch (err) {
      fill(body, errorBox(err));
    }
  });

  async function load() {
    try {
      const r = await api(`/v1/usage?${query()}`);
      // Every day of the range gets a bar (0 when nothing ran); several tenants (operator) add up.
      const days = [];
      for (let d = Date.parse(from.value); d <= Date.parse(to.value); d += 86400_000) days.push(new Date(d).toISOString().slice(0, 10));
      const sum = new Map(days.map(d => [d, Object.fromEntries(metrics.map(([k]) => [k, 0]))]));
      for (const row of r.days) {
        const day = sum.get(row.day) ?? sum.set(row.day, Object.fromEntries(metrics.map(([k]) => [k, 0]))).get(row.day);
        for (const [k] of metrics) day[k] += row[k] ?? 0;
      }
      const currency = r.days.find(d => d.currency)?.currency ?? '';
      const charts = metrics.filter(([k]) => k !== 'cost' || r.days.some(d => d.cost > 0)).map(([k, title, digits]) => {
        const canvas = h('canvas', { class: 'chart', dataset: { metric: k } });
        return { canvas, card: h('div', { class: 'card' }, h('h3', {}, k === 'cost' ? `${title} (${currency})` : title), canvas), k, digits };
      });
      fill(body,
        h('div', { class: 'grid' }, charts.map(c => c.card)),
        h('h2', {}, 'Rows'),
        table([
          { title: 'Day', cell: d => d.day },
          { title: 'Tenant', cell: d => d.tenantId },
          ...metrics.map(([k, title, digits]) => ({ title, num: true, cell: d => num(d[k], digits) })),
        ], r.days, 'No usage in this range.'));
      const ordered = [...sum.keys()].sort();
      for (const c of charts) barChart(c.canvas, ordered.map(d => ({ label: d.slice(5), value: sum.get(d)[c.k] })), v => num(v, c.digits));
    } catch (err) {
      fill(body, errorBox(err));
    }
  }
  load();
}
