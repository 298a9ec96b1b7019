// One sandbox: details, kill/pause/resume, a command box, logs, metrics charts, files, egress and audit.
import { h, fill, table, errorBox, stateBadge, age, bytes, time, num } from './dom.js';
import { api, optional, enc, ApiError } from './api.js';
import { lineChart } from './charts.js';

const REFRESH_MS = 5000;

export function render(main, id) {
  const base = `/v1/sandboxes/${enc(id)}`;
  let stopped = false;
  const timers = [];
  const every = (fn, ms) => { fn(); timers.push(setInterval(() => { if (!stopped) fn(); }, ms)); };

  const header = h('div', { id: 'sandbox-header' }, h('p', { class: 'muted' }, 'Loading…'));
  const actionStatus = h('div', { id: 'action-status' });
  const details = h('div', { id: 'details' });
  const cpuChart = h('canvas', { class: 'chart', id: 'chart-cpu' });
  const memChart = h('canvas', { class: 'chart', id: 'chart-memory' });
  const netChart = h('canvas', { class: 'chart', id: 'chart-network' });
  const diskChart = h('canvas', { class: 'chart', id: 'chart-disk' });
  const metricsNote = h('p', { id: 'metrics-note', class: 'muted' });
  const logs = h('pre', { id: 'logs' }, 'Loading…');
  const files = h('div', { id: 'files' });
  const egress = h('div', { id: 'egress' });
  const auditBox = h('div', { id: 'audit' });

  // Kill asks twice: the second click within 5 s kills (no modal dialog to get lost behind).
  let killArmed = 0;
  const kill = h('button', { id: 'btn-kill', class: 'danger', type: 'button', on: { click: async () => {
    if (Date.now() - killArmed > 5000) {
      killArmed = Date.now();
      kill.textContent = 'Click again to kill';
      setTimeout(() => { if (!stopped) kill.textContent = 'Kill'; }, 5000);
      return;
    }
    await act(() => api(base, { method: 'DELETE' }), 'Killed.');
    kill.textContent = 'Kill';
  } } }, 'Kill');
  const pause = h('button', { id: 'btn-pause', type: 'button', on: { click: () => act(() => api(`${base}/pause`, { method: 'POST' }), 'Paused.') } }, 'Pause');
  const resume = h('button', { id: 'btn-resume', type: 'button', on: { click: () => act(() => api(`${base}/resume`, { method: 'POST' }), 'Resumed.') } }, 'Resume');

  async function act(call, done) {
    for (const b of [kill, pause, resume]) b.disabled = true;
    fill(actionStatus);
    try {
      await call();
      fill(actionStatus, h('p', { class: 'ok' }, done));
    } catch (err) {
      fill(actionStatus, errorBox(err));
    }
    await loadDetails();
  }

  // A command box: output arrives as JSON strings and is shown with textContent only.
  const shell = h('input', { id: 'exec-shell', type: 'text', placeholder: 'shell command, e.g. ls -la /home/user', size: 60, 'aria-label': 'Command' });
  const execOut = h('pre', { id: 'exec-output', hidden: true });
  const execForm = h('form', { class: 'toolbar', on: { submit: async e => {
    e.preventDefault();
    if (!shell.value.trim()) return;
    execOut.hidden = false;
    fill(execOut, 'Running…');
    try {
      const r = await api(`${base}/exec`, { method: 'POST', body: { shell: shell.value, timeoutSeconds: 60 } });
      fill(execOut, r.stdout ? h('span', {}, r.stdout) : null, r.stderr ? h('span', { class: 'stderr' }, r.stderr) : null,
        h('span', { class: 'exit' }, `\n[exit ${r.exitCode}${r.timedOut ? ', timed out' : ''} in ${r.durationMs} ms]`));
    } catch (err) {
      fill(execOut, h('span', { class: 'stderr' }, err.message));
    }
    loadLogs();
  } } }, shell, h('button', { type: 'submit' }, 'Run'));

  fill(main,
    h('p', {}, h('a', { href: '#/sandboxes' }, '← Sandboxes')),
    header,
    h('div', { class: 'toolbar' }, pause, resume, kill),
    actionStatus,
    details,
    h('h2', {}, 'Run a command'), execForm, execOut,
    h('h2', {}, 'Metrics'), metricsNote,
    h('div', { class: 'grid' },
      h('div', { class: 'card' }, h('h3', {}, 'CPU %'), cpuChart),
      h('div', { class: 'card' }, h('h3', {}, 'Memory'), memChart),
      h('div', { class: 'card' }, h('h3', {}, 'Network (bytes)'), netChart),
      h('div', { class: 'card' }, h('h3', {}, 'Disk'), diskChart)),
    h('h2', {}, 'Logs'), logs,
    h('h2', {}, 'Files'), files,
    h('h2', {}, 'Egress log'), egress,
    h('h2', {}, 'Audit events'), auditBox);

  async function loadDetails() {
    try {
      const s = await api(base);
      if (stopped) return;
      fill(header, h('h1', {}, 'Sandbox ', h('span', { class: 'mono', id: 'sandbox-id' }, s.id), ' ', h('span', { id: 'sandbox-state' }, stateBadge(s.state))));
      pause.disabled = s.state !== 'running';
      resume.disabled = s.state !== 'paused';
      kill.disabled = s.state === 'stopped' || s.state === 'failed';
      const u = s.usage;
      const meta = Object.entries(s.metadata ?? {}).map(([k, v]) => `${k}=${v}`).join(', ');
      fill(details, h('div', { class: 'grid' },
        h('div', { class: 'card' }, h('h3', {}, 'Sandbox'), kv([
          ['tier', s.isolation], ['template', s.template], ['created', `${time(s.createdAt)} (${age(s.createdAt)} ago)`],
          ['expires', time(s.expiresAt)], ['ended', s.endedAt ? time(s.endedAt) : null], ['reason', s.stateReason], ['metadata', meta || null],
        ])),
        h('div', { class: 'card' }, h('h3', {}, 'Limits'), kv([
          ['cpus', s.resources?.cpus], ['memory', bytes((s.resources?.memoryMiB ?? 0) * 1048576)], ['disk', bytes((s.resources?.diskMiB ?? 0) * 1048576)],
          ['pids', s.resources?.pids], ['network', [s.network?.mode, ...(s.network?.allow ?? [])].filter(Boolean).join(' ')],
        ])),
        u ? h('div', { class: 'card' }, h('h3', {}, 'Usage now'), kv([
          ['cpu', `${num(u.cpuSeconds)} s`], ['memory', `${bytes(u.memoryBytes)} (peak ${bytes(u.memoryPeakBytes)})`],
          ['disk', `${bytes(u.diskUsedBytes)} of ${bytes(u.diskLimitBytes)}`], ['pids', u.pids], ['oom kills', u.oomKills],
        ])) : null));
    } catch (err) {
      if (!stopped) fill(header, h('h1', {}, 'Sandbox ', h('span', { class: 'mono' }, id)), errorBox(err));
    }
  }

  async function loadMetrics() {
    try {
      const since = new Date(Date.now() - 30 * 60_000).toISOString();
      const m = await optional(`${base}/metrics?since=${enc(since)}`);
      if (stopped) return;
      const samples = m?.samples ?? [];
      fill(metricsNote, m ? `${samples.length} samples, every ${m.intervalSeconds} s` : 'no data: this server has no metrics endpoint');
      const pts = f => samples.map(x => [Date.parse(x.time), f(x)]);
      lineChart(cpuChart, [{ label: 'cpu %', points: pts(x => x.cpuPercent) }], v => `${v.toFixed(0)}%`);
      lineChart(memChart, [{ label: 'memory', points: pts(x => x.memoryBytes) }], bytes);
      lineChart(netChart, [{ label: 'rx', points: pts(x => x.rxBytes) }, { label: 'tx', points: pts(x => x.txBytes) }], bytes);
      lineChart(diskChart, [{ label: 'disk', points: pts(x => x.diskBytes) }], bytes);
    } catch (err) {
      if (!stopped) fill(metricsNote, errorBox(err));
    }
  }

  // Logs are read page by page from the last sequence number seen; new entries are appended.
  let logAfter = 0;
  let logStarted = false;
  async function loadLogs() {
    try {
      for (let page = 0; page < 10 && !stopped; page++) {
        const r = await optional(`${base}/logs?after=${logAfter}&limit=500`);
        if (stopped) return;
        if (r === null) {
          fill(logs, 'no data: this server has no logs endpoint');
          return;
        }
        if (!logStarted) { logs.replaceChildren(); logStarted = true; }
        for (const e of r.entries) {
          const prefix = `${time(e.time)} [${e.pid}${e.command ? ' ' + e.command : ''}] `;
          const cls = e.stream === 'stderr' ? 'stderr' : e.stream === 'exit' ? 'exit' : null;
          logs.append(h('span', { class: cls }, prefix + (e.stream === 'exit' ? `exit ${e.data}` : e.data) + (String(e.data).endsWith('\n') ? '' : '\n')));
        }
        if (!logs.childNodes.length) logs.textContent = 'No output yet.';
        const next = r.next ?? (r.entries.length ? r.entries[r.entries.length - 1].seq : logAfter);
        if (!r.entries.length || next <= logAfter) return;
        logAfter = next;
      }
    } catch (err) {
      if (!stopped) fill(logs, err.message);
    }
  }

  // Files: a directory listing; directories open, files download (fetched with the key, saved from a blob).
  let cwd = '/home/user';
  const pathInput = h('input', { id: 'files-path', type: 'text', value: cwd, size: 40, 'aria-label': 'Directory' });
  const upload = h('input', { id: 'file-upload', type: 'file', multiple: true, 'aria-label': 'Upload files' });
  const filesStatus = h('div', { id: 'files-status' });
  const listing = h('div', { id: 'files-list' });
  upload.addEventListener('change', async () => {
    fill(filesStatus);
    for (const file of upload.files) {
      const target = `${cwd.replace(/\/$/, '')}/${file.name}`;
      try {
        await api(`${base}/files?path=${enc(target)}`, { method: 'PUT', body: file });
        filesStatus.append(h('p', { class: 'ok' }, `Uploaded ${target} (${bytes(file.size)})`));
      } catch (err) {
        filesStatus.append(errorBox(err));
      }
    }
    upload.value = '';
    listFiles();
  });
  fill(files,
    h('form', { class: 'toolbar', on: { submit: e => { e.preventDefault(); cwd = pathInput.value || '/'; listFiles(); } } },
      h('button', { type: 'button', on: { click: () => { cwd = cwd.replace(/\/[^/]*\/?$/, '') || '/'; listFiles(); } } }, 'Up'),
      pathInput, h('button', { type: 'submit' }, 'Open'), h('label', {}, 'Upload', upload)),
    filesStatus, listing);

  async function download(entry) {
    try {
      const response = await api(`${base}/files?path=${enc(entry.path)}`, { raw: true });
      const url = URL.createObjectURL(await response.blob());
      const a = h('a', { href: url, download: entry.name, hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    } catch (err) {
      fill(filesStatus, errorBox(err));
    }
  }

  async function listFiles() {
    pathInput.value = cwd;
    try {
      const r = await api(`${base}/files/list?path=${enc(cwd)}&depth=1`);
      if (stopped) return;
      const entries = [...r.entries].sort((a, b) => (a.type === 'dir') === (b.type === 'dir') ? a.name.localeCompare(b.name) : a.type === 'dir' ? -1 : 1);
      fill(listing, table([
        { title: 'Name', cls: 'wrap', cell: e => e.type === 'dir'
          ? h('a', { href: '#', class: 'file-dir', on: { click: ev => { ev.preventDefault(); cwd = e.path; listFiles(); } } }, e.name + '/')
          : h('span', { class: 'file-name' }, e.name + (e.symlinkTarget ? ` → ${e.symlinkTarget}` : '')) },
        { title: 'Type', cell: e => e.type },
        { title: 'Size', num: true, cell: e => e.type === 'dir' ? '' : bytes(e.size) },
        { title: 'Mode', cell: e => e.mode },
        { title: 'Owner', cell: e => e.owner ?? '' },
        { title: 'Modified', cell: e => time(e.mtime) },
        { title: '', cell: e => e.type === 'file' ? h('button', { type: 'button', class: 'file-download', dataset: { path: e.path }, on: { click: () => download(e) } }, 'Download') : '' },
      ], entries, 'Empty directory.'), r.truncated ? h('p', { class: 'muted' }, 'Listing truncated.') : null);
    } catch (err) {
      if (!stopped) fill(listing, errorBox(err));
    }
  }

  async function loadEgress() {
    try {
      const r = await api(`${base}/network/log?limit=200`);
      if (stopped) return;
      fill(egress, table([
        { title: 'Time', cell: e => time(e.time) },
        { title: 'Proto', cell: e => e.protocol },
        { title: 'Verdict', cell: e => h('span', { class: e.verdict === 'allowed' ? 'state state-running' : 'state state-failed' }, e.verdict) },
        { title: 'Destination', cls: 'wrap', cell: e => [e.name, e.address ? `${e.address}:${e.port}` : null].filter(Boolean).join(' → ') },
        { title: 'Reason', cell: e => e.reason ?? '' },
        { title: 'Out', num: true, cell: e => bytes(e.bytesOut) },
        { title: 'In', num: true, cell: e => bytes(e.bytesIn) },
      ], r.events, 'No connection attempts.'), r.dropped ? h('p', { class: 'muted' }, `${r.dropped} older events were dropped.`) : null);
    } catch (err) {
      if (!stopped) fill(egress, errorBox(err));
    }
  }

  async function loadAudit() {
    try {
      const r = await api(`/v1/audit?sandbox=${enc(id)}&limit=200`);
      if (stopped) return;
      fill(auditBox, auditTable(r.records.slice().reverse()));
    } catch (err) {
      if (!stopped) fill(auditBox, err instanceof ApiError && err.status === 403 ? h('p', { class: 'muted' }, err.message) : errorBox(err));
    }
  }

  every(loadDetails, REFRESH_MS);
  every(loadMetrics, REFRESH_MS);
  every(loadLogs, REFRESH_MS);
  every(loadEgress, REFRESH_MS * 2);
  every(loadAudit, REFRESH_MS * 2);
  listFiles();
  return () => { stopped = true; timers.forEach(clearInterval); };
}

function kv(pairs) {
  return h('dl', { class: 'kv' }, pairs.filter(([, v]) => v !== null && v !== undefined && v !== '').map(([k, v]) => [h('dt', {}, k), h('dd', {}, String(v))]));
}

/** The audit records table (shared with the audit page). */
export function auditTable(records) {
  return table([
    { title: 'Seq', num: true, cell: r => r.seq },
    { title: 'Time', cell: r => time(r.time) },
    { title: 'Kind', cell: r => r.kind },
    { title: 'Action', cls: 'wrap', cell: r => r.action },
    { title: 'Result', cell: r => r.result ?? '' },
    { title: 'Tenant', cell: r => r.tenantId ?? '' },
    { title: 'Key', cell: r => r.keyId ?? '' },
    { title: 'Sandbox', cell: r => r.sandboxId ? h('a', { href: `#/sandboxes/${enc(r.sandboxId)}`, class: 'mono' }, r.sandboxId) : '' },
    { title: 'Details', cls: 'wrap data mono', cell: r => r.data ?? '' },
  ], records, 'No audit records.');
}
