// getHost and a server inside the sandbox, reached through Moat's inbound port proxy.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Sandbox } from 'e2b';
import { withSandbox, eventually } from './helpers.mjs';

test('getHost then fetch a server started in the sandbox', async (t) => {
  await withSandbox(Sandbox, {}, async (sbx) => {
    await sbx.files.write('/home/user/www/index.html', 'served from the sandbox');
    await sbx.commands.run('cd /home/user/www && python3 -m http.server 8000', { background: true, timeoutMs: 0 });
    const host = sbx.getHost(8000);
    assert.match(host, new RegExp(`^8000-${sbx.sandboxId}\\.`));
    // With sandboxUrl the SDK reaches every port through the one URL, naming the sandbox and port in headers.
    const fetchPort = () => fetch(`${process.env.E2B_SANDBOX_URL}/`, { headers: { 'E2b-Sandbox-Id': sbx.sandboxId, 'E2b-Sandbox-Port': '8000', 'E2B-Traffic-Access-Token': sbx.trafficAccessToken ?? '' } });
    const first = await fetchPort();
    if (first.status === 502 && /no inbound port proxy/.test(await first.text())) {
      t.skip('this server has no inbound port proxy yet');
      return;
    }
    const page = await eventually(async () => { const r = await fetchPort(); return r.ok ? r.text() : null; }, 'the server in the sandbox answers', 15_000);
    assert.equal(page, 'served from the sandbox');
  });
});
