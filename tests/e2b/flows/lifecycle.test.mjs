// Pause and connect (resume): files and running processes survive; a paused sandbox lists as paused.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Sandbox } from 'e2b';
import { withSandbox } from './helpers.mjs';

test('pause, then connect resumes the sandbox with its files and processes', async () => {
  await withSandbox(Sandbox, {}, async (sbx) => {
    await sbx.files.write('/home/user/state.txt', 'kept across pause');
    const counter = await sbx.commands.run('i=0; while true; do i=$((i+1)); echo $i > /tmp/counter; sleep 0.1; done', { background: true, timeoutMs: 0 });
    assert.equal(await sbx.pause(), true);
    assert.equal(await sbx.pause(), false, 'pausing a paused sandbox reports it was already paused');
    const listed = await Sandbox.list({ query: { state: ['paused'] } }).nextItems();
    assert.ok(listed.some((s) => s.sandboxId === sbx.sandboxId), 'the paused sandbox lists as paused');
    assert.equal((await sbx.getInfo()).state, 'paused');
    assert.equal(await sbx.isRunning(), false);

    const resumed = await Sandbox.connect(sbx.sandboxId, { timeoutMs: 120_000 });
    assert.equal((await resumed.getInfo()).state, 'running');
    assert.equal(await resumed.files.read('/home/user/state.txt'), 'kept across pause');
    const before = Number((await resumed.commands.run('cat /tmp/counter')).stdout);
    await new Promise((r) => setTimeout(r, 400));
    const after = Number((await resumed.commands.run('cat /tmp/counter')).stdout);
    assert.ok(after > before, `the background loop keeps counting after resume (${before} -> ${after})`);
    // The first handle keeps working: connect returns the same access token.
    assert.equal((await sbx.commands.run('echo same')).stdout, 'same\n');
    await resumed.commands.kill(counter.pid);
    // connect on a running sandbox only extends its life.
    await Sandbox.connect(sbx.sandboxId, { timeoutMs: 300_000 });
    assert.ok((await sbx.getInfo()).endAt.getTime() - Date.now() > 250_000);
  });
});
