// Templates visible to the key's tenant.
import { h, fill, table, errorBox, bytes, time } from './dom.js';
import { api } from './api.js';

export function render(main) {
  const body = h('div', { id: 'templates' }, h('p', { class: 'muted' }, 'Loading…'));
  fill(main, h('h1', {}, 'Templates'), body);
  (async () => {
    try {
      const r = await api('/v1/templates');
      fill(body, table([
        { title: 'Name', cls: 'wrap', cell: t => h('span', { class: 'template-name' }, t.name) },
        { title: 'Id', cell: t => h('span', { class: 'mono', title: t.id }, t.id.replace(/^sha256:/, '').slice(0, 12)) },
        { title: 'Shared', cell: t => t.public ? 'public' : 'tenant' },
        { title: 'Source', cls: 'wrap', cell: t => t.source ?? '' },
        { title: 'Size', num: true, cell: t => t.sizeBytes === undefined ? '' : bytes(t.sizeBytes) },
        { title: 'Layers', num: true, cell: t => t.layers?.length ?? '' },
        { title: 'User', cell: t => t.user },
        { title: 'Cmd', cls: 'wrap mono', cell: t => (t.cmd ?? []).join(' ') },
        { title: 'Created', cell: t => time(t.createdAt) },
      ], r.templates, 'No templates.'));
    } catch (err) {
      fill(body, errorBox(err));
    }
  })();
}
