// @e2b/code-interpreter: runCode keeps state, reports errors with tracebacks, returns matplotlib
// PNGs, and manages contexts (Python, JavaScript, bash).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Sandbox } from '@e2b/code-interpreter';
import { withSandbox } from './helpers.mjs';

test('runCode keeps state between calls and returns the last expression', async () => {
  await withSandbox(Sandbox, {}, async (sbx) => {
    const first = await sbx.runCode('x = 41\nprint("set x")\nx + 1');
    assert.equal(first.text, '42');
    assert.deepEqual(first.logs.stdout, ['set x\n']);
    assert.equal(first.error, undefined);
    const second = await sbx.runCode('x * 2');
    assert.equal(second.text, '82');
    const streamed = [];
    const third = await sbx.runCode('import sys\nfor i in range(3):\n    print(i)\nsys.stderr.write("warn\\n")', { onStdout: (m) => streamed.push(m.line), onStderr: () => {} });
    assert.equal(streamed.join(''), '0\n1\n2\n');
    assert.equal(third.logs.stderr.join(''), 'warn\n');
    const env = await sbx.runCode('import os\nos.environ["ONLY_HERE"]', { envs: { ONLY_HERE: 'yes' } });
    assert.equal(env.text, 'yes');
    const gone = await sbx.runCode('import os\nos.environ.get("ONLY_HERE", "unset")');
    assert.equal(gone.text, 'unset');
  });
});

test('an exception is an error with name, value and traceback; the context survives it', async () => {
  await withSandbox(Sandbox, {}, async (sbx) => {
    const failed = await sbx.runCode('def inner():\n    return 1 / 0\ninner()');
    assert.equal(failed.error.name, 'ZeroDivisionError');
    assert.equal(failed.error.value, 'division by zero');
    assert.match(failed.error.traceback, /inner\(\)/);
    assert.match(failed.error.traceback, /return 1 \/ 0/);
    const after = await sbx.runCode('"still alive"');
    assert.equal(after.text, 'still alive');
  });
});

test('a matplotlib figure comes back as a PNG', async () => {
  await withSandbox(Sandbox, {}, async (sbx) => {
    const plot = await sbx.runCode([
      'import matplotlib.pyplot as plt',
      'import numpy as np',
      'xs = np.linspace(0, 6.28, 100)',
      'plt.plot(xs, np.sin(xs))',
      'plt.title("sine")',
      'plt.show()',
    ].join('\n'), { timeoutMs: 120_000 });
    assert.equal(plot.error, undefined, plot.error && plot.error.traceback);
    const png = plot.results.find((r) => r.png);
    assert.ok(png, `a result with a png: ${JSON.stringify(plot.results.map((r) => r.formats()))}`);
    assert.ok(Buffer.from(png.png, 'base64').subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])), 'it is a PNG');
    const frame = await sbx.runCode('import pandas as pd\npd.DataFrame({"a": [1, 2], "b": [3, 4]})');
    assert.match(frame.results[0].html, /<table/);
    assert.match(frame.text, /a\s+b/);
  });
});

test('contexts: create, run in, list, restart, remove; JavaScript and bash contexts', async () => {
  await withSandbox(Sandbox, {}, async (sbx) => {
    const ctx = await sbx.createCodeContext({ cwd: '/tmp' });
    assert.equal(ctx.language, 'python');
    assert.equal(ctx.cwd, '/tmp');
    await sbx.runCode('y = "in the context"', { context: ctx });
    assert.equal((await sbx.runCode('y', { context: ctx })).text, 'in the context');
    assert.equal((await sbx.runCode('import os\nos.getcwd()', { context: ctx })).text, '/tmp');
    const elsewhere = await sbx.runCode('y');
    assert.equal(elsewhere.error?.name, 'NameError', 'the default context does not share the variable');

    const listed = await sbx.listCodeContexts();
    assert.ok(listed.some((c) => c.id === ctx.id));

    await sbx.restartCodeContext(ctx);
    assert.equal((await sbx.runCode('y', { context: ctx })).error?.name, 'NameError', 'a restart clears the state');

    await sbx.removeCodeContext(ctx.id);
    assert.ok(!(await sbx.listCodeContexts()).some((c) => c.id === ctx.id));
    // (A short request timeout: the SDK leaves its request timer running when a call fails.)
    await assert.rejects(() => sbx.runCode('1', { context: ctx, requestTimeoutMs: 3_000 }));

    const js = await sbx.createCodeContext({ language: 'javascript' });
    await sbx.runCode('let n = 20', { context: js });
    assert.equal((await sbx.runCode('n * 2 + 2', { context: js })).text, '42');
    assert.equal((await sbx.runCode('[1, 2].map((v) => v * 3)', { language: 'js' })).text, '[ 3, 6 ]');

    const sh = await sbx.createCodeContext({ language: 'bash' });
    await sbx.runCode('cd /etc && WHO=moat', { context: sh });
    const out = await sbx.runCode('pwd; echo $WHO', { context: sh });
    assert.deepEqual(out.logs.stdout.join(''), '/etc\nmoat\n');
  });
});
