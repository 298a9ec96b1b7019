// getHost and a server inside the sandbox, reached through Moat's inbound port proxy; envd metrics.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Sandbox } from 'e2b';
import { withSandbox, eventually } from './helpers.mjs';

test('getHost then fetch a server started in the sandbox', async () => {
  await withSandbox(Sandbox, {}, async (sbx) => {
    await sbx.files.write('/home/user/www/index.html', 'served from the sandbox');
    await sbx.commands.run('cd /home/user/www && python3 -m http.server 8000', { background: true, timeoutMs: 0 });
    const host = sbx.getHost(8000);
    assert.match(host, new RegExp(`^8000-${sbx.sandboxId}\\.`));
    // With sandboxUrl the SDK reaches every port through the one URL, naming the sandbox and port in headers.
    const fetchPort = (token) => fetch(`${process.env.E2B_SANDBOX_URL}/`, { headers: { 'E2b-Sandbox-Id': sbx.sandboxId, 'E2b-Sandbox-Port': '8000', ...(token === undefined ? {} : { 'E2B-Traffic-Access-Token': token }) } });
    const page = await eventually(async () => { const r = await fetchPort(sbx.trafficAccessToken); return r.ok ? r.text() : null; }, 'the server in the sandbox answers', 15_000);
    assert.equal(page, 'served from the sandbox');
    // Without the token, or with a wrong one: refused before anything reaches the sandbox.
    assert.equal((await fetchPort(undefined)).status, 401);
    assert.equal((await fetchPort('ea_wrong')).status, 401);
  });
});

test('envd metrics through the SDK', async () => {
  await withSandbox(Sandbox, {}, async (sbx) => {
    const res = await sbx.envdApi.api.GET('/metrics');
    assert.equal(res.response.status, 200);
    const m = res.data;
    assert.ok(m.cpu_count >= 1, JSON.stringify(m));
    assert.ok(m.mem_total > 0 && m.mem_used > 0 && m.mem_used <= m.mem_total, JSON.stringify(m));
    assert.ok(m.disk_total > 0, JSON.stringify(m));
    assert.ok(Math.abs(m.ts - Date.now() / 1000) < 120, JSON.stringify(m));
    const metrics = await sbx.getMetrics();
    assert.ok(metrics.length >= 1 && metrics[0].memTotal === m.mem_total, JSON.stringify(metrics));
  });
});
