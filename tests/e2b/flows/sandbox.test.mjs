// Sandbox lifecycle through E2B's control plane: create with metadata, envs and timeout; getInfo;
// list with a metadata query; setTimeout; isRunning; kill.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Sandbox, SandboxNotFoundError } from 'e2b';
import { withSandbox, short } from './helpers.mjs';

test('Sandbox.create with metadata, envs and timeout; getInfo reports them', async () => {
  const run = `run-${process.pid}-${Date.now()}`;
  await withSandbox(Sandbox, { metadata: { flow: 'sandbox', run }, envs: { GREETING: 'hello from moat' }, timeoutMs: 90_000 }, async (sbx) => {
    assert.match(sbx.sandboxId, /^sb[a-z0-9]{18}$/);
    const info = await sbx.getInfo();
    assert.equal(info.sandboxId, sbx.sandboxId);
    assert.equal(info.templateId, 'base');
    assert.equal(info.state, 'running');
    assert.deepEqual(info.metadata, { flow: 'sandbox', run });
    const left = info.endAt.getTime() - Date.now();
    assert.ok(left > 60_000 && left <= 91_000, `endAt should be ~90 s away, is ${left} ms`);
    const echo = await sbx.commands.run('echo "$GREETING"');
    assert.equal(echo.stdout, 'hello from moat\n');
    assert.equal(await sbx.isRunning(), true);
  });
});

test('Sandbox.list filters by a metadata query and pages', async () => {
  const run = `list-${process.pid}-${Date.now()}`;
  const a = await Sandbox.create({ metadata: { run, which: 'a' }, timeoutMs: 90_000 });
  const b = await Sandbox.create({ metadata: { run, which: 'b' }, timeoutMs: 90_000 });
  try {
    const found = [];
    const pages = Sandbox.list({ query: { metadata: { run } }, limit: 1 });
    while (pages.hasNext) found.push(...(await pages.nextItems()));
    assert.deepEqual(found.map((s) => s.sandboxId).sort(), [a.sandboxId, b.sandboxId].sort());
    const onlyB = await Sandbox.list({ query: { metadata: { run, which: 'b' } } }).nextItems();
    assert.deepEqual(onlyB.map((s) => s.sandboxId), [b.sandboxId]);
    assert.equal(onlyB[0].state, 'running');
    assert.deepEqual(onlyB[0].metadata, { run, which: 'b' });
  } finally {
    await a.kill();
    await b.kill();
  }
});

test('setTimeout moves the end; kill ends the sandbox and a second kill says it is gone', async () => {
  const sbx = await Sandbox.create({ timeoutMs: 60_000 });
  await sbx.setTimeout(600_000);
  const info = await sbx.getInfo();
  assert.ok(info.endAt.getTime() - Date.now() > 500_000, 'the new timeout should be ~10 min away');
  assert.equal(await sbx.kill(), true);
  assert.equal(await sbx.isRunning(), false);
  assert.equal(await Sandbox.kill(sbx.sandboxId), false);
  await assert.rejects(() => Sandbox.getInfo(sbx.sandboxId), SandboxNotFoundError);
});

test('a sandbox whose timeout passes is gone', async () => {
  const sbx = await Sandbox.create({ timeoutMs: 2_000 });
  await new Promise((r) => setTimeout(r, 3_500));
  assert.equal(await sbx.isRunning(), false);
});

// Moat has no block list (everything not allowed is denied), so a denyOut it cannot enforce is
// refused with a reason instead of being dropped; denying everything works.
test('network rules: denyOut of one destination is refused, deny-all is accepted', async () => {
  const run = `deny-${process.pid}-${Date.now()}`;
  await assert.rejects(() => Sandbox.create({ ...short, metadata: { run }, network: { denyOut: ['8.8.8.8/32'] } }), (e) => /denyOut/.test(e.message) && /allowOut/.test(e.message));
  const left = await Sandbox.list({ query: { metadata: { run } } }).nextItems();
  assert.deepEqual(left, [], 'the refused create left no sandbox');
  await withSandbox(Sandbox, { network: { denyOut: ['0.0.0.0/0'] } }, async (sbx) => {
    assert.equal((await sbx.commands.run('echo up')).stdout, 'up\n');
  });
});
