// Interactive terminals over process.Process: pty.create, input, resize, kill.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Sandbox } from 'e2b';
import { withSandbox, eventually } from './helpers.mjs';

test('pty.create runs an interactive shell: input, output, resize', async () => {
  await withSandbox(Sandbox, {}, async (sbx) => {
    const decoder = new TextDecoder();
    let screen = '';
    const terminal = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => { screen += decoder.decode(d, { stream: true }); }, timeoutMs: 60_000 });
    assert.ok(terminal.pid > 0);
    await sbx.pty.sendInput(terminal.pid, new TextEncoder().encode('echo "sum=$((40+2))"; tty\n'));
    await eventually(() => screen.includes('sum=42'), `the shell should answer: ${JSON.stringify(screen)}`);
    await eventually(() => /\/dev\/pts\/\d+/.test(screen), `the shell runs on a terminal: ${JSON.stringify(screen)}`);
    await sbx.pty.resize(terminal.pid, { cols: 132, rows: 40 });
    await sbx.pty.sendInput(terminal.pid, new TextEncoder().encode('stty size\n'));
    await eventually(() => screen.includes('40 132'), `stty should see the new size: ${JSON.stringify(screen)}`);
    assert.equal(await sbx.pty.kill(terminal.pid), true);
    await assert.rejects(() => terminal.wait());
  });
});

test('a terminal that exits ends its handle with the exit code', async () => {
  await withSandbox(Sandbox, {}, async (sbx) => {
    const terminal = await sbx.pty.create({ cols: 40, rows: 10, onData: () => {} });
    await sbx.pty.sendInput(terminal.pid, new TextEncoder().encode('exit 0\n'));
    const result = await terminal.wait();
    assert.equal(result.exitCode, 0);
  });
});
