// The audit trail: filters, newest first, chain verification (operator keys).
import { h, fill, errorBox } from './dom.js';
import { api } from './api.js';
import { auditTable } from './sandbox.js';

export function render(main, params) {
  const kind = h('select', { id: 'audit-kind', 'aria-label': 'Kind' }, ['', 'api', 'command', 'file', 'lifecycle'].map(k => h('option', { value: k }, k || 'any kind')));
  kind.value = params.get('kind') ?? '';
  const sandbox = h('input', { id: 'audit-sandbox', type: 'text', placeholder: 'sandbox id', value: params.get('sandbox') ?? '', size: 18, 'aria-label': 'Sandbox' });
  const tenant = h('input', { id: 'audit-tenant', type: 'text', placeholder: 'tenant (operator)', value: params.get('tenant') ?? '', size: 14, 'aria-label': 'Tenant' });
  const since = h('input', { id: 'audit-since', type: 'datetime-local', 'aria-label': 'Since' });
  const until = h('input', { id: 'audit-until', type: 'datetime-local', 'aria-label': 'Until' });
  const limit = h('select', { id: 'audit-limit', 'aria-label': 'Limit' }, ['100', '500', '2000'].map(n => h('option', { value: n }, `${n} records`)));
  const verify = h('button', { id: 'audit-verify', type: 'button' }, 'Verify chain');
  const verdict = h('div', { id: 'audit-verdict' });
  const body = h('div', { id: 'audit-records' }, h('p', { class: 'muted' }, 'Loading…'));
  fill(main, h('h1', {}, 'Audit trail'),
    h('form', { class: 'toolbar', id: 'audit-filters', on: { submit: e => { e.preventDefault(); load(); } } },
      kind, sandbox, tenant, h('label', {}, 'since', since), h('label', {}, 'until', until), limit,
      h('button', { type: 'submit', id: 'audit-apply' }, 'Filter'), verify),
    verdict, body);

  verify.addEventListener('click', async () => {
    verify.disabled = true;
    fill(verdict, h('p', { class: 'muted' }, 'Verifying…'));
    try {
      const r = await api('/v1/audit/verify');
      fill(verdict, r.valid
        ? h('p', { class: 'ok', id: 'audit-valid' }, `Chain intact: ${r.records} records verified.`)
        : h('p', { class: 'error', id: 'audit-invalid' }, `Chain BROKEN at record ${r.firstBadSeq}: ${r.problem} (${r.records} records checked).`));
    } catch (err) {
      fill(verdict, errorBox(err));
    } finally {
      verify.disabled = false;
    }
  });

  // The API returns oldest first from a sequence number; newest first here means asking for the
  // latest window: the page shows the last N records matching the filters.
  async function load() {
    const q = new URLSearchParams();
    if (kind.value) q.set('kind', kind.value);
    if (sandbox.value.trim()) q.set('sandbox', sandbox.value.trim());
    if (tenant.value.trim()) q.set('tenant', tenant.value.trim());
    if (since.value) q.set('since', new Date(since.value).toISOString());
    if (until.value) q.set('until', new Date(until.value).toISOString());
    q.set('limit', '100000');
    try {
      const r = await api(`/v1/audit?${q}`);
      const n = Number(limit.value);
      fill(body, h('p', { class: 'muted' }, `${r.records.length} records match; showing the newest ${Math.min(n, r.records.length)}.`),
        auditTable(r.records.slice(-n).reverse()));
    } catch (err) {
      fill(body, errorBox(err));
    }
  }
  load();
}
