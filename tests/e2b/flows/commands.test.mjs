// Commands over envd's process.Process: streaming callbacks, exit codes, background commands,
// connect by pid, stdin, kill, list.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Sandbox, CommandExitError } from 'e2b';
import { withSandbox, eventually } from './helpers.mjs';

test('commands.run streams stdout and stderr to callbacks and returns the result', async () => {
  await withSandbox(Sandbox, {}, async (sbx) => {
    const out = [];
    const err = [];
    const result = await sbx.commands.run('for i in 1 2 3; do echo out$i; echo err$i >&2; sleep 0.05; done', {
      onStdout: (d) => out.push(d),
      onStderr: (d) => err.push(d),
    });
    assert.equal(result.exitCode, 0);
    assert.equal(result.stdout, 'out1\nout2\nout3\n');
    assert.equal(result.stderr, 'err1\nerr2\nerr3\n');
    assert.ok(out.length >= 1 && out.join('') === result.stdout, 'stdout arrived through onStdout');
    assert.ok(err.join('') === result.stderr, 'stderr arrived through onStderr');
    const who = await sbx.commands.run('whoami; pwd');
    assert.equal(who.stdout, 'user\n/home/user\n');
    const root = await sbx.commands.run('whoami', { user: 'root' });
    assert.equal(root.stdout, 'root\n');
    const inDir = await sbx.commands.run('pwd; echo $FOO', { cwd: '/tmp', envs: { FOO: 'bar' } });
    assert.equal(inDir.stdout, '/tmp\nbar\n');
  });
});

test('a non-zero exit raises CommandExitError with the exit code and output', async () => {
  await withSandbox(Sandbox, {}, async (sbx) => {
    await assert.rejects(() => sbx.commands.run('echo partial; echo oops >&2; exit 3'), (e) => {
      assert.ok(e instanceof CommandExitError, `expected CommandExitError, got ${e?.name}: ${e?.message}`);
      assert.equal(e.exitCode, 3);
      assert.equal(e.stdout, 'partial\n');
      assert.equal(e.stderr, 'oops\n');
      return true;
    });
    await assert.rejects(() => sbx.commands.run('no-such-program-here'), (e) => e instanceof CommandExitError && e.exitCode === 127);
  });
});

test('background commands: wait, connect by pid, list, sendStdin, kill', async () => {
  await withSandbox(Sandbox, {}, async (sbx) => {
    const bg = await sbx.commands.run('sleep 0.3; echo done-in-background', { background: true });
    assert.ok(bg.pid > 0);
    const finished = await bg.wait();
    assert.equal(finished.stdout, 'done-in-background\n');

    const ticker = await sbx.commands.run('for i in $(seq 1 100); do echo tick$i; sleep 0.1; done', { background: true, timeoutMs: 0 });
    const listed = await sbx.commands.list();
    const mine = listed.find((p) => p.pid === ticker.pid);
    assert.ok(mine, `commands.list should show pid ${ticker.pid}: ${JSON.stringify(listed)}`);
    assert.equal(mine.cmd, '/bin/bash');
    const seen = [];
    const again = await sbx.commands.connect(ticker.pid, { onStdout: (d) => seen.push(d) });
    await eventually(() => seen.join('').includes('tick'), 'connect should deliver new output');
    assert.equal(await sbx.commands.kill(ticker.pid), true);
    await assert.rejects(() => again.wait(), (e) => e instanceof CommandExitError && e.exitCode === -1);
    await assert.rejects(() => ticker.wait(), CommandExitError);
    assert.equal(await sbx.commands.kill(ticker.pid), false, 'killing an ended process says it was not found');

    const cat = await sbx.commands.run('cat', { background: true, stdin: true });
    await sbx.commands.sendStdin(cat.pid, 'line one\n');
    await cat.sendStdin('line two\n');
    await cat.closeStdin();
    const echoed = await cat.wait();
    assert.equal(echoed.stdout, 'line one\nline two\n');
  });
});

test('disconnecting leaves the command running; it can be connected to again', async () => {
  await withSandbox(Sandbox, {}, async (sbx) => {
    const handle = await sbx.commands.run('sleep 1; echo still-here', { background: true });
    await handle.disconnect();
    const back = await sbx.commands.connect(handle.pid);
    const result = await back.wait();
    assert.equal(result.stdout, 'still-here\n');
  });
});

test('a command past its timeoutMs is killed', async () => {
  await withSandbox(Sandbox, {}, async (sbx) => {
    const started = Date.now();
    await assert.rejects(() => sbx.commands.run('sleep 30', { timeoutMs: 1_000 }));
    assert.ok(Date.now() - started < 10_000);
    const left = await sbx.commands.run('pgrep -x sleep || true');
    assert.equal(left.stdout, '');
  });
});
